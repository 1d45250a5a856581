"""The hot ops, one entry each, with their PyTorch references.

Each op runs a Triton kernel from `qwen3_embed.kernels` on CUDA tensors when Triton is installed, and its PyTorch
reference everywhere else. `QWEN3_EMBED_BACKEND=torch|triton` (or the `backend` argument, for tests and
benchmarks) forces one; the Triton backend runs on CPU tensors only under Triton's interpreter (`TRITON_INTERPRET=1`).
Attention takes an `AttentionPlan`: the batch's sequence layout, checked once per batch, with whatever a backend
derives from it once (the kernel's work table) kept for every layer.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from functools import cache

import torch
import torch.nn.functional as F

from .checks import check_cu_seqlens, check_offsets

BACKENDS = ("torch", "triton")


@cache
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def backend_for(x: torch.Tensor, backend: str | None = None) -> str:
    """The backend an op runs on x with: the argument, else $QWEN3_EMBED_BACKEND, else by device."""
    choice = backend or os.environ.get("QWEN3_EMBED_BACKEND") or "auto"
    if choice == "auto":
        return "triton" if x.is_cuda and triton_available() else "torch"
    if choice not in BACKENDS:
        raise ValueError(f"backend {choice!r} is not one of auto, {', '.join(BACKENDS)}")
    if choice == "triton":
        if not triton_available():
            raise RuntimeError("the Triton backend was asked for, but triton is not installed")
        if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError("the Triton backend needs CUDA tensors, or TRITON_INTERPRET=1 to run on the CPU")
    return choice


def _kernels(name: str):
    return importlib.import_module(f"qwen3_embed.kernels.{name}")


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    residual: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm over the last dim: statistics in float32, normalize, cast to x's dtype, then scale by weight.

    With `residual`, first forms `x + residual` and returns `(norm(x + residual), x + residual)`.
    """
    if backend_for(x, backend) == "triton":
        return _kernels("rmsnorm").rms_norm(x, weight, eps, residual)
    if residual is not None:
        x = x + residual
        return rms_norm_reference(x, weight, eps), x
    return rms_norm_reference(x, weight, eps)


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [T, in] @ weight.T: oneDNN's kernel for a weight packed by `pack_linear_weight`, else F.linear. Where oneDNN
    runs it on the CPU (a packed weight, or bfloat16), T is padded to `padded_rows(T)`: oneDNN builds and keeps a
    kernel per row count, and the memory of one per token count grows without bound (measured). Compiled code
    (`Qwen3Model.compile_layers`, plain weights) is left to the compiler: padding there measured 1.4x slower."""
    if x.device.type != "cpu" or not (weight.is_mkldnn or x.dtype == torch.bfloat16) or torch.compiler.is_compiling():
        return F.linear(x, weight)
    rows = x.shape[0]
    if padded_rows(rows) != rows:  # F.pad copies even when it adds nothing
        x = F.pad(x, (0, 0, 0, padded_rows(rows) - rows))
    if weight.is_mkldnn:
        return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")[:rows]
    return F.linear(x, weight)[:rows]


def padded_rows(rows: int) -> int:
    """`rows` rounded up to one of 8 steps per power of two (multiples of 8 at least): at most 1/8 more rows, and
    about 8 row counts per doubling of the batch."""
    step = max(8, 1 << max(0, rows.bit_length() - 4))
    return -(-rows // step) * step


def pack_linear_weight(weight: torch.Tensor) -> torch.Tensor:
    """A CPU weight [out, in] in oneDNN's blocked layout for `linear` (float32 or bfloat16), packed once instead of
    at every call; any other weight, or where this torch or CPU lacks oneDNN's kernel for its dtype, as it is."""
    if weight.is_mkldnn or weight.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return weight
    bf16 = weight.dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if weight.dtype != torch.float32 and not bf16:
        return weight
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)


def unpacked(weight: torch.Tensor) -> torch.Tensor:
    """A weight packed by `pack_linear_weight` back in the plain layout (others as they are)."""
    return weight.to_dense() if weight.is_mkldnn else weight


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def qk_norm_rope(
    q: torch.Tensor,
    k: torch.Tensor,
    q_weight: torch.Tensor,
    k_weight: torch.Tensor,
    eps: float,
    cos: torch.Tensor,
    sin: torch.Tensor,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm of each query and key head, then RoPE: q [T, Hq, D], k [T, Hkv, D], weights [D], cos and sin
    [T, D/2] (in q's dtype) -> (q, k); one kernel launch for both."""
    if backend_for(q, backend) == "triton":
        return _kernels("rmsnorm").qk_norm_rope(q, k, q_weight, k_weight, eps, cos, sin)
    return (
        apply_rotary(rms_norm_reference(q, q_weight, eps), cos, sin),
        apply_rotary(rms_norm_reference(k, k_weight, eps), cos, sin),
    )


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE, x [T, H, D] with cos, sin [T, D/2]: bit for bit transformers' `x*cos + rotate_half(x)*sin`."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos[:, None, :], sin[:, None, :]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class AttentionPlan:
    """A packed batch's sequence layout for attention, checked once per batch and shared by every layer.

    Backend-neutral: `cu_seqlens` [B+1] int32 on the tokens' device, `bounds` (the same offsets on the host, for
    the torch backend), and `prepared(key, build)`, which keeps what a backend derives from them once per batch (the
    Triton kernel's work table). The offsets' values are checked on the host: `bounds`, when the
    caller has them there (where the batch was packed), else read from `cu_seqlens` (a device sync on a GPU).
    `check=False` skips the check: for a CUDA graph, whose replays must not sync.
    """

    def __init__(
        self,
        cu_seqlens: torch.Tensor,
        tokens: int,
        device: torch.device,
        check: bool = True,
        bounds: list[int] | None = None,
    ):
        check_cu_seqlens(cu_seqlens, tokens, device, values=False)
        if bounds is None and check:
            bounds = cu_seqlens.tolist()
        if bounds is not None:
            check_offsets(bounds, tokens, len(cu_seqlens))
        self._bounds = bounds
        self.cu_seqlens = cu_seqlens
        self.tokens = tokens
        self._prepared: dict = {}

    @property
    def bounds(self) -> list[int]:
        """The offsets on the host (read once: a device sync when they were not checked)."""
        if self._bounds is None:
            self._bounds = self.cu_seqlens.tolist()
        return self._bounds

    def prepared(self, key, build):
        """build(), made once per plan under `key`."""
        if key not in self._prepared:
            self._prepared[key] = build()
        return self._prepared[key]


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: AttentionPlan,
    scale: float,
    backend: str | None = None,
) -> torch.Tensor:
    """Causal grouped-query attention within each packed sequence of `plan`.

    q [T, Hq, D], k and v [T, Hkv, D] -> [T, Hq, D]; query head h reads key/value head h // (Hq / Hkv). On the
    Triton backend, float32 on a GPU (and any GPU before sm_80) runs the reference, SDPA: the kernel has no config
    there (`qwen3_embed.kernels.attention.configs`).
    """
    if backend_for(q, backend) == "triton":
        kernel = _kernels("attention")
        d, group, capability = q.shape[2], q.shape[1] // max(1, k.shape[1]), kernel.capability_of(q.device)
        if kernel.configs(d, group, q.dtype, capability):
            per_block = kernel.tokens_per_block(d, group, q.dtype, capability)
            work = plan.prepared(("triton work table", per_block),
                                 lambda: kernel.work_table(plan.cu_seqlens, plan.tokens, per_block))  # fmt: skip
            return kernel.varlen_attention(q, k, v, plan.cu_seqlens, scale, work=work)
    return _per_sequence(q, k, v, plan, scale)


def _per_sequence(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: AttentionPlan, scale: float) -> torch.Tensor:
    return varlen_attention_reference(q, k, v, plan.bounds, scale)


def attention_eager_when_compiled() -> None:
    """Make the per-sequence attention run eagerly inside compiled code (its calls follow the batch's lengths, read
    on the host). Called by `Qwen3Model.compile_layers`, so that importing this module never imports the compiler
    (about 1 s)."""
    global _per_sequence
    if not hasattr(_per_sequence, "_torchdynamo_disable"):
        _per_sequence = torch.compiler.disable(_per_sequence)


def causal_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """SDPA's causal attention of [B, H, L, D] inputs with grouped-query heads. For float32 on CUDA the key/value
    heads are repeated: SDPA's kernel for float32 (memory-efficient) takes no GQA, and the math one it would fall
    back to is quadratic in memory."""
    repeat = q.shape[1] // k.shape[1] if q.is_cuda and q.dtype == torch.float32 else 1
    if repeat > 1:
        k, v = k.repeat_interleave(repeat, 1), v.repeat_interleave(repeat, 1)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=repeat == 1)


def varlen_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bounds: list[int], scale: float
) -> torch.Tensor:
    """SDPA's fused causal attention, one sequence at a time (host offsets `bounds`): memory stays linear in the
    sequence length. The torch backend, and the oracle of the kernels. On the CPU one call per sequence measured
    faster than one call per batch (padded groups, flex_attention with a document mask, one masked call:
    benchmarks/attention_cpu.py)."""
    out = torch.empty_like(q)
    for start, end in zip(bounds[:-1], bounds[1:]):
        qs, ks, vs = (t[start:end].transpose(0, 1).unsqueeze(0) for t in (q, k, v))  # [1, H, L, D]
        out[start:end] = causal_sdpa(qs, ks, vs, scale)[0].transpose(0, 1)
    return out
