"""Compile the Triton kernels ahead of time for NVIDIA GPUs this machine does not have, and read what each launch
needs: shared memory, registers, spilled bytes, which tensor-core instructions and which loads it uses.

Triton compiles for any NVIDIA target on a CPU with the `ptxas` its wheel bundles, and the bundled `cuobjdump`
reads a cubin's registers and spill stack. Each kernel module lists every launch its wrapper can make on an
architecture (`launches(arch)`), with the alignment hints a real launch adds (16-byte aligned pointers, strides
that are multiples of 16); without them the register and spill figures are worse than a GPU sees.

    python -m qwen3_embed.kernels.aot OUT.json     # every launch on every target, as JSON (the compile gate)

The compile gate (`tests/test_kernels_compile.py`) and `benchmarks/kernels_aot.py` both call `compile_all`. Run it
without TRITON_INTERPRET: under the interpreter `triton.jit` gives functions that cannot be compiled.
"""

from __future__ import annotations

import importlib
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

# Opt-in shared memory per block (bytes): A100; A10/A40/RTX 30; L4/L40/RTX 40; H100/H200; B200; RTX 50.
SHARED_MEMORY = {80: 166_912, 86: 101_376, 89: 101_376, 90: 232_448, 100: 232_448, 120: 101_376}
KERNEL_MODULES = ("qwen3_embed.kernels.attention", "qwen3_embed.kernels.rmsnorm")


@dataclass(frozen=True)
class Launch:
    """One compiled form of a kernel: its argument types, constexprs and launch options, and labels for the table."""

    module: str  # the kernel's module and @triton.jit function
    kernel: str
    signature: dict[str, str]  # argument -> Triton type ("*bf16", "i32", "fp32", "tensordesc<...>", "constexpr")
    constexprs: dict[str, object]
    aligned: tuple[str, ...]  # arguments a real launch marks 16-divisible (pointers; strides that are multiples of 16)
    num_warps: int
    num_stages: int
    labels: dict = field(default_factory=dict)  # op, dtype, head_dim, config, variant, ...


def tool(name: str) -> str:
    """Path of a binary bundled with Triton's NVIDIA backend (ptxas, cuobjdump)."""
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def compile_launch(launch: Launch, arch: int) -> dict:
    """Compile `launch` for sm_`arch` and report what it uses; compile errors are reported, not raised."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(importlib.import_module(launch.module), launch.kernel)
    while not isinstance(fn, triton.runtime.JITFunction):  # through a triton.autotune wrapper to the JIT function
        fn = fn.fn
    names = fn.arg_names
    attrs = {(names.index(a),): [["tt.divisibility", 16]] for a in launch.aligned}
    result = {**launch.labels, "arch": arch, "num_warps": launch.num_warps, "num_stages": launch.num_stages}
    start = time.perf_counter()
    try:
        source = ASTSource(fn=fn, signature=launch.signature, constexprs=launch.constexprs, attrs=attrs)
        k = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                           options={"num_warps": launch.num_warps, "num_stages": launch.num_stages})  # fmt: skip
    except Exception as e:  # noqa: BLE001 - a failed compile is a row of the report
        return {**result, "error": f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e) else ''}"}
    result["compile_s"] = round(time.perf_counter() - start, 2)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"])
        f.flush()
        usage = subprocess.run([tool("cuobjdump"), "-res-usage", f.name], capture_output=True, text=True).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+)", usage)
    if found is None:
        return {**result, "error": f"cuobjdump printed no REG/STACK line: {usage[-300:]!r}"}
    ptx = k.asm["ptx"]
    waits = sorted({int(n) for n in re.findall(r"wgmma\.wait_group\.sync\.aligned\s+(\d+)", ptx)})
    result.update(
        shared=k.metadata.shared,
        shared_limit=SHARED_MEMORY.get(arch),
        registers=int(found.group(1)),
        spill=int(found.group(2)),
        mma="tcgen05" if "tcgen05.mma" in ptx else "wgmma" if "wgmma.mma_async" in ptx else "mma" if "mma.sync" in ptx
        else "none",
        loads="TMA" if "cp.async.bulk.tensor" in ptx else "cp.async" if "cp.async" in ptx else "ld",
        wgmma_waits=waits,
    )  # fmt: skip
    return result


def _probe_kernel(X):
    pass


def accepts(arch: int) -> bool:
    """Whether the installed Triton and its ptxas compile for sm_`arch`."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    try:
        fn = triton.jit(_probe_kernel)
        triton.compile(ASTSource(fn=fn, signature={"X": "*fp32"}), target=GPUTarget("cuda", arch, 32))
    except Exception:  # noqa: BLE001 - any failure means this Triton cannot target it
        return False
    return True


def launches(archs: list[int] | None = None) -> list[tuple[Launch, int]]:
    """Every launch of every kernel module, on each architecture (default: every one the installed Triton takes)."""
    archs = archs or targets()
    return [
        (launch, arch) for arch in archs for m in KERNEL_MODULES for launch in importlib.import_module(m).launches(arch)
    ]


def targets(processes: int = 2) -> list[int]:
    """The architectures with a known shared-memory limit that the installed Triton compiles for."""
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        return [arch for arch, ok in zip(SHARED_MEMORY, pool.map(accepts, SHARED_MEMORY)) if ok]


def _compile(item: tuple[Launch, int]) -> dict:
    return compile_launch(*item)


def compile_all(items: list[tuple[Launch, int]], processes: int = 2) -> list[dict]:
    """compile_launch over (launch, arch) pairs in a pool of forked processes (the slowest first), in input order."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("compile ahead of time without TRITON_INTERPRET=1 (run `python -m qwen3_embed.kernels.aot`)")

    def cost(i: int) -> int:  # the biggest tiles compile longest: start them first
        c = items[i][0].constexprs
        return c.get("BLOCK_M", 0) * c.get("BLOCK_N", 0) * c.get("HEAD_DIM", 0)

    order = sorted(range(len(items)), key=lambda i: -cost(i))
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        done = pool.map(_compile, [items[i] for i in order], chunksize=1)
    results = [None] * len(items)
    for i, r in zip(order, done):
        results[i] = r
    return results


def main() -> None:
    """Write every launch's report, as JSON, to the file named on the command line."""
    start = time.perf_counter()
    archs = targets()
    results = compile_all(launches(archs), processes=int(os.environ.get("AOT_PROCESSES", "2")))
    report = {"archs": archs, "seconds": round(time.perf_counter() - start, 1), "launches": results}
    with open(sys.argv[1], "w") as f:
        json.dump(report, f, indent=1, default=str)


if __name__ == "__main__":
    main()
