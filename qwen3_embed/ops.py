"""Attention over a packed batch: the batch's sequence layout (`AttentionPlan`) and the PyTorch reference of varlen
causal grouped-query attention, which `Attention.attend` runs and the Triton kernel is checked against.

The model's other references sit in `qwen3_embed.model` itself (RMSNorm, RoPE); `qwen3_embed.backends.kernels`
holds the table of the Triton kernels that replace them on a GPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .checks import check_cu_seqlens, check_offsets


class AttentionPlan:
    """A packed batch's sequence layout for attention, checked once per batch and shared by every layer.

    `cu_seqlens` [B+1] int32 on the tokens' device, `bounds` (the same offsets on the host, for the reference), and
    `prepared(key, build)`, which keeps what a backend derives from them once per batch (the Triton kernel's work
    table). The offsets' values are checked on the host: `bounds`, when the caller has them there (where the batch
    was packed), else read from `cu_seqlens` (a device sync on a GPU). `check=False` skips the check: for a CUDA
    graph, whose replays must not sync.
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
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bounds: list[int], scale: float
) -> torch.Tensor:
    """Causal grouped-query attention within each packed sequence: q [T, Hq, D], k and v [T, Hkv, D] -> [T, Hq, D],
    query head h reading key/value head h // (Hq / Hkv); sequence b is rows bounds[b]:bounds[b+1] (host offsets).

    SDPA's fused causal attention, one sequence at a time, so memory stays linear in the sequence length. On the CPU
    one call per sequence measured faster than one call per batch (padded groups, flex_attention with a document
    mask, one masked call: benchmarks/attention_cpu.py)."""
    out = torch.empty_like(q)
    for start, end in zip(bounds[:-1], bounds[1:]):
        qs, ks, vs = (t[start:end].transpose(0, 1).unsqueeze(0) for t in (q, k, v))  # [1, H, L, D]
        out[start:end] = causal_sdpa(qs, ks, vs, scale)[0].transpose(0, 1)
    return out


def causal_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """SDPA's causal attention of [B, H, L, D] inputs with grouped-query heads. For float32 on CUDA the key/value
    heads are repeated: SDPA's kernel for float32 (memory-efficient) takes no GQA, and the math one it would fall
    back to is quadratic in memory."""
    repeat = q.shape[1] // k.shape[1] if q.is_cuda and q.dtype == torch.float32 else 1
    if repeat > 1:
        k, v = k.repeat_interleave(repeat, 1), v.repeat_interleave(repeat, 1)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=repeat == 1)
