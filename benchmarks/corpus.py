"""The cost of streaming a corpus into shards (`qwen3-embed encode --output DIR`) against Embedder.encode on the
same texts in memory, and the peak memory of each, on a corpus ten times the chunk size.

Each way runs in a fresh process on the same random-weight checkpoint (the 0.6B layer shapes, at reduced depth by
default, real tokenizer); seconds exclude loading the model; peak memory is the process's VmHWM.

    python benchmarks/corpus.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

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

CHILD = r"""
import json, sys, time
from pathlib import Path
from qwen3_embed import Embedder
from qwen3_embed.corpus import encode_corpus

way, folder, corpus, out, chunk = sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), int(sys.argv[5])
embedder = Embedder.from_pretrained(folder)
embedder.encode(["warm up"])
start = time.perf_counter()
if way == "in memory":
    texts = [json.loads(line)["text"] for line in corpus.open(encoding="utf-8")]
    embedder.encode(texts)
else:
    encode_corpus(embedder, corpus, out, model=folder, chunk_size=chunk)
seconds = time.perf_counter() - start
with open("/proc/self/status") as f:
    peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
print(json.dumps({"seconds": seconds, "peak": peak}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=4, help="depth of the 0.6B-shaped checkpoint")
    p.add_argument("--chunk-size", type=int, default=200)
    p.add_argument("--tokenizer", type=Path, default=SHARED_TOKENIZER)
    args = p.parse_args()
    config = replace(Qwen3Config.preset("0.6B"), num_hidden_layers=args.layers)
    folder = write_checkpoint(ROOT / "local" / f"bench-embed-0.6B-{args.layers}", config, args.tokenizer)
    n = 10 * args.chunk_size
    texts = texts_of_token_lengths(args.tokenizer, log_uniform_lengths(n, 8, 256, seed=5))
    work = ROOT / "local" / "bench-corpus"
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")

    results, rows = {"machine": machine(), "texts": n, "chunk_size": args.chunk_size, "runs": []}, []
    for way in ("in memory", "streamed into shards"):
        out = work / "out"
        subprocess.run(["rm", "-rf", str(out)], check=True)
        done = subprocess.run([sys.executable, "-c", CHILD, way, str(folder), str(corpus), str(out),
                               str(args.chunk_size)], capture_output=True, text=True)  # fmt: skip
        if done.returncode:
            raise RuntimeError(done.stderr)
        run = {"way": way, **json.loads(done.stdout.strip().splitlines()[-1])}
        results["runs"].append(run)
        print(run, flush=True)
    base = results["runs"][0]
    for run in results["runs"]:
        rows.append(f"| {run['way']} | {run['seconds']:.1f} | {run['seconds'] / base['seconds'] - 1:+.1%} | "
                    f"{run['peak'] / 2**30:.2f} GiB |")  # fmt: skip
    m = results["machine"]
    table = markdown_table(
        f"{n} texts of 8-256 tokens ({n // args.chunk_size} chunks of {args.chunk_size}), random weights of the 0.6B "
        f"layer shapes at {args.layers} layers, float32, on {m['cpu']} ({m['torch_threads']} threads):",
        ["way", "seconds", "overhead", "peak memory (process)"],
        rows,
    )  # fmt: skip
    print("\n" + table)
    write_results("corpus-cpu", results, table)


if __name__ == "__main__":
    main()
