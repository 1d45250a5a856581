"""Wall time and peak resident memory to load a checkpoint of the real 0.6B shape to CPU, against its size on disk
and against transformers' from_pretrained.

The checkpoint (bf16, as the real repos) is written by the script. Each load runs in a fresh process, from a warm
page cache, and then reads every weight once (a load may map the file lazily; reading makes every weight
resident). "Load RSS" is the process's peak resident memory (VmHWM) less its resident memory before the load
(Python, torch and the libraries): what the load itself holds at its peak, mapped file pages included.

    python benchmarks/load.py
"""

from __future__ import annotations

import json
import subprocess
import sys

from common import ROOT, SHARED_TOKENIZER, machine, markdown_table, write_checkpoint, write_results
from qwen3_embed import Qwen3Config

# Run in a child process: prints {"seconds", "baseline", "peak"} (bytes) for one loader and dtype.
CHILD = r"""
import json, sys, time
import torch
from pathlib import Path

def rss(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))

loader, folder, dtype = sys.argv[1], Path(sys.argv[2]), getattr(torch, sys.argv[3])
if loader == "qwen3-embed":
    from qwen3_embed import Qwen3Config, backends
    from qwen3_embed.pipeline import load_model
    config = Qwen3Config.from_json(folder / "config.json")
    load = lambda: backends.prepare(load_model(folder, config, dtype, torch.device("cpu")))
else:
    from transformers import AutoModel
    load = lambda: AutoModel.from_pretrained(folder, dtype=dtype)
baseline = rss("VmRSS:")
start = time.perf_counter()
model = load()
seconds = time.perf_counter() - start
assert next(model.parameters()).dtype == dtype
with torch.no_grad():
    for p in model.parameters():
        if not p.is_mkldnn:  # packed weights (qwen3_embed.backends.cpu) were written, hence resident, at load
            p.sum()
print(json.dumps({"seconds": seconds, "baseline": baseline, "peak": rss("VmHWM:")}))
"""


def measure(loader: str, folder, dtype: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, loader, str(folder), dtype], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{loader} {dtype} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    folder = write_checkpoint(ROOT / "local" / "bench-embed-0.6B-28", Qwen3Config.preset("0.6B"), SHARED_TOKENIZER)
    size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    for loader in ("qwen3-embed", "transformers"):  # warm the page cache and the imports once
        measure(loader, folder, "bfloat16")
    rows, results = [], {"machine": machine(), "checkpoint_bytes": size, "runs": []}
    for dtype in ("bfloat16", "float32"):
        for loader in ("qwen3-embed", "transformers"):
            r = measure(loader, folder, dtype)
            load_rss = r["peak"] - r["baseline"]
            results["runs"].append({"loader": loader, "dtype": dtype, **r, "load_rss": load_rss})
            rows.append(f"| {loader} | {dtype} | {r['seconds']:.2f} | {load_rss / 2**30:.2f} GiB "
                        f"({load_rss / size:.2f}x) | {r['peak'] / 2**30:.2f} GiB |")  # fmt: skip
            print(rows[-1], flush=True)
    m = results["machine"]
    table = markdown_table(
        f"Loading a random-weight checkpoint of the 0.6B shape ({size / 2**30:.2f} GiB of bf16 safetensors) to CPU, "
        f"warm page cache, on {m['cpu']}, torch {m['torch']}, transformers {m.get('transformers')}:",
        ["loader", "dtype", "seconds", "load RSS (x checkpoint)", "process peak RSS"],
        rows,
    )  # fmt: skip
    print("\n" + table)
    write_results("load-cpu", results, table)


if __name__ == "__main__":
    main()
