"""The hot ops, one entry each. PyTorch references here; the Triton kernels in `qwen3_embed.kernels` plug in
behind the same signatures."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim: statistics in float32, normalize, cast to x's dtype, then scale by weight."""
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def varlen_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, scale: float
) -> torch.Tensor:
    """Causal grouped-query attention within each packed sequence.

    q [T, Hq, D], k and v [T, Hkv, D], cu_seqlens [B+1] (sequence b is rows cu_seqlens[b]:cu_seqlens[b+1])
    -> [T, Hq, D]. Memory stays linear in the sequence length (SDPA's fused causal kernels).
    """
    out = torch.empty_like(q)
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        # [1, H, L, D] per sequence; SDPA maps q head h to kv head h // (Hq / Hkv)
        qs, ks, vs = (t[start:end].transpose(0, 1).unsqueeze(0) for t in (q, k, v))
        o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale, enable_gqa=True)
        out[start:end] = o[0].transpose(0, 1)
    return out
