"""TFLOP/s of the Triton varlen attention kernel against PyTorch SDPA on the same work, bf16, head_dim 128.

- Embedding-like packs: lengths mixed between 32 and 2048 tokens, Hq 16 or 32, Hkv 8. Against SDPA on the padded
  batch (flash backend; right padding is exact for causal attention on the real rows) and per-sequence SDPA.
- Equal lengths (no padding to waste): the kernel against SDPA's flash backend on the same batch.
- Long sequences of 8k and 32k tokens.
FLOPs are causal: 2 x L^2 x Hq x D per sequence (QK^T and PV over the lower triangle). Each kernel output is
checked against SDPA before it is timed.

    python benchmarks/kernels_attention.py            # CUDA
    python benchmarks/kernels_attention.py --smoke    # tiny sizes on CPU through Triton's interpreter: a plumbing check
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from common import bench_seconds, kernel_benchmark_main, log_uniform_lengths, machine, markdown_table


def cases(smoke: bool):
    """(name, lengths, Hq, Hkv)."""
    if smoke:
        yield "mixed", [5, 17, 40], 4, 2
        yield "equal", [32, 32], 4, 2
        return
    mixed = log_uniform_lengths(64, 32, 2048, seed=1)
    yield "mixed 32-2048", mixed, 16, 8
    yield "mixed 32-2048", mixed, 32, 8
    yield "equal 8 x 2048", [2048] * 8, 16, 8
    yield "equal 8 x 2048", [2048] * 8, 32, 8
    yield "long 2 x 8k", [8192] * 2, 32, 8
    yield "long 32k", [32768], 32, 8


def padded_sdpa(q, k, v, lengths, scale):
    """SDPA on the batch right-padded to the longest sequence (what a padded pipeline runs), and a function that
    takes its output back to the packed rows."""
    b, longest = len(lengths), max(lengths)
    mask = torch.arange(longest, device=q.device)[None, :] < torch.tensor(lengths, device=q.device)[:, None]
    qp, kp, vp = (x.new_zeros(b, longest, *x.shape[1:]) for x in (q, k, v))
    for packed, padded in ((q, qp), (k, kp), (v, vp)):
        padded[mask] = packed
    qp, kp, vp = (x.transpose(1, 2) for x in (qp, kp, vp))  # [B, H, L, D]
    run = lambda: F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, scale=scale, enable_gqa=True)  # noqa: E731
    return run, lambda out: out.transpose(1, 2)[mask]


def run(name, lengths, hq, hkv, dtype, device, d):
    # imported here, after --smoke has chosen Triton's interpreter
    from qwen3_embed import ops
    from qwen3_embed.kernels.attention import varlen_attention

    g = torch.Generator(device=device).manual_seed(0)
    t = sum(lengths)
    q, k, v = (torch.randn(t, h, d, device=device, generator=g).to(dtype) for h in (hq, hkv, hkv))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
    scale = d**-0.5
    flops = sum(2 * n * n * hq * d for n in lengths)
    ours = varlen_attention(q, k, v, cu, scale)
    error = (ours.float() - ops.varlen_attention(q, k, v, cu, scale, backend="torch").float()).abs().max().item()
    times = {"kernel": bench_seconds(lambda: varlen_attention(q, k, v, cu, scale, check_offsets=False), device)}
    times["per-sequence SDPA"] = bench_seconds(
        lambda: ops.varlen_attention(q, k, v, cu, scale, backend="torch"), device
    )
    padded, unpad = padded_sdpa(q, k, v, lengths, scale)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION if device == "cuda" else SDPBackend.MATH):
        error = max(error, (ours.float() - unpad(padded()).float()).abs().max().item())
        times["padded SDPA"] = bench_seconds(padded, device)
    return {
        "case": name,
        "tokens": t,
        "sequences": len(lengths),
        "hq": hq,
        "hkv": hkv,
        "head_dim": d,
        "max_abs_diff_vs_sdpa": error,
        "tflops": {k: flops / s / 1e12 for k, s in times.items()},
        "seconds": times,
    }


def benchmark(device: str, dtype: torch.dtype, smoke: bool = False) -> tuple[dict, str]:
    """Every case, checked then timed: the results and a markdown table."""
    d = 64 if smoke else 128
    m = machine()
    results = {"machine": m, "dtype": str(dtype), "runs": []}
    rows = []
    for name, lengths, hq, hkv in cases(smoke):
        r = run(name, lengths, hq, hkv, dtype, device, d)
        results["runs"].append(r)
        tf = r["tflops"]
        padded, per_seq = tf["padded SDPA"], tf["per-sequence SDPA"]
        rows.append(f"| {name} | {r['tokens']} | {hq}/{hkv} | {tf['kernel']:.1f} | {padded:.1f} "
                    f"({tf['kernel'] / padded:.2f}x) | {per_seq:.1f} ({tf['kernel'] / per_seq:.2f}x) | "
                    f"{r['max_abs_diff_vs_sdpa']:.2g} |")  # fmt: skip
        print(rows[-1], flush=True)
    table = markdown_table(
        f"Varlen causal attention, {dtype}, head_dim {d}, on {m.get('gpu', m['cpu'])} (causal TFLOP/s; x = kernel "
        "speed-up)" + (" [smoke run: interpreter, tiny sizes, timings meaningless]" if smoke else ""),
        ["case", "tokens", "Hq/Hkv", "kernel", "padded SDPA (CUDA: flash)", "per-sequence SDPA", "max diff vs SDPA"],
        rows,
    )  # fmt: skip
    return results, table


def main() -> None:
    kernel_benchmark_main(__doc__, benchmark, "kernels_attention")


if __name__ == "__main__":
    main()
