"""Fused RMSNorm in Triton: plain rows, with the residual add of a decoder layer, and per head with RoPE.

Two kernels serve the three uses. Each program normalizes `ROWS` rows of width `n` (one wide hidden-state row,
or several 128-wide head rows) in the reference order: statistics in float32, normalize, cast to the input
dtype, then multiply by the weight (rounded to the input dtype, as PyTorch's 16-bit multiply). With a residual,
it first forms `x + residual` rounded to the input dtype, writes it as the new residual and normalizes it, so a
layer reads its hidden state once. With RoPE (per-head norm only), the normalized row is rotated by its token's
angles, `[x1*cos - x2*sin, x2*cos + x1*sin]` with each product rounded as PyTorch rounds it.

The PyTorch references are `qwen3_embed.ops.rms_norm` and `qwen3_embed.ops.qk_norm_rope`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit(do_not_specialize=["rows"])
def _rms_norm_kernel(
    X,  # [rows, n] input
    R,  # [rows, n] residual to add first (HAS_RESIDUAL)
    Y,  # [rows, n] output
    R_OUT,  # [rows, n] x + residual (HAS_RESIDUAL)
    W,  # [n] weight
    rows,
    n,
    stride_x,
    stride_r,
    stride_y,
    stride_ro,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,  # >= n
):
    dtype = Y.dtype.element_ty
    row = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)[:, None]  # [ROWS, 1]
    col = tl.arange(0, BLOCK)[None, :]  # [1, BLOCK]
    mask = (row < rows) & (col < n)
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
    return _norm_rows(x, None, weight, eps)[0]


@torch.library.triton_op("qwen3_embed::rms_norm_residual", mutates_args=())
def _rms_norm_residual_op(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    return _norm_rows(x, residual, weight, eps)


def _norm_rows(x, residual, weight, eps):
    n = x.shape[-1]
    x2 = x.view(-1, n)
    y = torch.empty_like(x)
    new_residual = torch.empty_like(x) if residual is not None else y
    rows = x2.shape[0]
    if rows:
        y2 = y.view(-1, n)
        r2, ro2 = (residual.view(-1, n), new_residual.view(-1, n)) if residual is not None else (x2, x2)
        block = triton.next_power_of_2(n)
        per_program, warps = _row_settings(block)
        torch.library.wrap_triton(_rms_norm_kernel)[(triton.cdiv(rows, per_program),)](
            x2, r2, y2, ro2, weight, rows, n, x2.stride(0), r2.stride(0), y2.stride(0), ro2.stride(0), float(eps),
            HAS_RESIDUAL=residual is not None, ROWS=per_program, BLOCK=block, num_warps=warps,
        )  # fmt: skip
    return y, new_residual


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
        torch.library.wrap_triton(_qk_norm_rope_kernel)[grid](
            q, k, q_weight, k_weight, q_out, k_out, cos, sin, t, hq, hk, d,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), cos.stride(0), float(eps),
            ROWS=per_program, HALF=half, num_warps=warps,
        )  # fmt: skip
    return q_out, k_out


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm over the last dim of x [..., n]; with `residual`, returns (norm(x + residual), x + residual).
    Runs `torch.ops.qwen3_embed.rms_norm` (or `rms_norm_residual`)."""
    _check(x, weight)
    n = x.shape[-1]
    x = _rows(x, "x", n).view(x.shape)
    if residual is None:
        return torch.ops.qwen3_embed.rms_norm(x, weight, eps)
    if residual.shape != x.shape or residual.dtype != x.dtype or residual.device != x.device:
        raise ValueError(
            f"residual is {residual.dtype} {list(residual.shape)} on {residual.device}, "
            f"x is {x.dtype} {list(x.shape)} on {x.device}: they must match"
        )
    _rows(residual, "residual", n)
    return torch.ops.qwen3_embed.rms_norm_residual(x, residual, weight, eps)


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


# ----------------------------------------------------------------------------------------------------------------
# Ahead-of-time compile specs (qwen3_embed.kernels.aot)

_TRITON_DTYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
AOT_WIDTHS = (1024, 2560, 4096)  # the 0.6B, 4B and 8B hidden sizes
AOT_HEAD_DIMS = (64, 128, 256)
AOT_ARCHS = (80, 90)


def launches(arch: int) -> list:
    """Every compiled form the wrappers launch for the Qwen3 widths and head dims, in every dtype, on sm_80 and
    sm_90 only: the launch settings do not depend on the architecture, and with no tensor cores and at most 4 KB of
    shared memory and 90 of 255 registers (benchmarks/results/kernels-aot.md) no architecture is near a limit."""
    from .aot import Launch

    if arch not in AOT_ARCHS:
        return []
    found = {}
    for t in _TRITON_DTYPES.values():
        for width in AOT_WIDTHS:
            block = triton.next_power_of_2(width)
            per_program, warps = _row_settings(block)
            for residual in (False, True):
                signature = {**dict.fromkeys(("X", "R", "Y", "R_OUT", "W"), f"*{t}"), "rows": "i32", "n": "i32",
                             **dict.fromkeys(("stride_x", "stride_r", "stride_y", "stride_ro"), "i32"), "eps": "fp32",
                             **dict.fromkeys(("HAS_RESIDUAL", "ROWS", "BLOCK"), "constexpr")}  # fmt: skip
                constexprs = {"HAS_RESIDUAL": residual, "ROWS": per_program, "BLOCK": block}
                aligned = ("X", "R", "Y", "R_OUT", "W", "n", "stride_x", "stride_r", "stride_y", "stride_ro")
                labels = {"op": "rms_norm + residual" if residual else "rms_norm", "dtype": t, "BLOCK": block}
                kernel = "_rms_norm_kernel"
                found[t, block, residual] = Launch(__name__, kernel, signature, constexprs, aligned, warps, 3, labels)
        for head_dim in AOT_HEAD_DIMS:
            half = triton.next_power_of_2(head_dim // 2)
            per_program, warps = _row_settings(half)
            signature = {**dict.fromkeys(("Q", "K", "QW", "KW", "QY", "KY", "COS", "SIN"), f"*{t}"),
                         **dict.fromkeys(("tokens", "q_heads", "k_heads", "n", "stride_qt", "stride_qh", "stride_kt",
                                          "stride_kh", "stride_rope"), "i32"),
                         "eps": "fp32", "ROWS": "constexpr", "HALF": "constexpr"}  # fmt: skip
            aligned = ("Q", "K", "QW", "KW", "QY", "KY", "COS", "SIN", "n", "stride_qt", "stride_qh", "stride_kt",
                       "stride_kh", "stride_rope")  # fmt: skip
            found[t, "qk", head_dim] = Launch(__name__, "_qk_norm_rope_kernel", signature,
                                              {"ROWS": per_program, "HALF": half}, aligned, warps, 3,
                                              {"op": "q/k norm + rope", "dtype": t, "head_dim": head_dim})  # fmt: skip
    return list(found.values())
