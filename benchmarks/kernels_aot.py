"""The Triton kernels compiled ahead of time for each NVIDIA architecture the installed Triton targets, on this CPU
machine: shared memory against the architecture's limit, registers, spilled bytes, tensor-core instructions and
loads, for every launch the wrappers can make (`qwen3_embed.kernels.aot`; the compile gate,
tests/test_kernels_compile.py, checks the same launches). No GPU is involved: these are the compiler's figures.

    python benchmarks/kernels_aot.py                              # prints the table
    python benchmarks/kernels_aot.py --output benchmarks/results  # and writes kernels-aot.{json,md} there
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import tempfile
import time
from pathlib import Path

import triton

from common import machine, markdown_table, write_results
from qwen3_embed.kernels import aot


def config_of(r: dict) -> str:
    if "BLOCK_M" in r:  # attention, forward and backward
        tiles = f"{r['BLOCK_M']}/{r['BLOCK_N']}/{r['num_warps']}/{r['num_stages']}"
        return tiles + (f", diagonal {r['DIAG_TILES']} x {r['DIAG_N']}" if "DIAG_TILES" in r else "")
    return f"{r.get('BLOCK', r.get('head_dim'))}, {r['num_warps']} warps"


def rows(results: list[dict]) -> list[str]:
    """One row per launch, fp16 and bf16 (and fp32) side by side."""
    merged: dict[tuple, list[dict]] = {}
    for r in results:
        key = (r["arch"], r["op"], r.get("head_dim") or r.get("BLOCK"), r.get("variant", ""), config_of(r))
        merged.setdefault(key, []).append(r)
    out = []
    for (arch, op, size, variant, config), group in merged.items():
        dtypes = "/".join(r["dtype"] for r in group)
        first = group[0]
        shared = "/".join(f"{r['shared'] / 1024:.0f}" for r in group) + f" of {first['shared_limit'] / 1024:.0f}"
        out.append(
            f"| sm_{arch} | {op} | {size} | {variant} | {config} | {dtypes} | {shared} | "
            f"{'/'.join(str(r['registers']) for r in group)} | {'/'.join(str(r['spill']) for r in group)} | "
            f"{first['mma']} | {first['loads']} | {','.join(map(str, first['wgmma_waits'])) or '-'} |"
        )
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", type=Path, help="write kernels-aot.{json,md} to this folder (default: print only)")
    args = p.parse_args(argv)
    ptxas = subprocess.run([aot.tool("ptxas"), "--version"], capture_output=True, text=True).stdout.splitlines()[-1]
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TRITON_CACHE_DIR"] = cache  # cold: the compile time is the gate's in CI
        start = time.perf_counter()
        archs = aot.targets()
        results = aot.compile_all(aot.launches(archs), processes=min(2, os.cpu_count() or 1))
        seconds = time.perf_counter() - start
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = children.ru_utime + children.ru_stime
    failed = [r for r in results if "error" in r]
    m = machine()
    table = markdown_table(
        f"Kernels compiled ahead of time (Triton {triton.__version__}, {ptxas}) on {m['cpu']}, {len(results)} launches "
        f"with a cold cache in {seconds:.0f} s ({cpu:.0f} s of CPU in 2 processes; the machine is shared, so the "
        "wall time varies with its load). Attention config: BLOCK_M/BLOCK_N/warps/stages; RMSNorm: block width, "
        "warps; diagonal: its unrolled masked tiles x their keys. Shared memory in KB against the architecture's "
        "opt-in limit; registers and spilled bytes per thread (cuobjdump); values per dtype; wgmma waits: the "
        "pending-group counts of every wgmma wait (0: no overlap of QK^T, softmax and PV). GQA groups 1 to 8 "
        "share one binary (the group is a runtime argument)."
        + (f" FAILED to compile: {len(failed)}" if failed else ""),
        ["arch", "op", "head dim / width", "variant", "config", "dtype", "shared KB", "registers", "spill B", "MMA",
         "loads", "wgmma waits"],
        rows([r for r in results if "error" not in r]),
    )  # fmt: skip
    print(table)
    if args.output is not None:
        write_results("kernels-aot", {"machine": m, "triton": triton.__version__, "ptxas": ptxas, "archs": archs,
                                      "seconds": seconds, "cpu_seconds": cpu, "launches": results}, table,
                      args.output)  # fmt: skip


if __name__ == "__main__":
    main()
