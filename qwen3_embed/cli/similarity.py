"""`qwen3-embed similarity`: the cosine scores of queries against documents, by default the model card's."""

from __future__ import annotations

import argparse
import json

from ..embedder import Embedder
from ..pipeline import DEFAULT_INSTRUCTION
from .common import (
    DEVICE,
    DIM,
    EMBEDDING_MODEL,
    TOKENS,
    add_command,
    add_model,
    check_text_flags,
    checked_options,
    loading,
    token_options,
)

CARD_QUERIES = ["What is the capital of China?", "Explain gravity"]
CARD_DOCUMENTS = [
    "The capital of China is Beijing.",
    "Gravity is a force that attracts two bodies towards each other. It gives weight to physical objects and is "
    "responsible for the movement of planets around the sun.",
]


def add_parser(commands) -> None:
    p = add_command(commands, "similarity", "print query x document cosine scores", (DEVICE, DIM, TOKENS))
    add_model(p, EMBEDDING_MODEL)
    p.add_argument("--query", action="append", help="a query (repeat for several); default: the model card's")
    p.add_argument("--document", action="append", help="a document (repeat for several); default: the card's")
    p.add_argument("--instruction", default=DEFAULT_INSTRUCTION, help="task for the queries ('' for none)")
    p.add_argument("--json", action="store_true", help="print {queries, documents, scores} as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    check_text_flags(args, "query", "document", "instruction")
    queries = args.query or CARD_QUERIES
    documents = args.document or CARD_DOCUMENTS
    options = checked_options(args)
    embedder = Embedder.from_pretrained(args.model, **loading(args))
    q = embedder.encode(queries, instruction=args.instruction or None, dim=options.dim, **token_options(options))
    d = embedder.encode(documents, dim=options.dim, **token_options(options))
    scores = embedder.similarity(q, d).tolist()
    if args.json:
        print(json.dumps({"queries": queries, "documents": documents, "scores": scores}, ensure_ascii=False))
        return
    print("documents:")
    for j, doc in enumerate(documents):
        print(f"  d{j}: {doc}")
    print("queries:")
    for i, query in enumerate(queries):
        print(f"  q{i}: {query}")
    print("\n     " + "".join(f"{f'd{j}':>9}" for j in range(len(documents))))
    for i, row in enumerate(scores):
        print(f"{f'q{i}':<5}" + "".join(f"{s:9.4f}" for s in row))
