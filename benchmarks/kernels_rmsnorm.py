"""GB/s of the Triton RMSNorm kernels and of the PyTorch reference, against the card's measured copy bandwidth.

RMSNorm on hidden 1024, 2560, 4096 (the 0.6B, 4B, 8B widths), and the per-head q/k norm with RoPE of q
[tokens, 16, 128] and k [tokens, 8, 128] in one launch, in bf16, against the model's PyTorch reference
(`RMSNorm`, and `Attention.norm_and_rotate`: RMSNorm then `apply_rotary`). Bytes are the ones each op must move
(inputs read once, outputs written once); each kernel is checked against the reference before it is timed.

    python benchmarks/kernels_rmsnorm.py            # CUDA
    python benchmarks/kernels_rmsnorm.py --smoke    # tiny sizes on CPU through Triton's interpreter: a plumbing check
"""

from __future__ import annotations

import torch

from common import bench_seconds, copy_bandwidth, kernel_benchmark_main, machine, markdown_table


def cases(smoke: bool):
    """(op, width, tokens) to measure."""
    widths, tokens = ((64,), (8,)) if smoke else ((1024, 2560, 4096), (16384, 65536))
    for w in widths:
        for t in tokens:
            yield "rms_norm", w, t
    for t in tokens:
        yield "q/k norm + rope", 16 if smoke else 128, t


def run(op: str, width: int, tokens: int, dtype: torch.dtype, device: str):
    # imported here, after --smoke has chosen Triton's interpreter
    from qwen3_embed.kernels import rmsnorm
    from qwen3_embed.model import RMSNorm, apply_rotary

    g = torch.Generator(device=device).manual_seed(0)
    size = dtype.itemsize
    norm = RMSNorm(width, 1e-6).to(device, dtype)
    norm.weight.data = torch.rand(width, device=device, generator=g).to(dtype) + 0.5
    if op == "q/k norm + rope":
        q, k = (torch.randn(tokens, h, width, device=device, generator=g).to(dtype) for h in (16, 8))
        angles = torch.rand(tokens, width // 2, device=device, generator=g) * 100
        cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
        kernel = lambda: rmsnorm.qk_norm_rope(q, k, norm.weight, norm.weight, 1e-6, cos, sin)  # noqa: E731
        reference = lambda: (apply_rotary(norm(q), cos, sin), apply_rotary(norm(k), cos, sin))  # noqa: E731
        moved = (2 * q.numel() + 2 * k.numel() + 2 * cos.numel()) * size
    else:
        x = torch.randn(tokens, width, device=device, generator=g).to(dtype)
        kernel = lambda: (rmsnorm.rms_norm(x, norm.weight, 1e-6),)  # noqa: E731
        reference = lambda: (norm(x),)  # noqa: E731
        moved = 2 * x.numel() * size
    with torch.inference_mode():
        error = max((a.float() - b.float()).abs().max().item() for a, b in zip(kernel(), reference()))
        kernel_s = bench_seconds(kernel, device, repeats=1)  # CPU only in a smoke run
        torch_s = bench_seconds(reference, device, repeats=1)
    return {
        "op": op,
        "width": width,
        "tokens": tokens,
        "bytes": moved,
        "max_abs_diff_vs_torch": error,
        "kernel_gbps": moved / kernel_s / 1e9,
        "torch_gbps": moved / torch_s / 1e9,
        "speedup": torch_s / kernel_s,
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
