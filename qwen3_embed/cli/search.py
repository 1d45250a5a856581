"""`qwen3-embed search`: the documents of an encoded corpus nearest to queries, optionally reranked. The index is
opened (and verified) and every option checked before any model loads (by the index and the Retriever, which check
the same for a Python caller); then one Retriever call."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..checks import check_int
from ..search import Index, Retriever
from ..store.quantize import PRECISIONS
from .common import DEVICE, add_command, add_model, check_text_flags, loading


def add_parser(commands) -> None:
    help = "find the documents of an encoded corpus nearest to queries, optionally reranked"
    p = add_command(commands, "search", help, (DEVICE,))
    p.add_argument("--index", type=Path, required=True, help="a folder written by `qwen3-embed encode --output DIR`")
    p.add_argument("--query", action="append", required=True, help="a query (repeat for several)")
    add_model(p, None, "embedding model (default: the one that embedded the corpus, from its manifest)")
    p.add_argument("--instruction", help="task for the queries (default: the checkpoint's query prompt, the card's)")
    p.add_argument("--top-k", type=int, help="documents to print per query (default: 10, or all of a smaller index)")
    p.add_argument(
        "--reranker",
        help="rerank the candidates with this reranker (hub id or local folder); needs the texts kept by encode "
        "--store-text",
    )
    p.add_argument("--candidates", type=int, default=100, help="nearest documents the reranker scores")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="search at a coarser precision than the stored vectors' (a quantized copy in memory), then rescore "
        "(default: the stored precision)",
    )
    rescore = "a quantized search rescores this many times --top-k candidates (default: 4)"
    p.add_argument("--rescore-multiplier", type=int, help=rescore)
    p.add_argument("--no-verify", action="store_true", help="check the shards by size and count, not by checksum")
    p.add_argument("--json", action="store_true", help="print one JSON object per result: query, rank, id, score, text")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    check_text_flags(args, "query", "instruction")
    index = Index.open(args.index, precision=args.precision, verify=not args.no_verify, device=args.device)
    top_k, _ = index.check_search(args.top_k, args.rescore_multiplier)  # as the search checks them, before any model
    if args.reranker is not None:
        check_int("candidates", args.candidates, top_k, None)
    retriever = Retriever.from_pretrained(index, args.model, args.reranker, **loading(args))
    searched = dict(
        candidates=args.candidates, instruction=args.instruction, rescore_multiplier=args.rescore_multiplier
    )
    print_hits(args, retriever.search(args.query, top_k, **searched))


def print_hits(args: argparse.Namespace, found: list) -> None:
    for query, hits in zip(args.query, found):
        if not args.json and len(args.query) > 1:
            print(f"query: {query}")
        for rank, hit in enumerate(hits, start=1):
            if args.json:
                line = {"query": query, "rank": rank, "id": hit.id, "score": hit.score, "text": hit.text}
                print(json.dumps(line, ensure_ascii=False))
            else:
                print(f"{rank:>3}  {hit.score:.4f}  {hit.id}" + (f"  {hit.text}" if hit.text is not None else ""))
