"""Encoding a corpus through each engine: records/s, tokens/s and the peak memory of all its processes, for one
process, torchrun ranks and a Ray Data pipeline with as many actors, on the same input (a folder of JSON lines
files); the cost of the integrity checks when a finished output is run again and of `qwen3-embed verify`; and the
rate of verifying a synthetic 1 GiB output, against the time embedding that many vectors took at the measured rate.

Each way is the `qwen3-embed` command in fresh processes on the same random-weight checkpoint (the 0.6B layer shapes,
at reduced depth by default, real tokenizer); seconds are the command's wall time, process start and model load
included; peak memory is the largest sum of the resident memory of the command's processes (sampled every 0.1 s).
Every engine's output is compared with the one-process output.

    python benchmarks/corpus.py                   # CPU: 2 torchrun ranks (1 thread each), Ray with 2 CPU actors
    python benchmarks/corpus.py --texts 200       # a quick check
    python benchmarks/corpus.py --layers 28 --workers 1 --texts 20000 --device cuda   # one GPU, the full 0.6B
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

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
from qwen3_embed.corpus import load_corpus, verify_corpus
from qwen3_embed.store.shards import FORMAT, MANIFEST, write_shard


def rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0


def tree(root: int) -> list[int]:
    """`root` and every process under it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        found.append(pid)
        frontier += children.get(pid, [])
    return found


def run(command: list[str]) -> tuple[float, int, str]:
    """(wall seconds, peak summed RSS of the process tree, stderr) of a command that must succeed."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0

    def sample() -> None:
        nonlocal peak
        while process.poll() is None:
            peak = max(peak, sum(rss(pid) for pid in tree(process.pid)))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample)
    sampler.start()
    _, err = process.communicate()
    seconds = time.perf_counter() - start
    sampler.join()
    if process.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{err[-3000:]}")
    return seconds, peak, err


def verify_rate(folder: Path, gib: float, dim: int = 1024, rows: int = 8192) -> dict:
    """Seconds to verify (sha256 of every file) and to check quickly (sizes and counts) a synthetic output of `gib`
    GiB of float32 vectors, written as the engines write it."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    shards = round(gib * 2**30 / (rows * dim * 4))
    rng = np.random.default_rng(0)
    records = [
        write_shard(folder, k, rng.standard_normal((rows, dim), np.float32), list(range(k * rows, (k + 1) * rows)),
                    "npy", settings={})
        for k in range(shards)
    ]  # fmt: skip
    manifest = {"format": FORMAT, "settings": {"vector_dtype": "float32"}, "rows": shards * rows, "dim": dim,
                "shards": records}  # fmt: skip
    (folder / MANIFEST).write_text(json.dumps(manifest))
    size = sum(p.stat().st_size for p in folder.iterdir())
    timings = {}
    for name, checksums in (("verify", True), ("verify --quick", False)):
        start = time.perf_counter()
        assert verify_corpus(folder, checksums) == []
        timings[name] = time.perf_counter() - start
    shutil.rmtree(folder)
    return {"bytes": size, "vectors": shards * rows, "seconds": timings}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=4, help="depth of the 0.6B-shaped checkpoint")
    p.add_argument("--texts", type=int, default=2000, help="records in the input, spread over 4 files")
    p.add_argument("--chunk-size", type=int, default=200)
    p.add_argument("--workers", type=int, default=2, help="torchrun ranks, and Ray actors")
    p.add_argument("--device", default="cpu", help="cpu, or cuda for one GPU per rank and actor")
    p.add_argument("--verify-gib", type=float, default=1.0, help="size of the synthetic output verified")
    p.add_argument("--tokenizer", type=Path, default=SHARED_TOKENIZER)
    args = p.parse_args()
    config = replace(Qwen3Config.preset("0.6B"), num_hidden_layers=args.layers)
    model = write_checkpoint(ROOT / "local" / f"bench-embed-0.6B-{args.layers}", config, args.tokenizer)
    texts = texts_of_token_lengths(args.tokenizer, log_uniform_lengths(args.texts, 8, 256, seed=5))
    work = ROOT / "local" / "bench-corpus"
    shutil.rmtree(work, ignore_errors=True)
    (work / "in").mkdir(parents=True)
    for i in range(4):
        part = texts[i * len(texts) // 4 : (i + 1) * len(texts) // 4]
        (work / "in" / f"part-{i}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in part), "utf-8")

    cli = [sys.executable, "-m", "qwen3_embed.cli"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.workers)]
    encode = ["encode", "--model", str(model), "--input", str(work / "in"), "--chunk-size", str(args.chunk_size)]
    encode += ["--device", args.device] if args.device != "cpu" else []
    ways = {
        "1 process": (cli + encode, "one"),
        f"torchrun, {args.workers} ranks": (torchrun + ["-m", "qwen3_embed.cli"] + encode, "torchrun"),
        f"Ray Data, {args.workers} {'GPU' if args.device != 'cpu' else 'CPU'} actors": (
            cli + encode + ["--engine", "ray", "--workers", str(args.workers)], "ray"),
        "rerun of the finished 1-process output (every shard verified)": (cli + encode, "one"),
        "qwen3-embed verify of that output": (cli + ["verify", str(work / "one")], None),
        "1 process, again (the machine's drift during this run)": (cli + encode, "again"),
    }  # fmt: skip
    results = {"machine": machine(), "texts": args.texts, "chunk_size": args.chunk_size, "layers": args.layers,
               "device": args.device, "runs": []}  # fmt: skip
    reference = None
    for way, (command, out) in ways.items():
        if out is not None and "--output" not in command:
            command = command + ["--output", str(work / out)]
        seconds, peak, err = run(command)
        run_result = {"way": way, "seconds": seconds, "peak": peak}
        if out is not None:
            manifest = json.loads((work / out / MANIFEST).read_text())
            run_result["tokens"] = sum(s["tokens"] for s in manifest["shards"])
            vectors, ids = load_corpus(work / out)
            if reference is None:
                reference = vectors, ids
            assert ids == reference[1], f"{way}: other ids than one process"
            run_result["max_abs_diff"] = float(np.abs(vectors - reference[0]).max())
        results["runs"].append(run_result)
        print(run_result, flush=True)
    results["verify_synthetic"] = verify_rate(work / "synthetic", args.verify_gib)
    print(results["verify_synthetic"], flush=True)

    first = results["runs"][0]
    rows = []
    for r in results["runs"]:
        engine = "tokens" in r and not r["way"].startswith("rerun")  # a rerun embeds nothing
        rate = f"{args.texts / r['seconds']:.1f} | {r['tokens'] / r['seconds']:,.0f}" if engine else "- | -"
        diff = f"{r['max_abs_diff']:.1e}" if "max_abs_diff" in r else "-"
        rows.append(f"| {r['way']} | {r['seconds']:.1f} | {r['seconds'] / first['seconds']:.2f}x | {rate} | "
                    f"{r['peak'] / 2**30:.2f} GiB | {diff} |")  # fmt: skip
    synthetic = results["verify_synthetic"]
    embed_seconds = synthetic["vectors"] / (args.texts / first["seconds"])  # at the 1-process rate measured above
    verify_seconds = synthetic["seconds"]["verify"]
    m = results["machine"]
    table = markdown_table(
        f"{args.texts} texts of 8-256 tokens in 4 JSON lines files ({args.chunk_size} per shard), random weights of "
        f"the 0.6B layer shapes at {args.layers} layers, float32, on {m['cpu']} ({m['cores']} cores), "
        f"device {args.device}; seconds include process start and model load:",
        ["way", "seconds", "vs 1 process", "records/s", "tokens/s", "peak memory (all processes)", "max abs diff"],
        rows,
    )  # fmt: skip
    table += (
        f"\n\nVerifying a synthetic {synthetic['bytes'] / 2**30:.2f} GiB output ({synthetic['vectors']:,} vectors of "
        f"1024 float32, warm page cache): {verify_seconds:.1f} s with sha256 checksums, "
        f"{synthetic['seconds']['verify --quick']:.2f} s by sizes and counts. Embedding that many vectors at the "
        f"1-process rate above would take {embed_seconds:,.0f} s, so verifying costs "
        f"{verify_seconds / embed_seconds:.3%} of it (an estimate: the embedding of that output was not run)."
    )  # fmt: skip
    print("\n" + table)
    write_results(f"corpus-{args.device.split(':')[0]}", results, table)


if __name__ == "__main__":
    main()
