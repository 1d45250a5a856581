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


# ----------------------------------------------------------------------------------------------------------------
# Backward: each program walks row blocks `program, program + programs, ...`, recomputes rstd from x, and writes
# dx = rstd * (g - xhat * mean(g * xhat)) with g = dy * w and xhat = x * rstd (the casts of the forward taken as
# identities), and its float32 part of the weight's gradient, sum(dy * xhat) over its rows (one row of a
# [programs, n] buffer that the wrapper sums). Through RoPE, dy is first rotated back by the token's angles.


@triton.jit(do_not_specialize=["rows"])
def _rms_norm_backward_kernel(
    DY, X, W, DX,  # [rows, n] gradient of the output, input, [n] weight, [rows, n] gradient of the input
    DW,  # [programs, n] float32: each program's part of the weight's gradient
    rows, n, stride_dy, stride_x, stride_dx, eps,
    ROWS: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    dtype = DX.dtype.element_ty
    program, programs = tl.program_id(0), tl.num_programs(0)
    col = tl.arange(0, BLOCK)[None, :]
    w = tl.load(W + col, mask=col < n, other=0.0).to(tl.float32)
    dw = tl.zeros([ROWS, BLOCK], dtype=tl.float32)
    for block in range(program, tl.cdiv(rows, ROWS), programs):
        row = (block * ROWS + tl.arange(0, ROWS)[:, None]).to(tl.int64)
        mask = (row < rows) & (col < n)
        x = tl.load(X + row * stride_x + col, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + row * stride_dy + col, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.rsqrt(tl.sum(x * x, axis=1) / n + eps)[:, None]
        xhat = x * rstd
        g = dy * w
        dx = rstd * (g - xhat * (tl.sum(g * xhat, axis=1) / n)[:, None])
        tl.store(DX + row * stride_dx + col, dx.to(dtype), mask=mask)
        dw += dy * xhat.to(dtype).to(tl.float32)  # the forward's rounding of x * rstd
    tl.store(DW + program * n + col, tl.sum(dw, axis=0)[None, :], mask=col < n)


@triton.jit
def _norm_rope_backward_rows(X, W, DO, DX, DW, COS, SIN, program, programs, rows, heads, n, stride_xt, stride_xh,
                             stride_rope, eps, ROWS: tl.constexpr, HALF: tl.constexpr):  # fmt: skip
    """The gradients of x and of the weight through norm then rotate, for the head rows of x (as `_norm_rope_rows`)
    in blocks program, program + programs, ...; do and dx are contiguous [rows, n]."""
    dtype = DX.dtype.element_ty
    col = tl.arange(0, HALF)[None, :]
    half = n // 2
    w1 = tl.load(W + col, mask=col < half, other=0.0).to(tl.float32)
    w2 = tl.load(W + half + col, mask=col < half, other=0.0).to(tl.float32)
    dw1 = tl.zeros([ROWS, HALF], dtype=tl.float32)
    dw2 = tl.zeros([ROWS, HALF], dtype=tl.float32)
    for block in range(program, tl.cdiv(rows, ROWS), programs):
        row = (block * ROWS + tl.arange(0, ROWS)[:, None]).to(tl.int64)
        mask = (row < rows) & (col < half)
        token = row // heads
        x_row = X + token * stride_xt + (row - token * heads) * stride_xh
        x1 = tl.load(x_row + col, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(x_row + half + col, mask=mask, other=0.0).to(tl.float32)
        do1 = tl.load(DO + row * n + col, mask=mask, other=0.0).to(tl.float32)
        do2 = tl.load(DO + row * n + half + col, mask=mask, other=0.0).to(tl.float32)
        cos = tl.load(COS + token * stride_rope + col, mask=mask, other=0.0).to(tl.float32)
        sin = tl.load(SIN + token * stride_rope + col, mask=mask, other=0.0).to(tl.float32)
        dy1 = do1 * cos + do2 * sin  # the rotation's transpose
        dy2 = do2 * cos - do1 * sin
        rstd = tl.rsqrt((tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1)) / n + eps)[:, None]
        xhat1, xhat2 = x1 * rstd, x2 * rstd
        g1, g2 = dy1 * w1, dy2 * w2
        dot = ((tl.sum(g1 * xhat1, axis=1) + tl.sum(g2 * xhat2, axis=1)) / n)[:, None]
        tl.store(DX + row * n + col, (rstd * (g1 - xhat1 * dot)).to(dtype), mask=mask)
        tl.store(DX + row * n + half + col, (rstd * (g2 - xhat2 * dot)).to(dtype), mask=mask)
        dw1 += dy1 * xhat1.to(dtype).to(tl.float32)
        dw2 += dy2 * xhat2.to(dtype).to(tl.float32)
    tl.store(DW + program * n + col, tl.sum(dw1, axis=0)[None, :], mask=col < half)
    tl.store(DW + program * n + half + col, tl.sum(dw2, axis=0)[None, :], mask=col < half)


@triton.jit(do_not_specialize=["tokens", "q_programs"])
def _qk_norm_rope_backward_kernel(
    Q, K, QW, KW,  # the forward's inputs
    DQO, DKO,  # contiguous gradients of its outputs
    DQ, DK,  # contiguous gradients of q and k
    DQW, DKW,  # [q_programs, n] and [programs - q_programs, n] float32 parts of the weights' gradients
    COS, SIN,
    tokens, q_heads, k_heads, n, q_programs,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_rope,
    eps,
    ROWS: tl.constexpr, HALF: tl.constexpr,
):  # fmt: skip
    program, programs = tl.program_id(0), tl.num_programs(0)
    if program < q_programs:
        _norm_rope_backward_rows(Q, QW, DQO, DQ, DQW, COS, SIN, program, q_programs, tokens * q_heads, q_heads, n,
                                 stride_qt, stride_qh, stride_rope, eps, ROWS, HALF)  # fmt: skip
    else:
        _norm_rope_backward_rows(K, KW, DKO, DK, DKW, COS, SIN, program - q_programs, programs - q_programs,
                                 tokens * k_heads, k_heads, n, stride_kt, stride_kh, stride_rope, eps, ROWS,
                                 HALF)  # fmt: skip


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


PARTIALS = 256  # most programs of a backward launch: rows of its weight-gradient buffer


def _programs(rows: int, per_program: int) -> int:
    return max(1, min(PARTIALS, triton.cdiv(rows, per_program)))


@torch.library.triton_op("qwen3_embed::rms_norm_backward", mutates_args=())
def _rms_norm_backward_op(
    grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    n = x.shape[-1]
    x2, grad2 = x.view(-1, n), grad.view(-1, n)
    dx = torch.empty_like(x, memory_format=torch.contiguous_format)
    rows = x2.shape[0]
    block = triton.next_power_of_2(n)
    per_program, warps = _row_settings(block)
    programs = _programs(rows, per_program)
    dw = torch.empty(programs, n, dtype=torch.float32, device=x.device)
    with on_device(x):
        torch.library.wrap_triton(_rms_norm_backward_kernel)[(programs,)](
            grad2, x2, weight, dx, dw, rows, n, grad2.stride(0), x2.stride(0), n, float(eps),
            ROWS=per_program, BLOCK=block, num_warps=warps,
        )  # fmt: skip
    return dx, dw.sum(0).to(weight.dtype)


@torch.library.triton_op("qwen3_embed::qk_norm_rope_backward", mutates_args=())
def _qk_norm_rope_backward_op(
    q_grad: torch.Tensor, k_grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor,
    k_weight: torch.Tensor, eps: float, cos: torch.Tensor, sin: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    t, hq, d = q.shape
    hk = k.shape[1]
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    dk = torch.empty_like(k, memory_format=torch.contiguous_format)
    half = triton.next_power_of_2(d // 2)
    per_program, warps = _row_settings(half)
    q_programs, k_programs = _programs(t * hq, per_program), _programs(t * hk, per_program)
    dqw = torch.empty(q_programs, d, dtype=torch.float32, device=q.device)
    dkw = torch.empty(k_programs, d, dtype=torch.float32, device=q.device)
    with on_device(q):
        torch.library.wrap_triton(_qk_norm_rope_backward_kernel)[(q_programs + k_programs,)](
            q, k, q_weight, k_weight, q_grad, k_grad, dq, dk, dqw, dkw, cos, sin, t, hq, hk, d, q_programs,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), cos.stride(0), float(eps),
            ROWS=per_program, HALF=half, num_warps=warps,
        )  # fmt: skip
    return dq, dk, dqw.sum(0).to(q_weight.dtype), dkw.sum(0).to(k_weight.dtype)


def _save_inputs(ctx, inputs: tuple, output) -> None:
    ctx.save_for_backward(*(x for x in inputs if isinstance(x, torch.Tensor)))
    ctx.eps = next(x for x in inputs if isinstance(x, float))


def _rms_norm_backward(ctx, grad: torch.Tensor) -> tuple:
    x, weight = ctx.saved_tensors
    dx, dw = torch.ops.qwen3_embed.rms_norm_backward(grad.contiguous(), x, weight, ctx.eps)
    return dx, dw, None


def _qk_norm_rope_backward(ctx, q_grad: torch.Tensor, k_grad: torch.Tensor) -> tuple:
    if ctx.needs_input_grad[5] or ctx.needs_input_grad[6]:
        raise NotImplementedError("qk_norm_rope has no gradient for cos and sin (RoPE tables are constants)")
    q, k, q_weight, k_weight, cos, sin = ctx.saved_tensors
    dq, dk, dqw, dkw = torch.ops.qwen3_embed.qk_norm_rope_backward(
        q_grad.contiguous(), k_grad.contiguous(), q, k, q_weight, k_weight, ctx.eps, cos, sin
    )
    return dq, dk, dqw, dkw, None, None, None


torch.library.register_autograd("qwen3_embed::rms_norm", _rms_norm_backward, setup_context=_save_inputs)
torch.library.register_autograd("qwen3_embed::qk_norm_rope", _qk_norm_rope_backward, setup_context=_save_inputs)


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
