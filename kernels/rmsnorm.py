"""Fused RMSNorm in Triton: plain rows, with the residual add of a decoder layer, and per head with RoPE.

One kernel serves the three uses. Each program normalizes `ROWS` rows of width `n` (one wide hidden-state row,
or several 128-wide head rows) in the reference order: statistics in float32, normalize, cast to the input
dtype, then multiply by the weight (rounded to the input dtype, as PyTorch's 16-bit multiply). With a residual,
it first forms `x + residual` rounded to the input dtype, writes it as the new residual and normalizes it, so a
layer reads its hidden state once. With RoPE (per-head norm only), the normalized row is rotated by its token's
angles, `[x1*cos - x2*sin, x2*cos + x1*sin]` with each product rounded as PyTorch rounds it.

The PyTorch references are `qwen3_embed.ops.rms_norm` and `qwen3_embed.ops.rms_norm_rope`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _rms_norm_kernel(
    X,  # [rows, n] input
    R,  # [rows, n] residual to add first (HAS_RESIDUAL)
    Y,  # [rows, n] output
    R_OUT,  # [rows, n] x + residual (HAS_RESIDUAL)
    W,  # [n] weight
    COS,  # [rows // heads, n // 2] RoPE angles per token (HAS_ROPE)
    SIN,
    rows,
    n,
    heads,  # rows per token, to find a head row's token (HAS_ROPE)
    stride_x,
    stride_r,
    stride_y,
    stride_ro,
    stride_rope,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    HAS_ROPE: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,  # >= n, or >= n // 2 with RoPE (each half is one block)
):
    dtype = Y.dtype.element_ty
    row = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)[:, None]  # [ROWS, 1]
    col = tl.arange(0, BLOCK)[None, :]  # [1, BLOCK]
    row_ok = row < rows
    if HAS_ROPE:
        half = n // 2
        mask = row_ok & (col < half)
        x1 = tl.load(X + row * stride_x + col, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(X + row * stride_x + half + col, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.rsqrt((tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1)) / n + eps)[:, None]
        w1 = tl.load(W + col, mask=col < half, other=0.0).to(tl.float32)
        w2 = tl.load(W + half + col, mask=col < half, other=0.0).to(tl.float32)
        y1 = ((x1 * rstd).to(dtype).to(tl.float32) * w1).to(dtype).to(tl.float32)
        y2 = ((x2 * rstd).to(dtype).to(tl.float32) * w2).to(dtype).to(tl.float32)
        token = row // heads
        cos = tl.load(COS + token * stride_rope + col, mask=mask, other=0.0).to(tl.float32)
        sin = tl.load(SIN + token * stride_rope + col, mask=mask, other=0.0).to(tl.float32)
        a1 = (y1 * cos).to(dtype).to(tl.float32)
        b1 = (y2 * sin).to(dtype).to(tl.float32)
        a2 = (y2 * cos).to(dtype).to(tl.float32)
        b2 = (y1 * sin).to(dtype).to(tl.float32)
        tl.store(Y + row * stride_y + col, (a1 - b1).to(dtype), mask=mask)
        tl.store(Y + row * stride_y + half + col, (a2 + b2).to(dtype), mask=mask)
    else:
        mask = row_ok & (col < n)
        x = tl.load(X + row * stride_x + col, mask=mask, other=0.0).to(tl.float32)
        if HAS_RESIDUAL:
            r = tl.load(R + row * stride_r + col, mask=mask, other=0.0).to(tl.float32)
            x = (x + r).to(dtype)
            tl.store(R_OUT + row * stride_ro + col, x, mask=mask)
            x = x.to(tl.float32)
        rstd = tl.rsqrt(tl.sum(x * x, axis=1) / n + eps)[:, None]
        w = tl.load(W + col, mask=col < n, other=0.0).to(tl.float32)
        y = (x * rstd).to(dtype).to(tl.float32) * w
        tl.store(Y + row * stride_y + col, y.to(dtype), mask=mask)


def _rows(t: torch.Tensor, name: str, n: int) -> torch.Tensor:
    """t as a [rows, n] view with unit column stride, or a clear error."""
    if t.shape[-1] != n:
        raise ValueError(f"{name} has last dimension {t.shape[-1]}, expected {n}")
    if t.stride(-1) != 1:
        raise ValueError(f"{name} must have a contiguous last dimension (stride {t.stride(-1)})")
    try:
        return t.view(-1, n)
    except RuntimeError:
        raise ValueError(f"{name} of shape {list(t.shape)} and strides {t.stride()} cannot be seen as rows") from None


def _check(x: torch.Tensor, weight: torch.Tensor) -> None:
    if x.dtype not in DTYPES:
        raise ValueError(f"x has dtype {x.dtype}; the kernel takes float32, float16 or bfloat16")
    if weight.dtype != x.dtype or weight.device != x.device:
        raise ValueError(f"weight is {weight.dtype} on {weight.device}, x is {x.dtype} on {x.device}: they must match")
    if weight.dim() != 1 or weight.shape[0] != x.shape[-1]:
        raise ValueError(f"weight has shape {list(weight.shape)}, expected [{x.shape[-1]}]")


def _launch(x2, y2, weight, eps, block, residual=None, residual_out=None, cos=None, sin=None, heads=1) -> None:
    """Run the kernel over the rows of x2 [rows, n]; unused pointers are given x2 and never read."""
    rows, n = x2.shape
    if rows == 0:
        return
    has_residual, has_rope = residual is not None, cos is not None
    if not has_residual:
        residual = residual_out = x2
    if not has_rope:
        cos = sin = x2
    rows_per_program = max(1, min(16, 4096 // block))
    _rms_norm_kernel[(triton.cdiv(rows, rows_per_program),)](
        x2, residual, y2, residual_out, weight, cos, sin, rows, n, heads,
        x2.stride(0), residual.stride(0), y2.stride(0), residual_out.stride(0), cos.stride(0), float(eps),
        HAS_RESIDUAL=has_residual, HAS_ROPE=has_rope, ROWS=rows_per_program, BLOCK=block,
        num_warps=4 if block * rows_per_program <= 2048 else 8,
    )  # fmt: skip


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm over the last dim of x [..., n]; with `residual`, returns (norm(x + residual), x + residual)."""
    _check(x, weight)
    n = x.shape[-1]
    x2 = _rows(x, "x", n)
    y = torch.empty_like(x)
    y2 = y.view(-1, n)
    if residual is None:
        _launch(x2, y2, weight, eps, triton.next_power_of_2(n))
        return y
    if residual.shape != x.shape or residual.dtype != x.dtype or residual.device != x.device:
        raise ValueError(
            f"residual is {residual.dtype} {list(residual.shape)} on {residual.device}, "
            f"x is {x.dtype} {list(x.shape)} on {x.device}: they must match"
        )
    new_residual = torch.empty_like(x)
    _launch(x2, y2, weight, eps, triton.next_power_of_2(n), _rows(residual, "residual", n), new_residual.view(-1, n))
    return y, new_residual


def rms_norm_rope(
    x: torch.Tensor, weight: torch.Tensor, eps: float, cos: torch.Tensor, sin: torch.Tensor
) -> torch.Tensor:
    """Per-head RMSNorm then RoPE: x [T, H, D], weight [D], cos and sin [T, D/2] -> [T, H, D]."""
    _check(x, weight)
    if x.dim() != 3:
        raise ValueError(f"x must be [tokens, heads, head_dim], got shape {list(x.shape)}")
    t, heads, d = x.shape
    if d % 2:
        raise ValueError(f"head_dim={d} must be even for RoPE")
    for name, table in (("cos", cos), ("sin", sin)):
        if table.shape != (t, d // 2) or table.dtype != x.dtype or table.device != x.device:
            raise ValueError(
                f"{name} is {table.dtype} {list(table.shape)} on {table.device}; expected {x.dtype} [{t}, {d // 2}] "
                f"on {x.device}"
            )
        if table.stride(-1) != 1 or cos.stride(0) != sin.stride(0):
            raise ValueError("cos and sin must have a contiguous last dimension and the same row stride")
    x2 = _rows(x, "x", d)
    if t and x2.stride(0) * heads != x.stride(0):
        raise ValueError("x's heads of one token must be consecutive rows")
    y = torch.empty_like(x)
    _launch(x2, y.view(-1, d), weight, eps, triton.next_power_of_2(d // 2), cos=cos, sin=sin, heads=heads)
    return y
