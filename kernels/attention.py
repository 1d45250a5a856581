"""Varlen causal grouped-query flash attention (forward) in Triton, over packed sequences.

q [T, Hq, D], k and v [T, Hkv, D] hold B sequences end to end (`cu_seqlens [B+1]`); each query attends to the
keys at or before it in its own sequence. One program computes one block of a sequence's queries for one key/value
head, with the `GROUP = Hq / Hkv` query heads that share that head packed as rows (row r is token r // GROUP,
head r % GROUP of the group), so each K/V tile is loaded once for all of them. Online softmax in float32 with
`exp2` (log2(e) folded into the scale); tiles above the diagonal are never visited, tiles wholly below it run
without masks; offsets are 64-bit. Programs walk a flat list of (sequence, query block) pairs, heaviest blocks of
each sequence first, so a pack of mixed lengths launches no idle programs for its short sequences.

The PyTorch reference is `qwen3_embed.ops.varlen_attention_reference`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from qwen3_embed.ops import check_cu_seqlens

LOG2_E = 1.4426950408889634


@triton.jit
def _attend_tile(q, acc, m_i, l_i, K, V, kv_rows, kv_start, length, token, stride_kt, stride_vt, d, scale_log2,
                 MASKED: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
    """One K/V tile of BLOCK_N keys at sequence positions `kv_rows` folded into the running softmax."""
    offs = (kv_start + kv_rows).to(tl.int64)
    if MASKED:
        in_seq = kv_rows < length
        k = tl.load(K + offs[None, :] * stride_kt + d[:, None], mask=in_seq[None, :], other=0.0)  # [D, BLOCK_N]
        v = tl.load(V + offs[:, None] * stride_vt + d[None, :], mask=in_seq[:, None], other=0.0)  # [BLOCK_N, D]
    else:
        k = tl.load(K + offs[None, :] * stride_kt + d[:, None])
        v = tl.load(V + offs[:, None] * stride_vt + d[None, :])
    s = tl.dot(q, k, input_precision=PRECISION) * scale_log2  # [BLOCK_M, BLOCK_N], in log2 units
    if MASKED:
        s = tl.where((token[:, None] >= kv_rows[None, :]) & in_seq[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    p = tl.exp2(s - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return acc, m_new, l_i


@triton.jit
def _attention_kernel(
    Q, K, V, O,
    CU_SEQLENS,  # [B+1] int32: token offsets of the sequences
    BLOCK_CU,  # [B+1] int32: offsets of each sequence's query blocks in the flat list of programs
    num_seqs,
    scale_log2,  # softmax scale x log2(e)
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
    GROUP: tl.constexpr,
    BLOCK_M: tl.constexpr,  # rows: BLOCK_M // GROUP tokens x GROUP heads
    BLOCK_N: tl.constexpr,  # keys per tile
    HEAD_DIM: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    TOKENS: tl.constexpr = BLOCK_M // GROUP
    program = tl.program_id(0)
    kv_head = tl.program_id(1)
    if program >= tl.load(BLOCK_CU + num_seqs):
        return
    # the sequence this program works on: the last one whose first block is at or before `program`
    lo = 0
    hi = num_seqs - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if tl.load(BLOCK_CU + mid) <= program:
            lo = mid
        else:
            hi = mid - 1
    seq_start = tl.load(CU_SEQLENS + lo).to(tl.int64)
    length = tl.load(CU_SEQLENS + lo + 1) - tl.load(CU_SEQLENS + lo)
    blocks = tl.load(BLOCK_CU + lo + 1) - tl.load(BLOCK_CU + lo)
    block = blocks - 1 - (program - tl.load(BLOCK_CU + lo))  # the longest rows of causal work run first
    first = block * TOKENS

    r = tl.arange(0, BLOCK_M)
    token = first + r // GROUP  # position in the sequence
    head = kv_head * GROUP + r % GROUP
    row_ok = (r < TOKENS * GROUP) & (token < length)
    d = tl.arange(0, HEAD_DIM)
    rows = (seq_start + token).to(tl.int64)
    q = tl.load(Q + rows[:, None] * stride_qt + head[:, None] * stride_qh + d[None, :], mask=row_ok[:, None], other=0.0)

    K += kv_head * stride_kh
    V += kv_head * stride_vh
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    n = tl.arange(0, BLOCK_N)
    below = (first // BLOCK_N) * BLOCK_N  # keys before this are visible to every row of the block
    end = tl.minimum(first + TOKENS, length)
    for kv in range(0, below, BLOCK_N):
        acc, m_i, l_i = _attend_tile(q, acc, m_i, l_i, K, V, kv + n, seq_start, length, token, stride_kt, stride_vt,
                                     d, scale_log2, MASKED=False, PRECISION=PRECISION)  # fmt: skip
    for kv in range(below, end, BLOCK_N):
        acc, m_i, l_i = _attend_tile(q, acc, m_i, l_i, K, V, kv + n, seq_start, length, token, stride_kt, stride_vt,
                                     d, scale_log2, MASKED=True, PRECISION=PRECISION)  # fmt: skip
    out = acc / l_i[:, None]
    tl.store(O + rows[:, None] * stride_ot + head[:, None] * stride_oh + d[None, :], out.to(O.dtype.element_ty),
             mask=row_ok[:, None])  # fmt: skip


def _config(head_dim: int) -> dict:
    """Tile sizes and launch settings by head dim (Triton's interpreter takes a single config, so no autotune)."""
    if head_dim <= 64:
        return dict(BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=3)
    if head_dim <= 128:
        return dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3)
    return dict(BLOCK_M=64, BLOCK_N=32, num_warps=8, num_stages=2)


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    scale: float,
    check_offsets: bool = True,
) -> torch.Tensor:
    """Causal GQA attention within each packed sequence: q [T, Hq, D], k and v [T, Hkv, D] -> [T, Hq, D].

    cu_seqlens [B+1] int32 on q's device. `check_offsets` validates its values, a device sync (the model checks
    once per batch and skips it per layer). No max_seqlen is needed: programs walk a flat list of query blocks.
    """
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(
            f"q, k and v must be [tokens, heads, head_dim], got {list(q.shape)}, {list(k.shape)}, {list(v.shape)}"
        )
    t, hq, d = q.shape
    if k.shape != v.shape or k.shape[0] != t or k.shape[2] != d:
        raise ValueError(
            f"k {list(k.shape)} and v {list(v.shape)} must both be [{t}, kv_heads, {d}] for q {list(q.shape)}"
        )
    hkv = k.shape[1]
    if hq % hkv:
        raise ValueError(f"{hq} query heads are not a multiple of {hkv} key/value heads")
    if d not in (16, 32, 64, 128, 256):
        raise ValueError(f"head_dim={d} is not supported; use 16, 32, 64, 128 or 256")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32) or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(
            f"q, k, v are {q.dtype}, {k.dtype}, {v.dtype}; they must share one of float16, bfloat16, float32"
        )
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"q, k, v are on {q.device}, {k.device}, {v.device}; they must share one device")
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError("q, k and v must have a contiguous last dimension")
    check_cu_seqlens(cu_seqlens, t, q.device, values=check_offsets)

    out = torch.empty_like(q)
    num_seqs = cu_seqlens.shape[0] - 1
    if t == 0 or num_seqs == 0:
        return out
    config = _config(d)
    tokens_per_block = config["BLOCK_M"] // (hq // hkv)
    if tokens_per_block < 1:
        raise ValueError(
            f"{hq // hkv} query heads per key/value head is more than the kernel packs ({config['BLOCK_M']})"
        )
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    block_cu = torch.zeros_like(cu_seqlens)
    torch.cumsum((lengths + tokens_per_block - 1) // tokens_per_block, 0, dtype=torch.int32, out=block_cu[1:])
    grid = (triton.cdiv(t, tokens_per_block) + num_seqs, hkv)  # at least as many programs as query blocks
    _attention_kernel[grid](
        q, k, v, out, cu_seqlens, block_cu, num_seqs, scale * LOG2_E,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), out.stride(0), out.stride(1),
        GROUP=hq // hkv, HEAD_DIM=d, PRECISION="ieee" if q.dtype == torch.float32 else "tf32", **config,
    )  # fmt: skip
    return out
