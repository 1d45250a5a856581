"""RMSNorm in Triton: of hidden-state rows, and of each query and key head followed by RoPE (one launch for both).

Each program normalizes `ROWS` rows of width `n` (one wide hidden-state row, or several 128-wide head rows) in the
reference order: statistics in float32, normalize, cast to the input dtype, then multiply by the weight (rounded to
the input dtype, as PyTorch's 16-bit multiply). With RoPE, the normalized row is rotated by its token's angles,
`[x1*cos - x2*sin, x2*cos + x1*sin]` with each product rounded as PyTorch rounds it.

The PyTorch references are `qwen3_embed.model.RMSNorm` and `Attention.norm_and_rotate` (RMSNorm, then
`qwen3_embed.model.apply_rotary`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import on_device

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit(do_not_specialize=["rows"])
def _rms_norm_kernel(
    X,  # [rows, n] input
    Y,  # [rows, n] output
    W,  # [n] weight
    rows,
    n,
    stride_x,
    stride_y,
    eps,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,  # >= n
):
    dtype = Y.dtype.element_ty
    row = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)[:, None]  # [ROWS, 1]
    col = tl.arange(0, BLOCK)[None, :]  # [1, BLOCK]
    mask = (row < rows) & (col < n)
    x = tl.load(X + row * stride_x + col, mask=mask, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=1) / n + eps)[:, None]
    w = tl.load(W + col, mask=col < n, other=0.0).to(tl.float32)
    y = (x * rstd).to(dtype).to(tl.float32) * w
    tl.store(Y + row * stride_y + col, y.to(dtype), mask=mask)


@triton.jit
def _norm_rope_rows(X, W, Y, COS, SIN, block, rows, heads, n, stride_xt, stride_xh, stride_rope, eps,
                    ROWS: tl.constexpr, HALF: tl.constexpr):  # fmt: skip
    """Norm then rotate ROWS head rows of x (row r is head r % heads of token r // heads, at token stride stride_xt
    and head stride stride_xh) from the block-th on, into the contiguous rows [rows, n] of y."""
    dtype = Y.dtype.element_ty
    row = block.to(tl.int64) * ROWS + tl.arange(0, ROWS)[:, None]  # [ROWS, 1]
    col = tl.arange(0, HALF)[None, :]  # [1, HALF]
    half = n // 2
    mask = (row < rows) & (col < half)
    token = row // heads
    x_row = X + token * stride_xt + (row - token * heads) * stride_xh
    x1 = tl.load(x_row + col, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_row + half + col, mask=mask, other=0.0).to(tl.float32)
    rstd = tl.rsqrt((tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1)) / n + eps)[:, None]
    w1 = tl.load(W + col, mask=col < half, other=0.0).to(tl.float32)
    w2 = tl.load(W + half + col, mask=col < half, other=0.0).to(tl.float32)
    y1 = ((x1 * rstd).to(dtype).to(tl.float32) * w1).to(dtype).to(tl.float32)
    y2 = ((x2 * rstd).to(dtype).to(tl.float32) * w2).to(dtype).to(tl.float32)
    cos = tl.load(COS + token * stride_rope + col, mask=mask, other=0.0).to(tl.float32)
    sin = tl.load(SIN + token * stride_rope + col, mask=mask, other=0.0).to(tl.float32)
    a1 = (y1 * cos).to(dtype).to(tl.float32)
    b1 = (y2 * sin).to(dtype).to(tl.float32)
    a2 = (y2 * cos).to(dtype).to(tl.float32)
    b2 = (y1 * sin).to(dtype).to(tl.float32)
    tl.store(Y + row * n + col, (a1 - b1).to(dtype), mask=mask)
    tl.store(Y + row * n + half + col, (a2 + b2).to(dtype), mask=mask)


@triton.jit(do_not_specialize=["tokens"])
def _qk_norm_rope_kernel(
    Q, K,  # [tokens, q_heads, n] and [tokens, k_heads, n], each head's n values contiguous
    QW, KW,  # [n] weights
    QY, KY,  # outputs, contiguous, shaped as q and k
    COS, SIN,  # [tokens, n // 2] RoPE angles per token
    tokens, q_heads, k_heads, n,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_rope,
    eps,
    ROWS: tl.constexpr,  # head rows per program
    HALF: tl.constexpr,  # >= n // 2 (each half of a head is one block)
):  # fmt: skip
    block = tl.program_id(0)
    q_blocks = tl.cdiv(tokens * q_heads, ROWS)
    if block < q_blocks:
        _norm_rope_rows(Q, QW, QY, COS, SIN, block, tokens * q_heads, q_heads, n, stride_qt, stride_qh, stride_rope,
                        eps, ROWS, HALF)  # fmt: skip
    else:
        _norm_rope_rows(K, KW, KY, COS, SIN, block - q_blocks, tokens * k_heads, k_heads, n, stride_kt, stride_kh,
                        stride_rope, eps, ROWS, HALF)  # fmt: skip


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


def _row_settings(block: int) -> tuple[int, int]:
    """Rows per program and warps for rows of `block` columns: several narrow rows per program, 8 warps for wide."""
    rows = max(1, min(16, 4096 // block))
    return rows, 4 if block * rows <= 2048 else 8


@torch.library.triton_op("qwen3_embed::rms_norm", mutates_args=())
def _rms_norm_op(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    n = x.shape[-1]
    x2 = x.view(-1, n)
    y = torch.empty_like(x)
    rows = x2.shape[0]
    if rows:
        y2 = y.view(-1, n)
        block = triton.next_power_of_2(n)
        per_program, warps = _row_settings(block)
        with on_device(x):
            torch.library.wrap_triton(_rms_norm_kernel)[(triton.cdiv(rows, per_program),)](
                x2, y2, weight, rows, n, x2.stride(0), y2.stride(0), float(eps), ROWS=per_program, BLOCK=block,
                num_warps=warps,
            )  # fmt: skip
    return y


@torch.library.triton_op("qwen3_embed::qk_norm_rope", mutates_args=())
def _qk_norm_rope_op(
    q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor, eps: float,
    cos: torch.Tensor, sin: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    t, hq, d = q.shape
    hk = k.shape[1]
    q_out = torch.empty_like(q, memory_format=torch.contiguous_format)
    k_out = torch.empty_like(k, memory_format=torch.contiguous_format)
    if t:
        half = triton.next_power_of_2(d // 2)
        per_program, warps = _row_settings(half)
        grid = (triton.cdiv(t * hq, per_program) + triton.cdiv(t * hk, per_program),)
        with on_device(q):
            torch.library.wrap_triton(_qk_norm_rope_kernel)[grid](
                q, k, q_weight, k_weight, q_out, k_out, cos, sin, t, hq, hk, d,
                q.stride(0), q.stride(1), k.stride(0), k.stride(1), cos.stride(0), float(eps),
                ROWS=per_program, HALF=half, num_warps=warps,
            )  # fmt: skip
    return q_out, k_out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim of x [..., n]. Runs `torch.ops.qwen3_embed.rms_norm`."""
    _check(x, weight)
    return torch.ops.qwen3_embed.rms_norm(_rows(x, "x", x.shape[-1]).view(x.shape), weight, eps)


def qk_norm_rope(
    q: torch.Tensor,
    k: torch.Tensor,
    q_weight: torch.Tensor,
    k_weight: torch.Tensor,
    eps: float,
    cos: torch.Tensor,
    sin: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head RMSNorm then RoPE of q [T, Hq, D] and k [T, Hkv, D] in one launch, weights [D], cos and sin
    [T, D/2] -> (q, k). Runs `torch.ops.qwen3_embed.qk_norm_rope`."""
    for name, x, weight in (("q", q, q_weight), ("k", k, k_weight)):
        _check(x, weight)
        if x.dim() != 3:
            raise ValueError(f"{name} must be [tokens, heads, head_dim], got shape {list(x.shape)}")
        if x.stride(2) != 1:
            raise ValueError(f"{name} must have contiguous heads (stride 1 within a head, not {x.stride(2)})")
    t, _, d = q.shape
    if k.shape[0] != t or k.shape[2] != d or k.dtype != q.dtype or k.device != q.device:
        raise ValueError(f"k is {k.dtype} {list(k.shape)} on {k.device}; q is {q.dtype} {list(q.shape)} on {q.device}")
    if d % 2:
        raise ValueError(f"head_dim={d} must be even for RoPE")
    for name, table in (("cos", cos), ("sin", sin)):
        if table.shape != (t, d // 2) or table.dtype != q.dtype or table.device != q.device:
            raise ValueError(
                f"{name} is {table.dtype} {list(table.shape)} on {table.device}; expected {q.dtype} [{t}, {d // 2}] "
                f"on {q.device}"
            )
        if table.stride(-1) != 1 or cos.stride(0) != sin.stride(0):
            raise ValueError("cos and sin must have a contiguous last dimension and the same row stride")
    return torch.ops.qwen3_embed.qk_norm_rope(q, k, q_weight, k_weight, eps, cos, sin)
