"""The `qwen3-embed` command: `similarity` prints a score matrix, `encode` writes a file of vectors, `rerank` orders
documents for a query."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .embedder import Embedder
from .reranker import DEFAULT_INSTRUCTION, Reranker

CARD_TASK = "Given a web search query, retrieve relevant passages that answer the query"
CARD_QUERIES = ["What is the capital of China?", "Explain gravity"]
CARD_DOCUMENTS = [
    "The capital of China is Beijing.",
    "Gravity is a force that attracts two bodies towards each other. It gives weight to physical objects and is "
    "responsible for the movement of planets around the sun.",
]


def read_texts(path: Path) -> list[str]:
    """One text per line, or JSON lines with a "text" field when the file ends in .jsonl."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    if path.suffix != ".jsonl":
        return lines
    texts = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{number}: not valid JSON ({e})") from None
        if not isinstance(record, dict) or "text" not in record:
            raise ValueError(f'{path}:{number}: expected an object with a "text" field')
        if not isinstance(record["text"], str):
            raise ValueError(f'{path}:{number}: "text" is a {type(record["text"]).__name__}, not a string')
        texts.append(record["text"])
    return texts


def load(args: argparse.Namespace) -> Embedder:
    return Embedder.from_pretrained(args.model, device=args.device, dtype=args.dtype)


def similarity(args: argparse.Namespace) -> None:
    queries = args.query or CARD_QUERIES
    documents = args.document or CARD_DOCUMENTS
    embedder = load(args)
    q = embedder.encode(queries, instruction=args.instruction or None, dim=args.dim)
    d = embedder.encode(documents, dim=args.dim)
    scores = embedder.similarity(q, d)
    print("documents:")
    for j, doc in enumerate(documents):
        print(f"  d{j}: {doc}")
    print("queries:")
    for i, query in enumerate(queries):
        print(f"  q{i}: {query}")
    print("\n     " + "".join(f"{f'd{j}':>9}" for j in range(len(documents))))
    for i, row in enumerate(scores.tolist()):
        print(f"{f'q{i}':<5}" + "".join(f"{s:9.4f}" for s in row))


def encode(args: argparse.Namespace) -> None:
    texts = read_texts(args.input)
    embedder = load(args)
    vectors = embedder.encode(
        texts,
        instruction=args.instruction,
        dim=args.dim,
        max_length=args.max_length,
        truncate=not args.no_truncate,
        batch_tokens=args.batch_tokens,
        show_progress=True,
    )
    np.save(args.output, vectors.numpy())
    print(f"wrote {len(texts)} vectors of {vectors.shape[-1]} dimensions to {args.output}", file=sys.stderr)


def rerank(args: argparse.Namespace) -> None:
    if bool(args.document) == bool(args.input):
        raise ValueError("give the documents with --document (repeated) or --input FILE, not both")
    documents = args.document or read_texts(args.input)
    reranker = Reranker.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    ranked = reranker.rank(
        args.query, documents, top_k=args.top_k, instruction=args.instruction, max_length=args.max_length,
        show_progress=args.input is not None,
    )  # fmt: skip
    for index, score in ranked:
        print(f"{score:.4f}  d{index}  {documents[index]}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qwen3-embed", description=__doc__)
    commands = p.add_subparsers(dest="command", required=True)

    device = argparse.ArgumentParser(add_help=False)
    device.add_argument("--device", help="cuda, cpu, ... (default: cuda when available)")
    device.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="default: bf16 on cuda, else fp32")
    common = argparse.ArgumentParser(add_help=False, parents=[device])
    common.add_argument("--model", default="Qwen/Qwen3-Embedding-0.6B", help="hub id or local folder")
    common.add_argument("--dim", type=int, help="output dimensions (Matryoshka), default: the hidden size")

    s = commands.add_parser("similarity", parents=[common], help="print query x document cosine scores")
    s.add_argument("--query", action="append", help="a query (repeat for several); default: the model card's")
    s.add_argument("--document", action="append", help="a document (repeat for several); default: the card's")
    s.add_argument("--instruction", default=CARD_TASK, help="task for the queries ('' for none); default: the card's")
    s.set_defaults(run=similarity)

    e = commands.add_parser("encode", parents=[common], help="embed a file of texts into a .npy file")
    e.add_argument("--input", type=Path, required=True, help="text file (one text per line) or .jsonl with 'text'")
    e.add_argument("--output", type=Path, required=True, help=".npy file of float32 vectors, one row per text")
    e.add_argument("--instruction", help="task instruction applied to every text (for queries)")
    e.add_argument("--max-length", type=int, help="tokens per text (default 8192)")
    e.add_argument("--no-truncate", action="store_true", help="fail on a text over --max-length instead of cutting it")
    e.add_argument("--batch-tokens", type=int, help="tokens per forward pass")
    e.set_defaults(run=encode)

    r = commands.add_parser("rerank", parents=[device], help="score documents for a query, best first")
    r.add_argument("--model", default="Qwen/Qwen3-Reranker-0.6B", help="hub id or local folder")
    r.add_argument("--query", required=True)
    r.add_argument("--document", action="append", help="a document (repeat for several)")
    r.add_argument("--input", type=Path, help="documents from a file: one per line, or .jsonl with 'text'")
    r.add_argument("--instruction", default=DEFAULT_INSTRUCTION, help="the task; default: the card's")
    r.add_argument("--top-k", type=int, help="print only the best k")
    r.add_argument("--max-length", type=int, help="tokens per query-document pair, prompt included (default 8192)")
    r.set_defaults(run=rerank)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        args.run(args)
    except (OSError, ValueError, TypeError, FloatingPointError) as e:
        sys.exit(f"qwen3-embed: error: {e}")


if __name__ == "__main__":
    main()
