"""Varlen causal grouped-query flash attention (forward) in Triton, over packed sequences.

q [T, Hq, D], k and v [T, Hkv, D] hold B sequences end to end; each query attends to the keys at or before it in
its own sequence. One program computes one block of a sequence's queries for one key/value head, with the
`group = Hq / Hkv` query heads that share that head packed as rows (row r is token r // group, head r % group of
the group), so each K/V tile is loaded once for all of them. Online softmax in float32 with `exp2`: the scale
(times log2 e) and the running maximum meet in one multiply-add before the `exp2`. Tiles above the diagonal are
never visited, tiles wholly below it run without masks; offsets are 64-bit.

Programs read their block from a work table, one row (sequence start, first query, end) per query block of the
whole pack, heaviest first; `work_table` builds it on the device without a sync, once per batch (the model keeps it
in the batch's attention plan, shared by every layer). Rows past the blocks are no-ops, so a table sized by
`work_capacity` serves any pack of that many tokens and sequences (a CUDA graph captures a fixed grid).

Launch settings: `configs(head_dim, group, dtype, capability)` lists what `triton.autotune` may choose on each
architecture (one config under Triton's interpreter); float32 has none on CUDA (its ieee dots spill on every
architecture and do not fit sm_80/sm_89 shared memory), so the model sends float32 to the PyTorch reference there.
The diagonal runs in unrolled tiles of at most 64 keys (`DIAG_N`; a 128-key diagonal tile spills registers on sm_90
at head dim 128), as many as the keys of any block of any GQA group need (`diagonal_tiles`). The kernel's `DIAG_N`
and `TMA` switches also serve the variants in `qwen3_embed.kernels.experimental`; the default loads by pointers.
`qwen3_embed.kernels.aot` compiles every launch ahead of time.

The PyTorch reference is `qwen3_embed.ops.varlen_attention`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from qwen3_embed.checks import check_cu_seqlens

from . import on_device

LOG2_E = 1.4426950408889634
HEAD_DIMS = (16, 32, 64, 128, 256)
DTYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}  # and Triton's names for them


@triton.jit
def _attend(acc, m_i, l_i, q, K, V, K_DESC, V_DESC, kv_head, seq_start, lo, hi, token, end, scale_log2,
            stride_kt, stride_vt,
            HEAD_DIM: tl.constexpr, KEYS: tl.constexpr, MASKED: tl.constexpr, TMA: tl.constexpr):  # fmt: skip
    """Fold the keys at sequence positions [lo, hi), KEYS at a time, into the running softmax of q's rows."""
    n = tl.arange(0, KEYS)
    d = tl.arange(0, HEAD_DIM)
    for start in range(lo, hi, KEYS):
        pos = start + n  # key positions in the sequence
        if TMA:  # unmasked tiles only: every key is in the sequence
            k = K_DESC.load([(seq_start + start).to(tl.int32), kv_head * HEAD_DIM])  # [KEYS, D]
            v = V_DESC.load([(seq_start + start).to(tl.int32), kv_head * HEAD_DIM])
        else:
            rows = seq_start + pos.to(tl.int64)
            if MASKED:  # keys past the block's last query may be past the pack's end
                k = tl.load(K + rows[:, None] * stride_kt + d[None, :], mask=(pos < end)[:, None], other=0.0)
                v = tl.load(V + rows[:, None] * stride_vt + d[None, :], mask=(pos < end)[:, None], other=0.0)
            else:
                k = tl.load(K + rows[:, None] * stride_kt + d[None, :])
                v = tl.load(V + rows[:, None] * stride_vt + d[None, :])
        s = tl.dot(q, tl.trans(k), input_precision="ieee")  # [BLOCK_M, KEYS]; "ieee" binds float32 only
        if MASKED:
            s = tl.where(token[:, None] >= pos[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1) * scale_log2)
        p = tl.exp2(tl.fma(s, scale_log2, -m_new[:, None]))  # one FMA (whatever the fp-fusion default), log2 units
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision="ieee")
        m_i = m_new
    return acc, m_i, l_i


@triton.jit(do_not_specialize=["group", "tokens_bucket"])
def _attention_kernel(
    Q, K, V, O,
    LSE,  # [T, Hq] float32: each row's log-sum-exp for the backward (base 2, of the scaled scores), or None
    K_DESC, V_DESC,  # tensor descriptors of k and v as [T, Hkv * D] (TMA), else None
    WORK,  # [capacity, 3] int32: sequence start, first query position, end (one past the block's last query)
    scale_log2,  # softmax scale x log2(e)
    group,  # query heads per key/value head (a runtime value: one binary serves every GQA ratio)
    tokens_bucket,  # the autotune key's token-count bucket (unused in the kernel)
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh, stride_lse,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,  # rows: BLOCK_M // group tokens x group heads
    BLOCK_N: tl.constexpr,  # keys per tile below the diagonal
    DIAG_N: tl.constexpr,  # keys per tile on the diagonal
    DIAG_TILES: tl.constexpr,  # diagonal tiles: enough for the keys of any block of any group (`diagonal_tiles`)
    TMA: tl.constexpr,  # K/V tiles below the diagonal through tensor descriptors
):  # fmt: skip
    item = tl.program_id(0)
    kv_head = tl.program_id(1)
    seq_start = tl.load(WORK + item * 3).to(tl.int64)
    first = tl.load(WORK + item * 3 + 1)
    end = tl.load(WORK + item * 3 + 2)
    if end <= first:  # a spare row of the table
        return

    r = tl.arange(0, BLOCK_M)
    token = first + r // group  # position in the sequence
    head = kv_head * group + r % group
    row_ok = (r < (BLOCK_M // group) * group) & (token < end)
    d = tl.arange(0, HEAD_DIM)
    rows = seq_start + token.to(tl.int64)
    q = tl.load(Q + rows[:, None] * stride_qt + head[:, None] * stride_qh + d[None, :], mask=row_ok[:, None], other=0.0)

    K += kv_head * stride_kh
    V += kv_head * stride_vh
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    below = (first // BLOCK_N) * BLOCK_N  # keys before this are visible to every row of the block
    acc, m_i, l_i = _attend(acc, m_i, l_i, q, K, V, K_DESC, V_DESC, kv_head, seq_start, 0, below, token, end,
                            scale_log2, stride_kt, stride_vt, HEAD_DIM, BLOCK_N, MASKED=False, TMA=TMA)  # fmt: skip
    # the diagonal spans first % BLOCK_N + BLOCK_M // group keys: a few masked tiles, unrolled (as a loop it would be
    # software-pipelined like the one above, and the registers that costs make sm_80 spill)
    for i in tl.static_range(DIAG_TILES):
        if below + i * DIAG_N < end:
            acc, m_i, l_i = _attend(acc, m_i, l_i, q, K, V, K_DESC, V_DESC, kv_head, seq_start, below + i * DIAG_N,
                                    below + (i + 1) * DIAG_N, token, end, scale_log2, stride_kt, stride_vt, HEAD_DIM,
                                    DIAG_N, MASKED=True, TMA=False)  # fmt: skip
    out = acc / l_i[:, None]
    tl.store(O + rows[:, None] * stride_ot + head[:, None] * stride_oh + d[None, :], out.to(O.dtype.element_ty),
             mask=row_ok[:, None])  # fmt: skip
    if LSE is not None:  # only when a gradient is needed: inference stores nothing more
        tl.store(LSE + rows * stride_lse + head, m_i + tl.log2(l_i), mask=row_ok)


# ----------------------------------------------------------------------------------------------------------------
# Backward (FlashAttention-2's): with the forward's log-sum-exp L of each row, P = exp2(S * scale_log2 - L) is
# recomputed tile by tile, never stored. dV = P^T dO, dP = dO V^T, dS = P * (dP - D) with D = rowsum(dO * O) (one
# preprocessing pass), dK = scale * dS^T Q, dQ = scale * dS K. One program per block of keys of a key/value head
# computes dK and dV over the queries at or after its first key (the rows of a query tile pack the group's heads as in
# the forward, so the sum over the group is in the tile's dot products: no atomics); one program per block of
# queries (as in the forward) computes dQ over the keys at or before its last query. Tiles wholly on one side of the
# diagonal run without the causal mask; nothing above it is visited.


@triton.jit(do_not_specialize=["rows"])
def _attention_delta_kernel(O, DO, DELTA, rows, heads, stride_ot, stride_oh, stride_dot, stride_doh,
                            HEAD_DIM: tl.constexpr, ROWS: tl.constexpr):  # fmt: skip
    """D = rowsum(dO * O) in float32 for ROWS (token, head) rows into the contiguous [T, Hq] DELTA."""
    row = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    token, head = row // heads, row % heads
    d = tl.arange(0, HEAD_DIM)[None, :]
    ok = (row < rows)[:, None]
    o = tl.load(O + token[:, None] * stride_ot + head[:, None] * stride_oh + d, mask=ok, other=0.0).to(tl.float32)
    do = tl.load(DO + token[:, None] * stride_dot + head[:, None] * stride_doh + d, mask=ok, other=0.0)
    tl.store(DELTA + row, tl.sum(o * do.to(tl.float32), axis=1), mask=row < rows)


@triton.jit
def _dkdv_tiles(dk, dv, k, v, pos, Q, DO, LSE, DELTA, seq_start, lo, hi, length, kv_head, group, scale_log2,
                stride_qt, stride_qh, stride_dot, stride_doh, stride_lse,
                HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, MASKED: tl.constexpr):  # fmt: skip
    """Add to dK, dV of the keys at `pos` the terms of the query tokens [lo, hi) of the sequence (BLOCK_M // group
    tokens x the group's heads per tile)."""
    r = tl.arange(0, BLOCK_M)
    d = tl.arange(0, HEAD_DIM)
    per_tile = BLOCK_M // group
    head = kv_head * group + r % group
    for start in range(lo, hi, per_tile):
        token = start + r // group
        ok = (r < per_tile * group) & (token < length)
        rows = seq_start + token.to(tl.int64)
        q = tl.load(Q + rows[:, None] * stride_qt + head[:, None] * stride_qh + d[None, :], mask=ok[:, None], other=0.0)
        do = tl.load(DO + rows[:, None] * stride_dot + head[:, None] * stride_doh + d[None, :], mask=ok[:, None],
                     other=0.0)  # fmt: skip
        lse = tl.load(LSE + rows * stride_lse + head, mask=ok, other=float("inf"))  # rows past the end: P = 0
        delta = tl.load(DELTA + rows * stride_lse + head, mask=ok, other=0.0)
        p = tl.exp2(tl.dot(k, tl.trans(q), input_precision="ieee") * scale_log2 - lse[None, :])  # P^T [keys, rows]
        if MASKED:
            p = tl.where(pos[:, None] <= token[None, :], p, 0.0)
        dv = tl.dot(p.to(do.dtype), do, dv, input_precision="ieee")
        dp = tl.dot(v, tl.trans(do), input_precision="ieee")
        ds = p * (dp - delta[None, :])
        dk = tl.dot(ds.to(q.dtype), q, dk, input_precision="ieee")
    return dk, dv


@triton.jit(do_not_specialize=["group"])
def _attention_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV,
    WORK,  # [capacity, 4] int32: sequence start, first key, end (one past the block's last key), sequence length
    scale, scale_log2, group,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh, stride_dkt, stride_dkh,
    stride_dvt, stride_dvh, stride_lse,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,  # query rows per tile: BLOCK_M // group tokens x group heads
    BLOCK_N: tl.constexpr,  # keys per program
):  # fmt: skip
    item = tl.program_id(0)
    kv_head = tl.program_id(1)
    seq_start = tl.load(WORK + item * 4).to(tl.int64)
    first = tl.load(WORK + item * 4 + 1)
    end = tl.load(WORK + item * 4 + 2)
    length = tl.load(WORK + item * 4 + 3)
    if end <= first:  # a spare row of the table
        return
    pos = first + tl.arange(0, BLOCK_N)
    d = tl.arange(0, HEAD_DIM)
    keys = seq_start + pos.to(tl.int64)
    key_ok = (pos < end)[:, None]
    k = tl.load(K + keys[:, None] * stride_kt + kv_head * stride_kh + d[None, :], mask=key_ok, other=0.0)
    v = tl.load(V + keys[:, None] * stride_vt + kv_head * stride_vh + d[None, :], mask=key_ok, other=0.0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    per_tile = BLOCK_M // group
    diagonal_end = first + tl.cdiv(end - first, per_tile) * per_tile  # the query tiles that see some keys masked
    dk, dv = _dkdv_tiles(dk, dv, k, v, pos, Q, DO, LSE, DELTA, seq_start, first, diagonal_end, length, kv_head, group,
                         scale_log2, stride_qt, stride_qh, stride_dot, stride_doh, stride_lse, HEAD_DIM, BLOCK_M,
                         MASKED=True)  # fmt: skip
    dk, dv = _dkdv_tiles(dk, dv, k, v, pos, Q, DO, LSE, DELTA, seq_start, diagonal_end, length, length, kv_head, group,
                         scale_log2, stride_qt, stride_qh, stride_dot, stride_doh, stride_lse, HEAD_DIM, BLOCK_M,
                         MASKED=False)  # fmt: skip
    tl.store(DK + keys[:, None] * stride_dkt + kv_head * stride_dkh + d[None, :], (dk * scale).to(DK.dtype.element_ty),
             mask=key_ok)  # fmt: skip
    tl.store(DV + keys[:, None] * stride_dvt + kv_head * stride_dvh + d[None, :], dv.to(DV.dtype.element_ty),
             mask=key_ok)  # fmt: skip


@triton.jit
def _dq_tiles(dq, q, do, lse, delta, token, K, V, seq_start, lo, hi, end, scale_log2, stride_kt, stride_vt,
              HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr):  # fmt: skip
    """Add to dQ of the tile's rows the terms of the keys [lo, hi) of the sequence, BLOCK_N at a time."""
    n = tl.arange(0, BLOCK_N)
    d = tl.arange(0, HEAD_DIM)
    for start in range(lo, hi, BLOCK_N):
        pos = start + n
        keys = seq_start + pos.to(tl.int64)
        if MASKED:  # keys past the block's last query may be past the pack's end
            k = tl.load(K + keys[:, None] * stride_kt + d[None, :], mask=(pos < end)[:, None], other=0.0)
            v = tl.load(V + keys[:, None] * stride_vt + d[None, :], mask=(pos < end)[:, None], other=0.0)
        else:
            k = tl.load(K + keys[:, None] * stride_kt + d[None, :])
            v = tl.load(V + keys[:, None] * stride_vt + d[None, :])
        p = tl.exp2(tl.dot(q, tl.trans(k), input_precision="ieee") * scale_log2 - lse[:, None])
        if MASKED:
            p = tl.where(token[:, None] >= pos[None, :], p, 0.0)
        ds = p * (tl.dot(do, tl.trans(v), input_precision="ieee") - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision="ieee")
    return dq


@triton.jit(do_not_specialize=["group"])
def _attention_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ,
    WORK,  # [capacity, 3] int32, as the forward's: sequence start, first query position, end
    scale, scale_log2, group,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh, stride_dqt, stride_dqh,
    stride_lse,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,  # rows: BLOCK_M // group tokens x group heads
    BLOCK_N: tl.constexpr,  # keys per tile
):  # fmt: skip
    item = tl.program_id(0)
    kv_head = tl.program_id(1)
    seq_start = tl.load(WORK + item * 3).to(tl.int64)
    first = tl.load(WORK + item * 3 + 1)
    end = tl.load(WORK + item * 3 + 2)
    if end <= first:  # a spare row of the table
        return
    r = tl.arange(0, BLOCK_M)
    token = first + r // group
    head = kv_head * group + r % group
    row_ok = (r < (BLOCK_M // group) * group) & (token < end)
    d = tl.arange(0, HEAD_DIM)
    rows = seq_start + token.to(tl.int64)
    q = tl.load(Q + rows[:, None] * stride_qt + head[:, None] * stride_qh + d[None, :], mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + rows[:, None] * stride_dot + head[:, None] * stride_doh + d[None, :], mask=row_ok[:, None],
                 other=0.0)  # fmt: skip
    lse = tl.load(LSE + rows * stride_lse + head, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTA + rows * stride_lse + head, mask=row_ok, other=0.0)
    K += kv_head * stride_kh
    V += kv_head * stride_vh
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    below = (first // BLOCK_N) * BLOCK_N  # keys before this are visible to every row of the block
    dq = _dq_tiles(dq, q, do, lse, delta, token, K, V, seq_start, 0, below, end, scale_log2, stride_kt, stride_vt,
                   HEAD_DIM, BLOCK_N, MASKED=False)  # fmt: skip
    dq = _dq_tiles(dq, q, do, lse, delta, token, K, V, seq_start, below, end, end, scale_log2, stride_kt, stride_vt,
                   HEAD_DIM, BLOCK_N, MASKED=True)  # fmt: skip
    tl.store(DQ + rows[:, None] * stride_dqt + head[:, None] * stride_dqh + d[None, :],
             (dq * scale).to(DQ.dtype.element_ty), mask=row_ok[:, None])  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# Launch settings


def _config(block_m: int, block_n: int, num_warps: int, num_stages: int) -> dict:
    return {"BLOCK_M": block_m, "BLOCK_N": block_n, "num_warps": num_warps, "num_stages": num_stages}


# head dim -> configs, per class of GPU. All configs of one entry share BLOCK_M, so the work table (a row per
# BLOCK_M // group tokens) is known before autotune picks. Chosen by compiling ahead of time for each architecture
# (benchmarks/kernels_aot.py; tests/test_kernels_compile.py holds them to it): each fits the class's shared memory
# and none spills. 128-key tiles spill on sm_80/sm_86/sm_89, so only sm_90 and newer get them.
HOPPER_CONFIGS = {
    64: [_config(128, 128, 8, 3)],
    128: [_config(128, 64, 8, 3), _config(128, 128, 8, 2)],
    256: [_config(64, 64, 8, 2)],
}
AMPERE_CONFIGS = {  # also Ada and consumer Blackwell (sm_120): their 99 KB of shared memory is the bound
    64: [_config(128, 64, 8, 3)],
    128: [_config(128, 32, 8, 3)],
    256: [_config(64, 32, 8, 2)],
}


# The backward's settings per head dim, the same on every GPU from sm_80 (chosen by compiling ahead of time: none
# spills on sm_80, sm_89 or sm_90; a dK/dV program with 64-row query tiles spills at head dims 64 and 128, so its tiles
# are 32 rows): "dkdv" is BLOCK_M query rows per tile x BLOCK_N keys per program, "dq" BLOCK_M query rows per program
# x BLOCK_N keys per tile.
BACKWARD_CONFIGS = {
    64: {"dkdv": _config(32, 32, 8, 2), "dq": _config(64, 64, 8, 2)},
    128: {"dkdv": _config(32, 64, 8, 2), "dq": _config(64, 64, 8, 2)},
    256: {"dkdv": _config(32, 32, 8, 2), "dq": _config(32, 32, 4, 2)},
}


def backward_configs(head_dim: int, group: int, dtype: torch.dtype, capability: tuple[int, int] | None) -> dict:
    """The backward's launch settings ({"dkdv": config, "dq": config}) on a GPU of `capability` (None: Triton's
    interpreter, which runs the same); {} where `configs` has none (the model runs SDPA and its backward there)."""
    if not configs(head_dim, group, dtype, capability):
        return {}
    found = BACKWARD_CONFIGS[max(64, head_dim)]
    if group > min(c["BLOCK_M"] for c in found.values()):
        raise ValueError(f"{group} query heads per key/value head: the backward packs 1 to {found['dkdv']['BLOCK_M']}")
    return found


def configs(head_dim: int, group: int, dtype: torch.dtype, capability: tuple[int, int] | None) -> list[dict]:
    """Launch settings (BLOCK_M, BLOCK_N, num_warps, num_stages) that triton.autotune chooses among on a GPU of
    `capability` for this head dim, GQA group and dtype; None is Triton's interpreter (exactly one config).

    [] where `qwen3_embed.ops` sends the work to SDPA instead: float32 on a GPU (its ieee dots spill on every
    architecture and overflow sm_80/sm_89 shared memory), and GPUs before sm_80. Head dims below 64 take the 64
    settings. `group` does not change the choice (one binary serves every ratio); it must fit in BLOCK_M rows."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype} is not one of float16, bfloat16, float32")
    if head_dim not in HEAD_DIMS:
        raise ValueError(f"head_dim={head_dim} is not supported; use {', '.join(map(str, HEAD_DIMS))}")
    key = max(64, head_dim)
    if capability is None:
        found = AMPERE_CONFIGS[key][:1]
    elif dtype == torch.float32 or capability < (8, 0):
        return []
    else:
        found = HOPPER_CONFIGS[key] if capability[0] in (9, 10) else AMPERE_CONFIGS[key]
    if group < 1 or group > found[0]["BLOCK_M"]:
        raise ValueError(f"{group} query heads per key/value head: the kernel packs 1 to {found[0]['BLOCK_M']}")
    return found


def diagonal_tiles(block_m: int, block_n: int, diag_n: int) -> int:
    """Masked tiles of `diag_n` keys that cover the diagonal of every query block, for any GQA group: a block of
    P = block_m // group tokens starts at a multiple of P and needs the keys from its tile start, first % block_n +
    P of them (counted here over every group and block start, which repeat every block_n positions)."""
    keys = max((first % block_n) + block_m // group for group in range(1, block_m + 1)
               for first in range(0, block_n * (block_m // group), block_m // group))  # fmt: skip
    return -(-keys // diag_n)


def tokens_per_block(head_dim: int, group: int, dtype: torch.dtype, capability: tuple[int, int] | None) -> int:
    """Query tokens per program (the work table's granularity) for these settings."""
    found = configs(head_dim, group, dtype, capability)
    if not found:
        raise ValueError(f"{dtype} attention has no kernel config on sm_{capability[0]}{capability[1]}: use SDPA")
    return found[0]["BLOCK_M"] // group


def capability_of(device: torch.device) -> tuple[int, int] | None:
    """The CUDA capability of `device`; None for a CPU tensor (Triton's interpreter)."""
    return torch.cuda.get_device_capability(device) if device.type == "cuda" else None


# ----------------------------------------------------------------------------------------------------------------
# The work table


def work_capacity(tokens: int, sequences: int, tokens_per_block: int) -> int:
    """Rows a work table needs for any pack of `tokens` tokens in `sequences` sequences."""
    return tokens // tokens_per_block + sequences


def _blocks(cu_seqlens: torch.Tensor, tokens_per_block: int, capacity: int) -> torch.Tensor:
    """[capacity, 4] int64 rows (sequence start, first position, end, sequence length) of every block of
    `tokens_per_block` positions of each sequence, then rows of zeros; tensor ops on cu_seqlens' device, no sync."""
    cu = cu_seqlens.long()
    sequences = cu.numel() - 1
    if sequences <= 0 or capacity == 0:
        return torch.zeros(capacity, 4, dtype=torch.long, device=cu.device)
    lengths = cu[1:] - cu[:-1]
    blocks = (lengths + tokens_per_block - 1) // tokens_per_block  # [B]
    block_cu = torch.cumsum(blocks, 0)  # [B]: one past each sequence's last block
    slot = torch.arange(capacity, device=cu.device)
    seq = torch.searchsorted(block_cu, slot, right=True)  # [capacity]; B for a spare row
    used = seq < sequences
    seq = seq.clamp(max=sequences - 1)
    first = (slot - (block_cu[seq] - blocks[seq])) * tokens_per_block
    end = torch.minimum(first + tokens_per_block, lengths[seq])
    return torch.stack([cu[seq], first, end, lengths[seq]], 1) * used[:, None]


def work_table(
    cu_seqlens: torch.Tensor, tokens: int, tokens_per_block: int, capacity: int | None = None
) -> torch.Tensor:
    """[capacity, 3] int32 rows (sequence start, first query position, end) of every block of `tokens_per_block`
    queries in a pack of `tokens` tokens, heaviest (most keys) first, then spare rows (0, 0, 0). Tensor ops on
    cu_seqlens' device, no sync: a CUDA graph can capture it. The default capacity is `work_capacity`'s."""
    sequences = cu_seqlens.numel() - 1
    capacity = work_capacity(tokens, sequences, tokens_per_block) if capacity is None else capacity
    table = _blocks(cu_seqlens, tokens_per_block, capacity)[:, :3]
    order = torch.sort(table[:, 2], descending=True, stable=True).indices  # a block visits `end` keys
    return table[order].to(torch.int32)


def key_table(cu_seqlens: torch.Tensor, tokens: int, keys_per_block: int) -> torch.Tensor:
    """The dK/dV kernel's table: [capacity, 4] int32 rows (sequence start, first key, end, sequence length) of every
    block of `keys_per_block` keys, heaviest (most queries) first, then spare rows of zeros; no sync."""
    table = _blocks(cu_seqlens, keys_per_block, work_capacity(tokens, cu_seqlens.numel() - 1, keys_per_block))
    order = torch.sort(table[:, 3] - table[:, 1], descending=True, stable=True).indices
    return table[order].to(torch.int32)


# ----------------------------------------------------------------------------------------------------------------
# The launch, and the wrapper registered as a PyTorch custom op


@dataclass(frozen=True)
class Variant:
    """How a launch sets the kernel's switches: the default, or one of `qwen3_embed.kernels.experimental`'s."""

    name: str = "base"
    diag_n: int | None = None  # keys per tile on the diagonal (None: 64, or BLOCK_N when smaller)
    tma: bool = False  # K/V tiles below the diagonal through tensor descriptors
    pre_hook: Callable[[dict], None] | None = None  # an autotune pre-hook (the TMA variant sets its descriptors')

    def flags(self, config: dict) -> dict:
        """The kernel's constexpr switches under a config."""
        diag_n = min(self.diag_n or 64, config["BLOCK_N"])
        tiles = diagonal_tiles(config["BLOCK_M"], config["BLOCK_N"], diag_n)
        return {"DIAG_N": diag_n, "DIAG_TILES": tiles, "TMA": self.tma}


BASE = Variant()


def tokens_bucket(tokens: int) -> int:
    """The autotune key's token count: the next power of two from 1024 to 131072 (a config per bucket)."""
    return min(max(1024, 1 << max(0, tokens - 1).bit_length()), 1 << 17)


_TUNERS: dict[tuple, triton.runtime.Autotuner] = {}  # (variant, configs) -> the kernel under triton.autotune


def _tuned(variant: Variant, settings: tuple[tuple[int, int, int, int], ...]) -> triton.runtime.Autotuner:
    """The kernel under triton.autotune over these configs (BLOCK_M, BLOCK_N, num_warps, num_stages) for a variant,
    keyed by head dim, tensor dtypes and the token-count bucket."""
    if (variant, settings) not in _TUNERS:
        tuned = []
        for block_m, block_n, warps, stages in settings:
            flags = variant.flags(_config(block_m, block_n, warps, stages))
            meta = {"BLOCK_M": block_m, "BLOCK_N": block_n, **flags}
            tuned.append(triton.Config(meta, warps, stages, pre_hook=variant.pre_hook))
        _TUNERS[variant, settings] = triton.autotune(tuned, key=["HEAD_DIM", "tokens_bucket"])(_attention_kernel)
    return _TUNERS[variant, settings]


def _settings(found: list[dict]) -> tuple[tuple[int, int, int, int], ...]:
    return tuple((c["BLOCK_M"], c["BLOCK_N"], c["num_warps"], c["num_stages"]) for c in found)


def launch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    work: torch.Tensor,
    scale: float,
    variant: Variant = BASE,
    descriptors: tuple = (None, None),
    lse: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run the kernel (autotuned over `configs`) on checked inputs and a work table; a fresh output, and each row's
    log-sum-exp written into `lse` [T, Hq] float32 when given."""
    t, hq, d = q.shape
    hkv = k.shape[1]
    out = torch.empty_like(q)
    if t == 0 or work.shape[0] == 0:
        return out
    kernel = _tuned(variant, _settings(configs(d, hq // hkv, q.dtype, capability_of(q.device))))
    # The default runs inside the custom op, where torch.compile may trace it through wrap_triton; the variants run
    # outside it, never traced, and launch directly (torch's tracing wrapper refuses their autotune pre-hooks, and
    # outside an op it costs ~0.5 ms of host time per call)
    runner = torch.library.wrap_triton(kernel) if variant == BASE else kernel
    with on_device(q):
        runner[(work.shape[0], hkv)](
            q, k, v, out, lse, *descriptors, work, scale * LOG2_E, hq // hkv, tokens_bucket(t),
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), out.stride(0), out.stride(1),
            hq, HEAD_DIM=d,
        )  # fmt: skip
    return out


@torch.library.triton_op("qwen3_embed::varlen_attention", mutates_args=())
def _attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, work: torch.Tensor, scale: float) -> torch.Tensor:
    return launch(q, k, v, work, scale)


def delta_rows(head_dim: int) -> int:
    """(token, head) rows per program of the backward's preprocessing pass."""
    return 4096 // head_dim


def launch_backward(
    grad: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    cu_seqlens: torch.Tensor,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dQ, dK, dV of the forward that gave `out` and `lse` for the output gradient `grad`: D = rowsum(dO * O), then
    the dK/dV kernel over key blocks (`key_table`) and the dQ kernel over query blocks (`work_table`)."""
    t, hq, d = q.shape
    hkv = k.shape[1]
    group = hq // hkv
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if t == 0:
        return dq, dk, dv
    found = backward_configs(d, group, q.dtype, capability_of(q.device))
    delta = torch.empty(t, hq, dtype=torch.float32, device=q.device)
    dkdv, dq_config = found["dkdv"], found["dq"]
    keys = key_table(cu_seqlens, t, dkdv["BLOCK_N"])
    work = work_table(cu_seqlens, t, dq_config["BLOCK_M"] // group)
    strides = (q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), grad.stride(0),
               grad.stride(1))  # fmt: skip
    with on_device(q):
        torch.library.wrap_triton(_attention_delta_kernel)[(triton.cdiv(t * hq, delta_rows(d)),)](
            out, grad, delta, t * hq, hq, out.stride(0), out.stride(1), grad.stride(0), grad.stride(1),
            HEAD_DIM=d, ROWS=delta_rows(d),
        )  # fmt: skip
        torch.library.wrap_triton(_attention_dkdv_kernel)[(keys.shape[0], hkv)](
            q, k, v, grad, lse, delta, dk, dv, keys, scale, scale * LOG2_E, group, *strides,
            dk.stride(0), dk.stride(1), dv.stride(0), dv.stride(1), hq,
            HEAD_DIM=d, BLOCK_M=dkdv["BLOCK_M"], BLOCK_N=dkdv["BLOCK_N"], num_warps=dkdv["num_warps"],
            num_stages=dkdv["num_stages"],
        )  # fmt: skip
        torch.library.wrap_triton(_attention_dq_kernel)[(work.shape[0], hkv)](
            q, k, v, grad, lse, delta, dq, work, scale, scale * LOG2_E, group, *strides, dq.stride(0), dq.stride(1), hq,
            HEAD_DIM=d, BLOCK_M=dq_config["BLOCK_M"], BLOCK_N=dq_config["BLOCK_N"], num_warps=dq_config["num_warps"],
            num_stages=dq_config["num_stages"],
        )  # fmt: skip
    return dq, dk, dv


@torch.library.triton_op("qwen3_embed::varlen_attention_lse", mutates_args=())
def _attention_lse_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, work: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward for training: the output and each row's log-sum-exp [T, Hq] (what the backward recomputes P
    from); cu_seqlens is kept for the backward's tables."""
    lse = torch.empty(q.shape[0], q.shape[1], dtype=torch.float32, device=q.device)
    return launch(q, k, v, work, scale, lse=lse), lse


@torch.library.triton_op("qwen3_embed::varlen_attention_backward", mutates_args=())
def _attention_backward_op(
    grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
    cu_seqlens: torch.Tensor, scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    return launch_backward(grad, q, k, v, out, lse, cu_seqlens, scale)


def _save_for_backward(ctx, inputs: tuple, output: tuple) -> None:
    q, k, v, cu_seqlens, _, ctx.scale = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, out, lse, cu_seqlens)


def _backward(ctx, grad: torch.Tensor, _: torch.Tensor) -> tuple:
    q, k, v, out, lse, cu_seqlens = ctx.saved_tensors
    dq, dk, dv = torch.ops.qwen3_embed.varlen_attention_backward(
        grad.contiguous(), q, k, v, out, lse, cu_seqlens, ctx.scale
    )
    return dq, dk, dv, None, None, None


torch.library.register_autograd("qwen3_embed::varlen_attention_lse", _backward, setup_context=_save_for_backward)


def autotune_choices() -> list[dict]:
    """The configs autotune has chosen in this process (variant, head dim, token bucket, dtypes, config); a tuner
    with a single config chooses nothing and reports that config for every key."""
    choices = []
    for (variant, _), tuner in _TUNERS.items():
        chosen = tuner.cache.items() if len(tuner.configs) > 1 else [(("any", "any"), tuner.configs[0])]
        for key, config in chosen:
            launch = {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages}
            choices.append({"variant": variant.name, "head_dim": key[0], "tokens_bucket": key[1],
                            "dtypes": list(key[2:]), "candidates": len(tuner.configs), **launch})  # fmt: skip
    return choices


def chosen_config(q: torch.Tensor, k: torch.Tensor, variant: Variant = BASE) -> dict | None:
    """The config autotune chose for q's shape and dtype at q's token count (None before the first call)."""
    found = configs(q.shape[2], q.shape[1] // k.shape[1], q.dtype, capability_of(q.device))
    tuner = _tuned(variant, _settings(found))
    chosen = [c for key, c in tuner.cache.items() if key[:2] == (q.shape[2], tokens_bucket(q.shape[0]))]
    for config in tuner.configs if len(tuner.configs) == 1 else chosen:
        return {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages}
    return None


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """q [T, Hq, D], k and v [T, Hkv, D] of one dtype the kernel takes, on one device, each row contiguous."""
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(
            f"q, k and v must be [tokens, heads, head_dim], got {list(q.shape)}, {list(k.shape)}, {list(v.shape)}"
        )
    t, hq, d = q.shape
    if k.shape != v.shape or k.shape[0] != t or k.shape[2] != d:
        raise ValueError(
            f"k {list(k.shape)} and v {list(v.shape)} must both be [{t}, kv_heads, {d}] for q {list(q.shape)}"
        )
    if k.shape[1] == 0 or hq % k.shape[1]:
        raise ValueError(f"{hq} query heads are not a multiple of {k.shape[1]} key/value heads")
    if q.dtype not in DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(
            f"q, k, v are {q.dtype}, {k.dtype}, {v.dtype}; they must share one of float16, bfloat16, float32"
        )
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"q, k, v are on {q.device}, {k.device}, {v.device}; they must share one device")
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError("q, k and v must have a contiguous last dimension")


def work_for(q: torch.Tensor, k: torch.Tensor, cu_seqlens: torch.Tensor, work: torch.Tensor | None) -> torch.Tensor:
    """The pack's work table: `work` checked, or, without it, built here from cu_seqlens (checked: a device sync)."""
    t, hq, d = q.shape
    if work is None:
        check_cu_seqlens(cu_seqlens, t, q.device)
        return work_table(cu_seqlens, t, tokens_per_block(d, hq // k.shape[1], q.dtype, capability_of(q.device)))
    if work.dim() != 2 or work.shape[1] != 3 or work.dtype != torch.int32 or work.device != q.device:
        raise ValueError(f"work must be an int32 [rows, 3] table on {q.device}, got {work.dtype} {list(work.shape)}")
    return work


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    scale: float,
    work: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal GQA attention within each packed sequence: q [T, Hq, D], k and v [T, Hkv, D] -> [T, Hq, D].

    cu_seqlens [B+1] int32 on q's device. `work` is the pack's work table (`work_table`, for `tokens_per_block`
    tokens per block); without it the offsets are checked (a device sync) and the table built here. Runs the custom
    op `torch.ops.qwen3_embed.varlen_attention`; where a gradient is needed, `varlen_attention_lse`, which also saves
    each row's log-sum-exp for the backward kernels (registered as its autograd).
    """
    check_inputs(q, k, v)
    tokens_per_block(q.shape[2], q.shape[1] // k.shape[1], q.dtype, capability_of(q.device))  # a config, or why not
    work = work_for(q, k, cu_seqlens, work)
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        backward_configs(q.shape[2], q.shape[1] // k.shape[1], q.dtype, capability_of(q.device))  # or why not
        return torch.ops.qwen3_embed.varlen_attention_lse(q, k, v, cu_seqlens, work, scale)[0]
    return torch.ops.qwen3_embed.varlen_attention(q, k, v, work, scale)
