"""What qwen3-embed costs before its model runs: the disk its run-time dependencies take, the time `import
qwen3_embed` takes beside `import torch`, and the tokenizer's memory while it tokenizes one long text.

- Installed size: the bytes of the files each installed distribution lists (its RECORD), for qwen3-embed-triton's
  run-time requirements and theirs, recursively (no extras), as installed in this environment (the checkout
  installed with `pip install -e .`); torch with its own requirements; torch alone.
- Import: the wall time of `python -c "import X"` less that of `python -c pass`, the best of --repeats runs each,
  the three taking turns.
- Tokenizer: a fresh process loads the real Qwen3 tokenizer.json, then encodes one text of vocabulary words
  (--text-mb MB); its peak resident memory (VmHWM, reset before the encode) above what it held before.

    python benchmarks/footprint.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement

from common import ROOT, SHARED_TOKENIZER, machine, markdown_table, write_results

TOKENIZE = """
import json, random, sys
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1])
words = sorted(w[1:] for w in tok.get_vocab() if w.startswith("Ġ") and w[1:].isascii() and w[1:].isalpha())
rng, target, parts, size = random.Random(0), int(float(sys.argv[2]) * 1e6), [], 0
while size < target:
    parts.append(rng.choice(words)); size += len(parts[-1]) + 1
text = " ".join(parts)
status = lambda key: next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key + ":"))
open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS
before = status("VmRSS")
ids = tok.encode(text).ids
print(json.dumps({"text_bytes": len(text.encode()), "tokens": len(ids), "peak_bytes": status("VmHWM") - before}))
"""


def closure(requirements: list[str]) -> set[str]:
    """The installed distributions these requirements pull in, recursively (extras left out)."""
    seen: set[str] = set()
    pending = [Requirement(r) for r in requirements]
    while pending:
        req = pending.pop()
        name = req.name.lower().replace("_", "-")
        if name in seen or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue  # an optional platform dependency this environment lacks
        seen.add(name)
        pending += [Requirement(r) for r in dist.requires or []]
    return seen


def installed_bytes(name: str) -> int:
    """The bytes of the files an installed distribution lists (those present)."""
    dist = distribution(name)
    return sum(os.path.getsize(p) for f in dist.files or [] if (p := dist.locate_file(f)).is_file())


def import_seconds(repeats: int) -> dict[str, float]:
    """Seconds `import X` adds to the interpreter's start, best of `repeats`, for qwen3_embed and torch."""
    codes = {"nothing": "pass", "torch": "import torch", "qwen3_embed": "import qwen3_embed"}
    best = dict.fromkeys(codes, float("inf"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for _ in range(repeats):
        for name, code in codes.items():
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True, env=env)
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: best[name] - best["nothing"] for name in ("torch", "qwen3_embed")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=7, help="import runs per module (the best counts)")
    p.add_argument("--text-mb", type=float, default=1.9, help="size of the text tokenized, in MB")
    p.add_argument("--tokenizer", type=Path, default=SHARED_TOKENIZER)
    args = p.parse_args()
    runtime, with_torch = closure(["qwen3-embed-triton"]) - {"qwen3-embed-triton"}, closure(["torch"])
    size = {"runtime": sum(map(installed_bytes, runtime)), "torch_with_requirements":
            sum(map(installed_bytes, with_torch)), "torch": installed_bytes("torch")}  # fmt: skip
    imports = import_seconds(args.repeats)
    done = subprocess.run([sys.executable, "-c", TOKENIZE, str(args.tokenizer / "tokenizer.json"), str(args.text_mb)],
                          check=True, capture_output=True, text=True)  # fmt: skip
    tokenizer = json.loads(done.stdout)
    results = {"machine": machine(), "installed_bytes": size, "distributions": sorted(runtime),
               "import_seconds": imports, "tokenizer": tokenizer}  # fmt: skip
    mb = lambda n: f"{n / 1e6:,.0f} MB"  # noqa: E731
    rows = [
        f"| run-time dependencies installed ({len(runtime)} distributions) | {mb(size['runtime'])} |",
        f"| of which torch with its own requirements | {mb(size['torch_with_requirements'])} |",
        f"| of which torch | {mb(size['torch'])} |",
        f"| `import qwen3_embed` | {imports['qwen3_embed']:.2f} s |",
        f"| `import torch` | {imports['torch']:.2f} s |",
        f"| tokenizer's peak memory while it encodes a {tokenizer['text_bytes'] / 1e6:.2f} MB text "
        f"({tokenizer['tokens']:,} tokens) | {mb(tokenizer['peak_bytes'])} "
        f"({tokenizer['peak_bytes'] / tokenizer['text_bytes']:.0f}x the text) |",
    ]
    table = markdown_table(
        "Installed size of the run-time dependencies (files of each distribution's RECORD), import times (best of "
        f"{args.repeats}, less the interpreter's start) and the tokenizer's memory:",
        ["what", "measured"],
        rows,
    )
    print("\n" + table)
    write_results("footprint-cpu", results, table)


if __name__ == "__main__":
    main()
