"""GB/s of the Triton RMSNorm kernels and of the PyTorch reference, against the card's measured copy bandwidth.

Plain RMSNorm and the fused residual add + RMSNorm on hidden 1024, 2560, 4096 (the 0.6B, 4B, 8B widths), and
the per-head q/k norm with RoPE of q [tokens, 16, 128] and k [tokens, 8, 128] in one launch, in bf16. Bytes are
the ones each op must move (inputs read once, outputs written once); each kernel is checked against the reference
before it is timed.

    python benchmarks/kernels_rmsnorm.py            # CUDA
    python benchmarks/kernels_rmsnorm.py --smoke    # tiny sizes on CPU through Triton's interpreter: a plumbing check
"""

from __future__ import annotations

import torch

from common import bench_seconds, copy_bandwidth, kernel_benchmark_main, machine, markdown_table


def cases(smoke: bool):
    """(op, width, tokens) to measure."""
    widths, tokens = ((64,), (8,)) if smoke else ((1024, 2560, 4096), (16384, 65536))
    for op in ("rms_norm", "rms_norm + residual"):
        for w in widths:
            for t in tokens:
                yield op, w, t
    for t in tokens:
        yield "q/k norm + rope", 16 if smoke else 128, t


def run(op: str, width: int, tokens: int, dtype: torch.dtype, device: str):
    from qwen3_embed import ops  # imported here, after --smoke has chosen Triton's interpreter

    g = torch.Generator(device=device).manual_seed(0)
    size = dtype.itemsize
    if op == "q/k norm + rope":
        q, k = (torch.randn(tokens, h, width, device=device, generator=g).to(dtype) for h in (16, 8))
        w = torch.rand(width, device=device, generator=g).to(dtype) + 0.5
        angles = torch.rand(tokens, width // 2, device=device, generator=g) * 100
        cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
        args = (q, k, w, w, 1e-6, cos, sin)
        fn = ops.qk_norm_rope
        moved = (2 * q.numel() + 2 * k.numel() + 2 * cos.numel()) * size
    else:
        x = torch.randn(tokens, width, device=device, generator=g).to(dtype)
        w = torch.rand(width, device=device, generator=g).to(dtype) + 0.5
        residual = torch.randn(tokens, width, device=device, generator=g).to(dtype) if "residual" in op else None
        args = (x, w, 1e-6, residual)
        fn = ops.rms_norm
        moved = (4 if residual is not None else 2) * x.numel() * size
    ours, ref = fn(*args, backend="triton"), fn(*args, backend="torch")
    ours, ref = (ours, ref) if isinstance(ours, tuple) else ((ours,), (ref,))
    error = max((a.float() - b.float()).abs().max().item() for a, b in zip(ours, ref))
    kernel = bench_seconds(lambda: fn(*args, backend="triton"), device, repeats=1)  # CPU only in a smoke run
    torch_ref = bench_seconds(lambda: fn(*args, backend="torch"), device, repeats=1)
    return {
        "op": op,
        "width": width,
        "tokens": tokens,
        "bytes": moved,
        "max_abs_diff_vs_torch": error,
        "kernel_gbps": moved / kernel / 1e9,
        "torch_gbps": moved / torch_ref / 1e9,
        "speedup": torch_ref / kernel,
    }


def benchmark(device: str, dtype: torch.dtype, smoke: bool = False) -> tuple[dict, str]:
    """Every case, checked then timed: the results and a markdown table."""
    m = machine()
    copy = copy_bandwidth(device, smoke=smoke)
    rows = []
    results = {"machine": m, "dtype": str(dtype), "copy_gbps": copy, "runs": []}
    for op, width, tokens in cases(smoke):
        r = run(op, width, tokens, dtype, device)
        results["runs"].append(r)
        rows.append(f"| {op} | {width} | {tokens} | {r['kernel_gbps']:.0f} ({r['kernel_gbps'] / copy:.0%}) | "
                    f"{r['torch_gbps']:.0f} | {r['speedup']:.1f}x | {r['max_abs_diff_vs_torch']:.2g} |")  # fmt: skip
        print(rows[-1], flush=True)
    table = markdown_table(
        f"RMSNorm kernels, {dtype}, on {m.get('gpu', m['cpu'])}: copy bandwidth {copy:.0f} GB/s (device-to-device "
        "copy_)" + (" [smoke run: interpreter, tiny sizes, timings meaningless]" if smoke else ""),
        ["op", "width", "tokens", "kernel GB/s (of copy)", "torch GB/s", "speedup", "max abs diff vs torch"],
        rows,
    )  # fmt: skip
    return results, table


def main() -> None:
    kernel_benchmark_main(__doc__, benchmark, "kernels_rmsnorm")


if __name__ == "__main__":
    main()
