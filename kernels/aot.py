"""Compile the Triton kernels ahead of time for NVIDIA GPUs this machine does not have, and read what each launch
needs: shared memory, registers, spilled bytes, which tensor-core instructions and which loads it uses.

Triton compiles for any NVIDIA target on a CPU with the `ptxas` its wheel bundles, and the bundled `cuobjdump`
reads a cubin's registers and spill stack. `launches(archs)` lists every launch the wrappers can make on each
architecture (the attention kernel and its experimental variants, the two RMSNorm kernels), with the alignment hints
a real launch adds (16-byte aligned pointers, strides that are multiples of 16); without them the register and spill
figures are worse than a GPU sees.

    python -m qwen3_embed.kernels.aot OUT.json     # every launch on every target, as JSON (the compile gate)

The compile gate (`tests/test_kernels_compile.py`) and `benchmarks/kernels_aot.py` both call `compile_all`. Run it
without TRITON_INTERPRET: under the interpreter `triton.jit` gives functions that cannot be compiled.
"""

from __future__ import annotations

import importlib
import itertools
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
    """Every launch of every kernel, on each architecture (default: every one the installed Triton takes)."""
    archs = archs or targets()
    kinds = (attention_launches, attention_backward_launches, rmsnorm_launches)
    return [(launch, arch) for arch in archs for kind in kinds for launch in kind(arch)]


# ----------------------------------------------------------------------------------------------------------------
# What each wrapper launches

ATTENTION_HEAD_DIMS = (64, 128, 256)
ATTENTION_GROUPS = (1, 2, 4, 8)
_ATTENTION_STRIDES = ("stride_qt", "stride_qh", "stride_kt", "stride_kh", "stride_vt", "stride_vh", "stride_ot",
                      "stride_oh", "stride_lse")  # fmt: skip


def attention_launches(arch: int) -> list[Launch]:
    """Every compiled form the attention wrappers can launch on sm_`arch` (head dims 64/128/256, GQA groups 1 to 8,
    16-bit dtypes, the default and each experimental variant the architecture runs): one binary serves every group,
    so groups share a launch."""
    from .attention import BASE, DTYPES, configs
    from .experimental.attention import VARIANTS, variants

    capability = divmod(arch, 10)
    found = {}
    for dtype, head_dim, group in itertools.product(DTYPES, ATTENTION_HEAD_DIMS, ATTENTION_GROUPS):
        for config in configs(head_dim, group, dtype, capability):
            for variant in [BASE] + [VARIANTS[name] for name in variants(capability, head_dim, dtype)]:
                spec = _attention_launch(DTYPES[dtype], head_dim, config, variant)
                key = (repr(sorted(spec.constexprs.items())), repr(sorted(spec.signature.items())), spec.num_warps,
                       spec.num_stages)  # fmt: skip
                found.setdefault(key, spec).labels.setdefault("groups", []).append(group)
    return list(found.values())


def _attention_launch(t: str, head_dim: int, config: dict, variant, lse: bool = False) -> Launch:
    """The attention kernel's compiled form for these settings, as a real launch on contiguous q, k, v specializes
    it; with `lse`, the training forward's (which also writes each row's log-sum-exp)."""
    flags = variant.flags(config)
    constexprs = {"HEAD_DIM": head_dim, "BLOCK_M": config["BLOCK_M"], "BLOCK_N": config["BLOCK_N"], **flags}
    descriptor = f"tensordesc<{t}[{config['BLOCK_N']}, {head_dim}]>" if variant.tma else "constexpr"
    signature = {**dict.fromkeys(("Q", "K", "V", "O"), f"*{t}"), "LSE": "*fp32" if lse else "constexpr",
                 "K_DESC": descriptor, "V_DESC": descriptor,
                 "WORK": "*i32", "scale_log2": "fp32", "group": "i32", "tokens_bucket": "i32",
                 **dict.fromkeys(_ATTENTION_STRIDES, "i32"), **dict.fromkeys(constexprs, "constexpr")}  # fmt: skip
    if not variant.tma:
        constexprs.update(K_DESC=None, V_DESC=None)
    if not lse:
        constexprs.update(LSE=None)
    labels = {"op": "attention + lse" if lse else "attention", "dtype": t, "head_dim": head_dim,
              "variant": variant.name, "BLOCK_M": config["BLOCK_M"], "BLOCK_N": config["BLOCK_N"],
              "DIAG_N": flags["DIAG_N"], "DIAG_TILES": flags["DIAG_TILES"]}  # fmt: skip
    aligned = ("Q", "K", "V", "O", "WORK", *_ATTENTION_STRIDES, *(("LSE",) if lse else ()))
    module = "qwen3_embed.kernels.attention"
    return Launch(module, "_attention_kernel", signature, constexprs, aligned, config["num_warps"],
                  config["num_stages"], labels)  # fmt: skip


def attention_backward_launches(arch: int) -> list[Launch]:
    """What training launches on sm_`arch` at head dims 64/128/256 in fp16 and bf16 (one binary each for every GQA
    group): the forward that also writes the log-sum-exp, the dK/dV and dQ kernels, and (on sm_80 and sm_90 only,
    like RMSNorm: no tensor cores, a few registers) the preprocessing pass D = rowsum(dO * O)."""
    from .attention import BASE, DTYPES, backward_configs, configs, delta_rows

    capability, module, found = divmod(arch, 10), "qwen3_embed.kernels.attention", []
    sixteen_bit = [dtype for dtype, name in DTYPES.items() if name != "fp32"]
    for dtype, head_dim in itertools.product(sixteen_bit, ATTENTION_HEAD_DIMS):
        t = DTYPES[dtype]
        for config in configs(head_dim, 1, dtype, capability):
            found.append(_attention_launch(t, head_dim, config, BASE, lse=True))
        settings = backward_configs(head_dim, 1, dtype, capability)
        strides = ("stride_qt", "stride_qh", "stride_kt", "stride_kh", "stride_vt", "stride_vh", "stride_dot",
                   "stride_doh")  # fmt: skip
        for kernel, outputs in (("dkdv", ("DK", "DV")), ("dq", ("DQ",))):
            config = settings[kernel]
            out_strides = tuple(f"stride_{o.lower()}{axis}" for o in outputs for axis in "th") + ("stride_lse",)
            signature = {**dict.fromkeys(("Q", "K", "V", "DO"), f"*{t}"), "LSE": "*fp32", "DELTA": "*fp32",
                         **dict.fromkeys(outputs, f"*{t}"), "WORK": "*i32", "scale": "fp32", "scale_log2": "fp32",
                         "group": "i32", **dict.fromkeys(strides + out_strides, "i32"),
                         **dict.fromkeys(("HEAD_DIM", "BLOCK_M", "BLOCK_N"), "constexpr")}  # fmt: skip
            constexprs = {"HEAD_DIM": head_dim, "BLOCK_M": config["BLOCK_M"], "BLOCK_N": config["BLOCK_N"]}
            aligned = ("Q", "K", "V", "DO", "LSE", "DELTA", *outputs, "WORK", *strides, *out_strides)
            labels = {"op": f"attention {kernel}", "dtype": t, "head_dim": head_dim, "BLOCK_M": config["BLOCK_M"],
                      "BLOCK_N": config["BLOCK_N"]}  # fmt: skip
            found.append(Launch(module, f"_attention_{kernel}_kernel", signature, constexprs, aligned,
                                config["num_warps"], config["num_stages"], labels))  # fmt: skip
        if arch in RMSNORM_ARCHS:
            strides = ("stride_ot", "stride_oh", "stride_dot", "stride_doh")
            signature = {"O": f"*{t}", "DO": f"*{t}", "DELTA": "*fp32", "rows": "i32", "heads": "i32",
                         **dict.fromkeys(strides, "i32"), "HEAD_DIM": "constexpr", "ROWS": "constexpr"}  # fmt: skip
            labels = {"op": "attention delta", "dtype": t, "head_dim": head_dim}
            found.append(Launch(module, "_attention_delta_kernel", signature,
                                {"HEAD_DIM": head_dim, "ROWS": delta_rows(head_dim)}, ("O", "DO", "DELTA", *strides),
                                4, 1, labels))  # fmt: skip
    return found


RMSNORM_WIDTHS = (1024, 2560, 4096)  # the 0.6B, 4B and 8B hidden sizes
RMSNORM_HEAD_DIMS = (64, 128, 256)
RMSNORM_ARCHS = (80, 90)


def rmsnorm_launches(arch: int) -> list[Launch]:
    """Every compiled form the RMSNorm wrappers launch (forward and backward) for the Qwen3 widths and head dims, in
    every dtype, on sm_80 and sm_90 only: the launch settings do not depend on the architecture, and with no tensor
    cores and at most 4 KB of shared memory and 90 of 255 registers (forward: benchmarks/results/kernels-aot.md) no
    architecture is near a limit."""
    import triton

    from .rmsnorm import _row_settings

    if arch not in RMSNORM_ARCHS:
        return []
    module, found = "qwen3_embed.kernels.rmsnorm", []
    for t in ("fp16", "bf16", "fp32"):
        for block in sorted({triton.next_power_of_2(width) for width in RMSNORM_WIDTHS}):  # 2560, 4096: one block
            rows, warps = _row_settings(block)
            signature = {"X": f"*{t}", "Y": f"*{t}", "W": f"*{t}", "rows": "i32", "n": "i32", "stride_x": "i32",
                         "stride_y": "i32", "eps": "fp32", "ROWS": "constexpr", "BLOCK": "constexpr"}  # fmt: skip
            aligned = ("X", "Y", "W", "n", "stride_x", "stride_y")
            labels = {"op": "rms_norm", "dtype": t, "BLOCK": block}
            found.append(Launch(module, "_rms_norm_kernel", signature, {"ROWS": rows, "BLOCK": block}, aligned,
                                warps, 3, labels))  # fmt: skip
            signature = {"DY": f"*{t}", "X": f"*{t}", "W": f"*{t}", "DX": f"*{t}", "DW": "*fp32", "rows": "i32",
                         "n": "i32", "stride_dy": "i32", "stride_x": "i32", "stride_dx": "i32", "eps": "fp32",
                         "ROWS": "constexpr", "BLOCK": "constexpr"}  # fmt: skip
            aligned = ("DY", "X", "W", "DX", "DW", "n", "stride_dy", "stride_x", "stride_dx")
            found.append(Launch(module, "_rms_norm_backward_kernel", signature, {"ROWS": rows, "BLOCK": block},
                                aligned, warps, 3, {**labels, "op": "rms_norm backward"}))  # fmt: skip
        for head_dim in RMSNORM_HEAD_DIMS:
            half = triton.next_power_of_2(head_dim // 2)
            rows, warps = _row_settings(half)
            pointers = ("Q", "K", "QW", "KW", "QY", "KY", "COS", "SIN")
            integers = ("tokens", "q_heads", "k_heads", "n", "stride_qt", "stride_qh", "stride_kt", "stride_kh",
                        "stride_rope")  # fmt: skip
            signature = {**dict.fromkeys(pointers, f"*{t}"), **dict.fromkeys(integers, "i32"), "eps": "fp32",
                         "ROWS": "constexpr", "HALF": "constexpr"}  # fmt: skip
            aligned = (*pointers, *integers[3:])
            labels = {"op": "q/k norm + rope", "dtype": t, "head_dim": head_dim}
            found.append(Launch(module, "_qk_norm_rope_kernel", signature, {"ROWS": rows, "HALF": half}, aligned,
                                warps, 3, labels))  # fmt: skip
            pointers = ("Q", "K", "QW", "KW", "DQO", "DKO", "DQ", "DK")
            integers = ("tokens", "q_heads", "k_heads", "n", "q_programs", "stride_qt", "stride_qh", "stride_kt",
                        "stride_kh", "stride_rope")  # fmt: skip
            signature = {**dict.fromkeys(pointers, f"*{t}"), "DQW": "*fp32", "DKW": "*fp32", "COS": f"*{t}",
                         "SIN": f"*{t}", **dict.fromkeys(integers, "i32"), "eps": "fp32", "ROWS": "constexpr",
                         "HALF": "constexpr"}  # fmt: skip
            aligned = (*pointers, "DQW", "DKW", "COS", "SIN", "n", *integers[5:])
            found.append(Launch(module, "_qk_norm_rope_backward_kernel", signature, {"ROWS": rows, "HALF": half},
                                aligned, warps, 3, {**labels, "op": "q/k norm + rope backward"}))  # fmt: skip
    return found


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
