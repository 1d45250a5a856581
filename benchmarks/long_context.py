"""Peak memory and time of one long text on the CPU: qwen3-embed against transformers (eager and sdpa attention),
float32 and bfloat16, texts of 2k, 8k, 16k and 32k tokens, random weights of the 0.6B shape at reduced depth
(default 4 layers, real tokenizer).

Each case runs in a fresh process (so that its peak is its own), with glibc's mmap threshold fixed at 128 KiB (large
blocks go back to the system when freed, so resident memory follows what is live). After the model is loaded the
process's peak resident memory is reset (VmHWM, through /proc/self/clear_refs; transformers' memory-mapped weights
are read first, so that they are resident before it); then one forward pass over the text, the way each system
embeds it (ours: Embedder.encode; transformers: the model card's call, `model(**batch)`, which keeps a KV cache),
timed once, without a warm-up; float32 first, shortest text first. Reported: the peak above the loaded model
("activation memory"), and what each layer leaves behind (resident memory after each decoder layer, through forward
hooks: its growth per layer, such as transformers' KV cache). Extrapolated to 28 layers (0.6B) and 36 (4B/8B's
depth): the peak at this depth plus the per-layer growth for each further layer (a layer's own transient memory does
not add up across layers). Every system's vector is compared with ours in the same dtype.

A case whose estimated memory (transformers eager: the attention scores of every head, n x n, several copies) is
over 70% of the memory available when it starts is skipped with that estimate, not run (the machine may be shared).

    python benchmarks/long_context.py
    python benchmarks/long_context.py --tokens 2048 8192 --systems qwen3-embed "transformers sdpa" --dtypes float32
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from common import (
    ROOT,
    SHARED_TOKENIZER,
    machine,
    markdown_table,
    memory,
    texts_of_token_lengths,
    write_checkpoint,
    write_results,
)
from qwen3_embed import Qwen3Config

SYSTEMS = ("qwen3-embed", "transformers eager", "transformers sdpa")
DEPTHS = (28, 36)
GIB = 2**30


def available() -> int:
    """Bytes of memory the system has available (MemAvailable)."""
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))


def estimate(system: str, tokens: int, dtype: torch.dtype, heads: int) -> int:
    """A rough upper bound of a case's activation memory: eager attention holds the scores of every head in the
    dtype, their float32 softmax and its cast, and an n x n mask; the others stay linear in the tokens (an n x n
    boolean mask at most)."""
    size = torch.finfo(dtype).bits // 8
    if system == "transformers eager":
        return heads * tokens**2 * (4 + 2 * size) + tokens**2 * size
    return tokens**2 + tokens * 256 * 1024


def run_case(case: dict) -> dict:
    """One case in this process: load, reset the peak, one forward pass with per-layer samples."""
    dtype = getattr(torch, case["dtype"])
    text = case["text"]
    if case["system"] == "qwen3-embed":
        from qwen3_embed import Embedder

        embedder = Embedder.from_pretrained(case["folder"], device="cpu", dtype=dtype)
        layers = embedder.model.layers

        def forward():
            return embedder.encode([text], max_length=case["tokens"], batch_tokens=case["tokens"])[0]
    else:
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(case["folder"])
        attention = case["system"].split()[-1]
        model = AutoModel.from_pretrained(case["folder"], dtype=dtype, attn_implementation=attention).eval()
        with torch.inference_mode():  # its weights are memory-mapped: resident once read, so read them before the
            for weight in model.parameters():  # baseline (else each layer's weights would count as its growth)
                weight.sum()
        layers = model.layers
        batch = tokenizer([text], return_tensors="pt")
        assert batch["input_ids"].shape[1] == case["tokens"], batch["input_ids"].shape

        def forward():
            with torch.inference_mode():
                hidden = model(**batch).last_hidden_state[0, -1]  # the card's call
            return torch.nn.functional.normalize(hidden.float(), dim=-1)

    after_layer = []
    for layer in layers:
        layer.register_forward_hook(lambda *_: after_layer.append(memory("VmRSS")))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    baseline = memory("VmRSS")
    start = time.perf_counter()
    vector = forward()
    seconds = time.perf_counter() - start
    peak = memory("VmHWM") - baseline
    per_layer = (after_layer[-1] - after_layer[0]) / max(1, len(after_layer) - 1)
    return {"seconds": seconds, "model_bytes": baseline, "activation_peak_bytes": peak,
            "after_each_layer_bytes": [r - baseline for r in after_layer], "per_layer_growth_bytes": per_layer,
            "vector": vector.float().tolist()}  # fmt: skip


def spawn(case: dict) -> dict:
    """Run a case in a fresh process; its result, or why it has none."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    # the case goes on stdin: a 32k-token text is too long for a command-line argument
    done = subprocess.run([sys.executable, __file__, "--case"], input=json.dumps(case), capture_output=True, text=True,
                          env=env)  # fmt: skip
    if done.returncode != 0:
        killed = done.returncode in (-9, 137)
        why = "killed (out of memory)" if killed else done.stderr.strip().splitlines()[-1][:200]
        return {"error": why}
    return json.loads(done.stdout.strip().splitlines()[-1])


def cosine(a: list[float], b: list[float]) -> float:
    return torch.nn.functional.cosine_similarity(torch.tensor(a), torch.tensor(b), dim=0).item()


def row(case: dict, r: dict, ours: dict | None, layers: int) -> str:
    head = f"| {case['tokens']:,} | {case['dtype']} | {case['system']} |"
    if "error" in r or "skipped" in r:
        return f"{head} {r.get('skipped') or r['error']} | | | | | | |"
    peak, growth = r["activation_peak_bytes"], r["per_layer_growth_bytes"]
    extrapolated = [f"{(peak + (depth - layers) * growth) / GIB:.2f}" for depth in DEPTHS]
    versus = f"{cosine(r['vector'], ours['vector']):.6f}" if ours and "vector" in ours else "-"
    return (f"{head} {r['seconds']:.1f} | {r['model_bytes'] / GIB:.2f} | {peak / GIB:.2f} | "
            f"{1024 * peak / case['tokens'] / 2**20:.0f} | {growth / 2**20:.0f} | {' / '.join(extrapolated)} | "
            f"{versus} |")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, nargs="+", default=[2048, 8192, 16384, 32768])
    p.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    p.add_argument("--layers", type=int, default=4, help="depth of the 0.6B-shaped checkpoint")
    p.add_argument("--tokenizer", type=Path, default=SHARED_TOKENIZER)
    p.add_argument("--case", action="store_true", help=argparse.SUPPRESS)  # one case from stdin (`spawn`'s process)
    args = p.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(sys.stdin.read()))))
        return
    config = replace(Qwen3Config.preset("0.6B"), num_hidden_layers=args.layers)
    folder = write_checkpoint(ROOT / "local" / f"bench-embed-0.6B-{args.layers}", config, args.tokenizer)
    texts = dict(zip(args.tokens, texts_of_token_lengths(args.tokenizer, args.tokens)))
    results = {"machine": machine(), "layers": args.layers, "runs": []}
    rows = []
    for dtype in args.dtypes:
        for tokens in args.tokens:
            ours = None
            for system in args.systems:
                case = {"system": system, "dtype": dtype, "tokens": tokens, "folder": str(folder),
                        "text": texts[tokens]}  # fmt: skip
                need, free = estimate(system, tokens, getattr(torch, dtype), config.num_attention_heads), available()
                if need > 0.7 * free:
                    r = {"skipped": f"skipped: needs about {need / GIB:.0f} GiB, {free / GIB:.0f} GiB available"}
                else:
                    r = spawn(case)
                ours = r if system == "qwen3-embed" else ours
                rows.append(row(case, r, ours, args.layers))
                print(rows[-1], flush=True)
                kept = {k: v for k, v in r.items() if k != "vector"}
                results["runs"].append({k: v for k, v in case.items() if k not in ("text", "folder")} | kept)
                write(results, rows, args.layers)  # after each case: a run cut short keeps what it measured


def write(results: dict, rows: list[str], layers: int) -> None:
    m = results["machine"]
    table = markdown_table(
        f"One text through random weights of the 0.6B shape at {layers} layers on {m['cpu']}, "
        f"{m['torch_threads']} threads, each case in a fresh process, one forward pass without a warm-up. Activation "
        "peak: the peak resident memory above the loaded model; per layer: what each decoder layer leaves resident; "
        f"at {' / '.join(map(str, DEPTHS))} layers: the peak plus that growth for each further layer:",
        ["tokens", "dtype", "system", "seconds", "loaded process GiB", "activation peak GiB", "KiB per token",
         "per layer MiB", f"activation peak GiB at {' / '.join(map(str, DEPTHS))} layers", "cosine vs ours"],
        rows,
    )  # fmt: skip
    write_results("long-context-cpu", results, table)


if __name__ == "__main__":
    main()
