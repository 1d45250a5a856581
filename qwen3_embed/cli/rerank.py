"""`qwen3-embed rerank`: documents given or read from a file, scored for a query and printed best first."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .. import corpus
from ..checks import check_int
from ..corpus.inputs import BadRecord
from ..pipeline import DEFAULT_INSTRUCTION
from ..reranker import Reranker
from .common import (
    DEVICE,
    RERANKER_MODEL,
    TOKENS,
    add_command,
    add_fields,
    add_format,
    add_model,
    check_text_flags,
    checked_options,
    loading,
    token_options,
)


def add_parser(commands) -> None:
    p = add_command(commands, "rerank", "score documents for a query, best first", (DEVICE, TOKENS))
    add_model(p, RERANKER_MODEL)
    p.add_argument("--query", required=True, help="the query to rank the documents for")
    p.add_argument("--document", action="append", help="a document (repeat for several)")
    p.add_argument("--input", type=Path, help="documents from a file: text lines, JSON lines or Parquet")
    add_format(p)
    add_fields(p, "field of each document's id, printed with it (default: its position)")
    p.add_argument("--instruction", default=DEFAULT_INSTRUCTION, help="the task")
    p.add_argument("--top-k", type=int, help="print only the best k")
    p.add_argument("--raw", action="store_true", help="print the logit difference l_yes - l_no, not the probability")
    p.add_argument(
        "--json", action="store_true", help="print one JSON object per document: rank, index, id, score, document"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    if not args.document and args.input is None:
        raise ValueError("no documents: give them with --document TEXT (repeat it) or --input FILE")
    if args.document and args.input is not None:
        raise ValueError("give the documents with --document or with --input FILE, not both")
    if args.input is None and (args.text_field or args.id_field or args.format):
        raise ValueError(
            "--format, --text-field and --id-field say how to read an --input file; --document takes plain text"
        )
    check_text_flags(args, "query", "document", "instruction")
    if args.top_k is not None:
        check_int("--top-k", args.top_k, 1)
    options = checked_options(args)
    if args.input is None:
        ids, documents = list(range(len(args.document))), args.document
    else:
        try:
            ids, documents = corpus.read_documents(args.input, args.text_field, args.id_field, args.format)
        except BadRecord as e:
            raise BadRecord(
                f"{e}; fix or remove that record of --input {args.input} (rerank reads every record; --text-field "
                "and --id-field name the fields it reads), or give the documents with --document"
            ) from None
    reranker = Reranker.from_pretrained(args.model, **loading(args))
    reranker.tokenize_query(args.query, [], args.instruction, args.max_length, name="--max-length")  # leaves room?
    ranked = reranker.rank(
        args.query,
        documents,
        top_k=args.top_k,
        instruction=args.instruction,
        raw=args.raw,
        show_progress=args.input is not None,
        **token_options(options),
    )
    for rank, hit in enumerate(ranked, start=1):
        index, score = hit["corpus_id"], hit["score"]
        if args.json:
            line = {"rank": rank, "index": index, "id": ids[index], "score": score, "document": documents[index]}
            print(json.dumps(line, ensure_ascii=False))
        else:
            print(f"{score:.4f}  {ids[index] if args.id_field else f'd{index}'}  {documents[index]}")
