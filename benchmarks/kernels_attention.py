"""TFLOP/s of the Triton varlen attention kernel against every other varlen attention at hand, on the same work,
bf16, head_dim 128.

The peers: SDPA (flash backend on CUDA) run on each sequence alone and on the batch right-padded (exact for causal
attention on the real rows); PyTorch's own varlen attention (`torch.nn.attention.varlen.varlen_attn`, causal through
its window, where the installed torch has it; CUDA only); FlexAttention with a document mask (compiled, the block
mask built once per pack, outside the timing); flash-attn's `flash_attn_varlen_func` (where it is installed; CUDA
only). A peer that cannot run here is listed with the reason. Packs:
- Embedding-like: lengths mixed between 32 and 2048 tokens, Hq 16 or 32, Hkv 8.
- Equal lengths (no padding to waste).
- Long sequences of 8k and 32k tokens.
FLOPs are causal: 2 x L^2 x Hq x D per sequence (QK^T and PV over the lower triangle). The kernel, each experimental
variant the device runs (`qwen3_embed.kernels.experimental.attention.variants`) and each peer are checked against
per-sequence SDPA before they are timed; the config autotune chose for each variant is recorded, and each case names
its strongest peer.

    python benchmarks/kernels_attention.py            # CUDA
    python benchmarks/kernels_attention.py --smoke    # tiny sizes on CPU through Triton's interpreter: a plumbing check
"""

from __future__ import annotations

import functools
import inspect

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from common import bench_seconds, kernel_benchmark_main, log_uniform_lengths, machine, markdown_table


def cases(smoke: bool):
    """(name, lengths, Hq, Hkv)."""
    if smoke:
        yield "mixed", [5, 17, 40], 4, 2
        return
    mixed = log_uniform_lengths(64, 32, 2048, seed=1)
    yield "mixed 32-2048", mixed, 16, 8
    yield "mixed 32-2048", mixed, 32, 8
    yield "equal 8 x 2048", [2048] * 8, 16, 8
    yield "equal 8 x 2048", [2048] * 8, 32, 8
    yield "long 2 x 8k", [8192] * 2, 32, 8
    yield "long 32k", [32768], 32, 8


def per_sequence_sdpa(q, k, v, lengths, scale):
    """SDPA (flash on CUDA) on each sequence alone, GQA native: what a padding-free pipeline without a varlen kernel
    runs."""
    out = torch.empty_like(q)
    start = 0
    for n in lengths:
        qs, ks, vs = (x[start : start + n].transpose(0, 1)[None] for x in (q, k, v))
        out[start : start + n] = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale,
                                                                enable_gqa=True)[0].transpose(0, 1)  # fmt: skip
        start += n
    return out


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


@functools.cache
def compiled_flex_attention():
    """flex_attention under torch.compile (a compile per pack shape), made on first use."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def flex_attention_call(q, k, v, lengths, scale):
    """FlexAttention over the pack as one sequence of [1, H, T, D], with a causal document mask (built here)."""
    from torch.nn.attention.flex_attention import create_block_mask

    t = q.shape[0]
    sequence = torch.repeat_interleave(
        torch.arange(len(lengths), device=q.device), torch.tensor(lengths, device=q.device)
    )
    mask = create_block_mask(lambda b, h, i, j: (sequence[i] == sequence[j]) & (i >= j), None, None, t, t,
                             device=q.device)  # fmt: skip
    qs, ks, vs = (x.transpose(0, 1).unsqueeze(0).contiguous() for x in (q, k, v))
    flex = compiled_flex_attention()
    return lambda: flex(qs, ks, vs, block_mask=mask, scale=scale, enable_gqa=True)[0].transpose(0, 1)


def torch_varlen_call(q, k, v, cu, lengths, scale):
    """torch.nn.attention.varlen.varlen_attn, causal, as the installed torch's signature takes it (K/V heads repeated
    beforehand where it takes no GQA)."""
    from torch.nn.attention.varlen import varlen_attn

    params = inspect.signature(varlen_attn).parameters
    options = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
    if "scale" in params:
        options["scale"] = scale
    if "enable_gqa" in params:
        options["enable_gqa"] = True
    else:
        k, v = (x.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for x in (k, v))
    longest = max(lengths)
    return lambda: varlen_attn(q, k, v, cu, cu, longest, longest, **options)


def peers(q, k, v, cu, lengths, scale) -> tuple[dict, dict[str, str]]:
    """The other varlen attentions on this pack: name -> call, and name -> why it cannot run here."""
    calls, missing = {}, {}
    try:
        import torch.nn.attention.varlen  # noqa: F401
    except ImportError:
        missing["PyTorch varlen_attn"] = f"torch {torch.__version__} has no torch.nn.attention.varlen"
    else:
        if q.device.type == "cuda":
            calls["PyTorch varlen_attn"] = torch_varlen_call(q, k, v, cu, lengths, scale)
        else:
            missing["PyTorch varlen_attn"] = "CUDA only: a FlashAttention kernel"
    calls["FlexAttention, document mask"] = flex_attention_call(q, k, v, lengths, scale)
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        missing["flash-attn varlen"] = "not installed: pip install flash-attn"
    else:
        if q.device.type == "cuda":
            longest = max(lengths)
            calls["flash-attn varlen"] = lambda: flash_attn_varlen_func(q, k, v, cu, cu, longest, longest,
                                                                        softmax_scale=scale, causal=True)  # fmt: skip
        else:
            missing["flash-attn varlen"] = "CUDA only"
    return calls, missing


def timed_checked(calls: dict, reference, device: str, errors: dict, times: dict, failed: dict) -> None:
    """Check each call against the reference (its first call compiles or autotunes), then time it; a failure is
    recorded, and the others still run."""
    for name, call in calls.items():
        try:
            errors[name] = (call().float() - reference.float()).abs().max().item()
        except Exception as e:  # noqa: BLE001 - a system that fails on this device is a result
            failed[name] = f"{type(e).__name__}: {str(e)[:300]}"
            continue
        times[name] = bench_seconds(call, device, repeats=1)


def run(name, lengths, hq, hkv, dtype, device, d):
    # imported here, after --smoke has chosen Triton's interpreter
    from qwen3_embed.kernels import attention
    from qwen3_embed.kernels.experimental import attention as experimental

    g = torch.Generator(device=device).manual_seed(0)
    t = sum(lengths)
    q, k, v = (torch.randn(t, h, d, device=device, generator=g).to(dtype) for h in (hq, hkv, hkv))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
    scale = d**-0.5
    flops = sum(2 * n * n * hq * d for n in lengths)
    backend = SDPBackend.FLASH_ATTENTION if device == "cuda" else SDPBackend.MATH
    with sdpa_kernel(backend):
        reference = per_sequence_sdpa(q, k, v, lengths, scale)
        sdpa = functools.partial(per_sequence_sdpa, q, k, v, lengths, scale)
        times = {"per-sequence SDPA": bench_seconds(sdpa, device, repeats=1)}  # CPU (one call) only in a smoke run
        padded, unpad = padded_sdpa(q, k, v, lengths, scale)
        errors = {
            "per-sequence SDPA": 0.0,
            "padded SDPA": (unpad(padded()).float() - reference.float()).abs().max().item(),
        }
        times["padded SDPA"] = bench_seconds(padded, device, repeats=1)
    others, unavailable = peers(q, k, v, cu, lengths, scale)
    failed = {}
    timed_checked(others, reference, device, errors, times, failed)
    capability = attention.capability_of(q.device)
    work = attention.work_table(cu, t, attention.tokens_per_block(d, hq // hkv, dtype, capability))  # once per batch
    chosen = {}
    for variant in ["base", *experimental.variants(capability, d, dtype)]:
        if variant == "base":
            call = functools.partial(attention.varlen_attention, q, k, v, cu, scale, work=work)
        else:
            call = functools.partial(experimental.varlen_attention, q, k, v, cu, scale, variant, work=work)
        try:
            errors[variant] = (call().float() - reference.float()).abs().max().item()  # the first call autotunes
        except Exception as e:  # noqa: BLE001 - a variant that fails on this GPU is a result; the others still run
            chosen[variant] = f"{type(e).__name__}: {str(e)[:300]}"
            continue
        times[variant] = bench_seconds(call, device, repeats=1)
        chosen[variant] = attention.chosen_config(q, k, experimental.VARIANTS.get(variant, attention.BASE))
    return {"case": name, "tokens": t, "sequences": len(lengths), "hq": hq, "hkv": hkv, "head_dim": d,
            "max_abs_diff_vs_per_sequence_sdpa": errors, "chosen_config": chosen,
            "peers": ["per-sequence SDPA", "padded SDPA", *others], "peers_failed": failed,
            "peers_unavailable": unavailable, "tflops": {key: flops / s / 1e12 for key, s in times.items()},
            "seconds": times}  # fmt: skip


def strongest_peer(run: dict) -> str | None:
    """The fastest peer a case timed."""
    timed = [p for p in run["peers"] if p in run["tflops"]]
    return max(timed, key=run["tflops"].get) if timed else None


def variants_timed(run: dict) -> list[str]:
    """The kernel variants a case timed."""
    return [v for v in run["chosen_config"] if v in run["tflops"]]


def benchmark(device: str, dtype: torch.dtype, smoke: bool = False) -> tuple[dict, str]:
    """Every case, checked then timed: the results and a markdown table (one row per kernel variant and peer)."""
    d = 64 if smoke else 128
    m = machine()
    results = {"machine": m, "dtype": str(dtype), "runs": []}
    rows, unavailable = [], {}
    for name, lengths, hq, hkv in cases(smoke):
        r = run(name, lengths, hq, hkv, dtype, device, d)
        results["runs"].append(r)
        unavailable |= r["peers_unavailable"]
        tf, errors = r["tflops"], r["max_abs_diff_vs_per_sequence_sdpa"]
        kernel = max((tf[v] for v in variants_timed(r)), default=None)
        strongest = strongest_peer(r)
        head = f"| {name} | {r['tokens']} | {hq}/{hkv} |"
        for variant, config in r["chosen_config"].items():
            if variant not in tf:  # it failed: say how
                rows.append(f"{head} kernel {variant}: FAILED {config} | | | |")
                continue
            c = "/".join(str(config[k]) for k in ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages")) if config else "?"
            rows.append(f"{head} kernel {variant} ({c}) | {tf[variant]:.1f} | - | {errors[variant]:.2g} |")
        for peer in r["peers"]:
            if peer in r["peers_failed"]:
                rows.append(f"{head} {peer}: FAILED {r['peers_failed'][peer]} | | | |")
                continue
            label = peer + (" (strongest)" if peer == strongest else "")
            versus = f"{kernel / tf[peer]:.2f}x" if kernel else "-"
            rows.append(f"{head} {label} | {tf[peer]:.1f} | {versus} | {errors[peer]:.2g} |")
        for row in rows[-len(r["chosen_config"]) - len(r["peers"]) :]:
            print(row, flush=True)
    results["peers_unavailable"] = unavailable
    table = markdown_table(
        f"Varlen causal attention, {dtype}, head_dim {d}, on {m.get('gpu', m['cpu'])} (causal TFLOP/s; the best "
        "kernel variant's speed-up over each peer). Kernel variants with the config autotune chose "
        "(BLOCK_M/BLOCK_N/warps/stages; autotune keys on the head dim and a token-count bucket, so the cases of one "
        "bucket run the choice made on its first); the work table and FlexAttention's block mask are built once per "
        "batch, outside the timing, as the model builds its table"
        + (" [smoke run: interpreter, tiny sizes, timings meaningless]" if smoke else "")
        + "".join(f"; {peer}: not run ({why})" for peer, why in unavailable.items()),
        ["case", "tokens", "Hq/Hkv", "system", "TFLOP/s", "kernel vs it", "max diff vs per-sequence SDPA"],
        rows,
    )  # fmt: skip
    return results, table


def backward_cases(smoke: bool):
    """(name, lengths, Hq, Hkv) of the backward's timings: the 0.6B's heads on a mixed pack, the 8B's on long ones."""
    if smoke:
        yield "mixed", [5, 17, 40], 4, 2
        return
    yield "mixed 32-2048", log_uniform_lengths(64, 32, 2048, seed=1), 16, 8
    yield "long 2 x 8k", [8192] * 2, 32, 8


def run_backward(name, lengths, hq, hkv, dtype, device, d):
    """The gradients of q, k, v through the kernels (forward saving the log-sum-exp, then the backward kernels)
    against SDPA's per sequence (flash on CUDA: FlashAttention-2's backward), checked then timed (the backward
    alone, from a kept graph)."""
    from qwen3_embed.kernels import attention

    g = torch.Generator(device=device).manual_seed(0)
    t = sum(lengths)
    q, k, v, do = (torch.randn(t, h, d, device=device, generator=g).to(dtype) for h in (hq, hkv, hkv, hq))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
    scale = d**-0.5
    flops = 2.5 * sum(2 * n * n * hq * d for n in lengths)  # 5 matmuls to the forward's 2, over the lower triangle
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    backend = SDPBackend.FLASH_ATTENTION if device == "cuda" else SDPBackend.MATH
    with sdpa_kernel(backend):
        out = per_sequence_sdpa(*leaves, lengths, scale)
        reference = torch.autograd.grad(out, leaves, do, retain_graph=True)
        times = {"per-sequence SDPA": bench_seconds(lambda: torch.autograd.grad(out, leaves, do, retain_graph=True),
                                                    device, repeats=1)}  # fmt: skip
    out = attention.varlen_attention(*leaves, cu, scale)
    grads = torch.autograd.grad(out, leaves, do, retain_graph=True)
    errors = {name: (a.float() - b.float()).abs().max().item() for name, a, b in zip("qkv", grads, reference)}
    times["kernel"] = bench_seconds(lambda: torch.autograd.grad(out, leaves, do, retain_graph=True), device, repeats=1)
    config = attention.backward_configs(d, hq // hkv, dtype, attention.capability_of(q.device))
    return {"case": name, "tokens": t, "sequences": len(lengths), "hq": hq, "hkv": hkv, "head_dim": d,
            "max_abs_diff_vs_per_sequence_sdpa": errors, "config": config,
            "tflops": {key: flops / s / 1e12 for key, s in times.items()}, "seconds": times}  # fmt: skip


def backward_benchmark(device: str, dtype: torch.dtype, smoke: bool = False) -> tuple[dict, str]:
    """Every backward case, checked then timed: the results and a markdown table."""
    d = 64 if smoke else 128
    m = machine()
    results = {"machine": m, "dtype": str(dtype), "runs": []}
    rows = []
    for name, lengths, hq, hkv in backward_cases(smoke):
        r = run_backward(name, lengths, hq, hkv, dtype, device, d)
        results["runs"].append(r)
        tf, diff = r["tflops"], r["max_abs_diff_vs_per_sequence_sdpa"]
        rows.append(f"| {name} | {r['tokens']} | {hq}/{hkv} | {tf['kernel']:.1f} | {tf['per-sequence SDPA']:.1f} "
                    f"({tf['kernel'] / tf['per-sequence SDPA']:.2f}x) | {max(diff.values()):.2g} |")  # fmt: skip
        print(rows[-1], flush=True)
    table = markdown_table(
        f"Varlen causal attention backward (dQ, dK, dV from a kept graph), {dtype}, head_dim {d}, on "
        f"{m.get('gpu', m['cpu'])} (TFLOP/s at 2.5x the causal forward's FLOPs; x = kernel speed-up)"
        + (" [smoke run: interpreter, tiny sizes, timings meaningless]" if smoke else ""),
        ["case", "tokens", "Hq/Hkv", "kernel", "per-sequence SDPA backward (CUDA: flash)", "max grad diff vs SDPA"],
        rows,
    )  # fmt: skip
    return results, table


def main() -> None:
    kernel_benchmark_main(__doc__, benchmark, "kernels_attention")


if __name__ == "__main__":
    main()
