"""`qwen3-embed verify`: check a folder written by encode against its manifest, without a model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm.auto import tqdm

from .. import corpus
from .common import DEBUG, add_command


def add_parser(commands) -> None:
    p = add_command(commands, "verify", "check a folder written by encode against its manifest", (DEBUG,))
    p.add_argument("folder", type=Path, help="the output folder of `qwen3-embed encode`")
    p.add_argument("--quick", action="store_true", help="check sizes, counts, dtypes and shapes, not checksums")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    manifest = corpus.read_manifest(args.folder)
    with tqdm(total=manifest["rows"], unit="row", desc="verifying", dynamic_ncols=True) as bar:
        problems = corpus.verify_corpus(args.folder, not args.quick, bar.update)
    what = "sizes, counts, dtypes and shapes" + ("" if args.quick else ", sha256 checksums")
    if problems:
        listed = "\n  ".join(problems)
        sys.exit(
            f"qwen3-embed: {args.folder}: {len(problems)} problem(s):\n  {listed}\nrerun the encode command that "
            "wrote it to embed the damaged shards again"
        )
    shards, rows, dim = len(manifest["shards"]), manifest["rows"], manifest["dim"]
    print(
        f"{args.folder}: {shards} shard(s), {rows} vectors of {dim} dimensions: sound ({what} checked)", file=sys.stderr
    )
