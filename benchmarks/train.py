"""Training throughput of qwen3-embed against sentence-transformers on the same batches, in one run.

Each system runs the same optimizer steps on the same (query, positive) batches of a random-weight checkpoint of a
real shape (default: the 0.6B at 2 layers) with the real Qwen3 tokenizer: ours packs each batch end to end
(`qwen3_embed.train.step.ContrastiveStep`), sentence-transformers pads it (its tokenizer, then
MultipleNegativesRankingLoss: its trainer's work per step); both then take torch's AdamW step. Each system runs in
a process of its own, so that its peak memory (VmHWM) is its own. Reported: tokens per second per optimizer step
(real tokens, padding not counted; the median of the timed steps after one warm-up step) and peak memory.

    python benchmarks/train.py                          # float32 (the README's figures)
    python benchmarks/train.py --dtype bfloat16         # autocast; slow on CPUs without native bfloat16
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from common import (
    ROOT,
    SHARED_TOKENIZER,
    log_uniform_lengths,
    machine,
    markdown_table,
    texts_of_token_lengths,
    write_checkpoint,
    write_results,
)
from qwen3_embed import Qwen3Config

CARD_QUERY_PROMPT = "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"
SYSTEMS = ("qwen3-embed", "sentence-transformers")


def batches_of(args) -> list[list[tuple[str, str]]]:
    """`steps` batches of `pairs` (query, positive) pairs: queries of 8-64 tokens, documents of 16-`max_tokens`."""
    n = args.steps * args.pairs
    queries = texts_of_token_lengths(args.tokenizer, log_uniform_lengths(n, 8, 64, seed=1), seed=1)
    documents = texts_of_token_lengths(args.tokenizer, log_uniform_lengths(n, 16, args.max_tokens, seed=2), seed=2)
    pairs = list(zip(queries, documents))
    return [pairs[i : i + args.pairs] for i in range(0, n, args.pairs)]


def ours(folder: Path, batches, autocast: bool):
    """A step function per batch, and each batch's real tokens."""
    from qwen3_embed.train.data import Example
    from qwen3_embed.train.model import load_embedder
    from qwen3_embed.train.step import ContrastiveStep

    _, embedder = load_embedder(folder, device="cpu")
    step = ContrastiveStep(embedder, autocast=autocast, max_length=8192)
    optimizer = torch.optim.AdamW(embedder.model.parameters(), lr=1e-5)
    tokenized = [step.tokenize([Example(q, d) for q, d in batch]) for batch in batches]

    def run(i: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        step.backward(tokenized[i])
        optimizer.step()

    return run, [sum(e.tokens for e in batch) for batch in tokenized]


def sentence_transformers(folder: Path, batches, autocast: bool):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    model = SentenceTransformer(str(folder), device="cpu", model_kwargs={"dtype": torch.float32})
    model.train()
    loss_fn = MultipleNegativesRankingLoss(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    columns = [([CARD_QUERY_PROMPT + q for q, _ in batch], [d for _, d in batch]) for batch in batches]

    def run(i: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        features = [model.tokenize(texts) for texts in columns[i]]  # padded to the longest of each column
        with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            loss = loss_fn(features, None)
        loss.backward()
        optimizer.step()

    tokens = [sum(int(model.tokenize(texts)["attention_mask"].sum()) for texts in column) for column in columns]
    return run, tokens


def peak_rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def child(args) -> None:
    """One system's run, printed as JSON on stdout's last line."""
    batches = batches_of(args)
    build = ours if args.system == "qwen3-embed" else sentence_transformers
    run, tokens = build(args.folder, batches, args.dtype == "bfloat16")
    seconds = []
    for i in range(len(batches)):
        start = time.perf_counter()
        run(i)
        seconds.append(time.perf_counter() - start)
    rates = [t / s for t, s in zip(tokens[1:], seconds[1:])]  # the first step warms up
    print(json.dumps({"tokens_per_s": statistics.median(rates), "tokens": tokens, "seconds": seconds,
                      "peak_rss": peak_rss()}))  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=2, help="depth of the 0.6B shape")
    p.add_argument("--steps", type=int, default=6, help="optimizer steps per system (the first warms up)")
    p.add_argument("--pairs", type=int, default=16, help="(query, positive) pairs per batch")
    p.add_argument("--max-tokens", type=int, default=512, help="longest document")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="bfloat16: autocast")
    p.add_argument("--tokenizer", type=Path, default=SHARED_TOKENIZER, help="folder with the real Qwen3 tokenizer")
    p.add_argument("--checkpoints", type=Path, default=ROOT / "local", help="where to write the checkpoint")
    p.add_argument("--name", default="train-cpu", help="file name under benchmarks/results/")
    p.add_argument("--system", choices=SYSTEMS, help=argparse.SUPPRESS)  # a child's one system
    p.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if not (args.tokenizer / "tokenizer.json").exists():
        raise SystemExit(f"no tokenizer.json in {args.tokenizer}: pass --tokenizer with the real Qwen3 tokenizer")
    if args.system:
        return child(args)
    config = replace(Qwen3Config.preset("0.6B"), num_hidden_layers=args.layers)
    folder = write_checkpoint(args.checkpoints / f"bench-embed-0.6B-{args.layers}", config, args.tokenizer)
    results = {"machine": machine(), "layers": args.layers, "dtype": args.dtype, "pairs": args.pairs,
               "steps": args.steps, "max_tokens": args.max_tokens, "runs": {}}  # fmt: skip
    for system in SYSTEMS:
        print(f"{system} ...", flush=True)
        command = [sys.executable, __file__, *sys.argv[1:], "--system", system, "--folder", str(folder)]
        out = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
        results["runs"][system] = json.loads(out.strip().splitlines()[-1])
    ours_rate = results["runs"]["qwen3-embed"]["tokens_per_s"]
    rows = [f"| {system} | {r['tokens_per_s']:,.0f} | {ours_rate / r['tokens_per_s']:.2f}x | "
            f"{r['peak_rss'] / 2**30:.2f} GiB |" for system, r in results["runs"].items()]  # fmt: skip
    title = (f"Training, 0.6B shape at {args.layers} layers, {args.dtype}, {args.pairs} pairs per step "
             f"({results['machine']['cpu']}, {results['machine']['torch_threads']} threads)")  # fmt: skip
    table = markdown_table(title, ["system", "tokens/s per step", "ours vs", "peak memory"], rows)
    print(table)
    write_results(f"{args.name}-{args.dtype}", results, table)


if __name__ == "__main__":
    main()
