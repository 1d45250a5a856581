"""Varlen causal grouped-query flash attention (forward) in Triton, over packed sequences.

q [T, Hq, D], k and v [T, Hkv, D] hold B sequences end to end; each query attends to the keys at or before it in
its own sequence. One program computes one block of a sequence's queries for one key/value head, with the
`group = Hq / Hkv` query heads that share that head packed as rows (row r is token r // group, head r % group of
the group), so each K/V tile is loaded once for all of them. Online softmax in float32 with `exp2`: the scale
(times log2 e) and the running maximum meet in one multiply-add before the `exp2`. Tiles above the diagonal are
never visited, tiles wholly below it run without masks; offsets are 64-bit.

Programs read their block from a work table, one row (sequence start, first query, end) per query block of the
whole pack, heaviest first; `work_table` builds it on the device without a sync, once per batch (`ops` keeps it
in the batch's attention plan, shared by every layer). Rows past the blocks are no-ops, so a table sized by
`work_capacity` serves any pack of that many tokens and sequences (a CUDA graph captures a fixed grid).

Launch settings: `configs(head_dim, group, dtype, capability)` lists what `triton.autotune` may choose on each
architecture (one config under Triton's interpreter); float32 has none on CUDA (its ieee dots spill on every
architecture and do not fit sm_80/sm_89 shared memory), so `ops` sends float32 to the PyTorch reference there.
Speed variants for the GPU run to time against the default (`VARIANTS`, on sm_90): 32-key tiles on the diagonal,
and K/V tiles through tensor descriptors (TMA). `launches` lists every compiled form for `qwen3_embed.kernels.aot`.

The PyTorch reference is `qwen3_embed.ops.varlen_attention_reference`.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from qwen3_embed.checks import check_cu_seqlens

LOG2_E = 1.4426950408889634
HEAD_DIMS = (16, 32, 64, 128, 256)

try:  # Triton 3.4 and newer: host-side tensor descriptors, for the TMA variant
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - older Triton
    TensorDescriptor = None


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
    K_DESC, V_DESC,  # tensor descriptors of k and v as [T, Hkv * D] (TMA), else None
    WORK,  # [capacity, 3] int32: sequence start, first query position, end (one past the block's last query)
    scale_log2,  # softmax scale x log2(e)
    group,  # query heads per key/value head (a runtime value: one binary serves every GQA ratio)
    tokens_bucket,  # the autotune key's token-count bucket (unused in the kernel)
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,  # rows: BLOCK_M // group tokens x group heads
    BLOCK_N: tl.constexpr,  # keys per tile below the diagonal
    DIAG_N: tl.constexpr,  # keys per tile on the diagonal
    TMA: tl.constexpr,
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
    # the diagonal spans fewer than max(BLOCK_M, BLOCK_N) keys: a few masked tiles, unrolled (as a loop it would be
    # software-pipelined like the one above, and the registers that costs make sm_80 spill)
    for i in tl.static_range(max(BLOCK_M, BLOCK_N) // DIAG_N):
        if below + i * DIAG_N < end:
            acc, m_i, l_i = _attend(acc, m_i, l_i, q, K, V, K_DESC, V_DESC, kv_head, seq_start, below + i * DIAG_N,
                                    below + (i + 1) * DIAG_N, token, end, scale_log2, stride_kt, stride_vt, HEAD_DIM,
                                    DIAG_N, MASKED=True, TMA=False)  # fmt: skip
    out = acc / l_i[:, None]
    tl.store(O + rows[:, None] * stride_ot + head[:, None] * stride_oh + d[None, :], out.to(O.dtype.element_ty),
             mask=row_ok[:, None])  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# Launch settings and variants

VARIANTS = {
    "base": "pointer loads (cp.async), the config's key tile on the diagonal too",
    "diag32": "32-key tiles on the diagonal (less masked work where a block holds fewer tokens than BLOCK_N)",
    "tma": "K/V tiles below the diagonal through tensor descriptors (TMA)",
}
DEFAULT_VARIANT = "base"  # until a GPU run measures another one faster; $QWEN3_EMBED_ATTENTION_VARIANT overrides it


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


def configs(head_dim: int, group: int, dtype: torch.dtype, capability: tuple[int, int] | None) -> list[dict]:
    """Launch settings (BLOCK_M, BLOCK_N, num_warps, num_stages) that triton.autotune chooses among on a GPU of
    `capability` for this head dim, GQA group and dtype; None is Triton's interpreter (exactly one config).

    [] where `qwen3_embed.ops` sends the work to SDPA instead: float32 on a GPU (its ieee dots spill on every
    architecture and overflow sm_80/sm_89 shared memory), and GPUs before sm_80. Head dims below 64 take the 64
    settings. `group` does not change the choice (one binary serves every ratio); it must fit in BLOCK_M rows."""
    if dtype not in _TRITON_DTYPES:
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


def variants(capability: tuple[int, int] | None, head_dim: int, dtype: torch.dtype) -> list[str]:
    """The variants that run on a GPU of `capability` at this head dim and dtype. Those other than the default are
    experiments for the GPU run to time, so they run where it times them, sm_90 (H100/H200) in bf16 at Qwen3's head
    dim, 128, and anywhere under Triton's interpreter, which checks their results (TMA needs Triton 3.4+)."""
    if capability is not None and (capability[0] != 9 or head_dim != 128 or dtype != torch.bfloat16):
        return [DEFAULT_VARIANT]
    return [v for v in VARIANTS if v != "tma" or TensorDescriptor is not None]


def _flags(variant: str, config: dict) -> dict:
    """The kernel's constexpr switches for a variant under a config."""
    return {"DIAG_N": min(32, config["BLOCK_N"]) if variant == "diag32" else config["BLOCK_N"], "TMA": variant == "tma"}


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


def work_table(
    cu_seqlens: torch.Tensor, tokens: int, tokens_per_block: int, capacity: int | None = None
) -> torch.Tensor:
    """[capacity, 3] int32 rows (sequence start, first query position, end) of every block of `tokens_per_block`
    queries in a pack of `tokens` tokens, heaviest (most keys) first, then spare rows (0, 0, 0). Tensor ops on
    cu_seqlens' device, no sync: a CUDA graph can capture it. The default capacity is `work_capacity`'s."""
    cu = cu_seqlens.long()
    sequences = cu.numel() - 1
    capacity = work_capacity(tokens, sequences, tokens_per_block) if capacity is None else capacity
    if sequences <= 0 or capacity == 0:
        return torch.zeros(capacity, 3, dtype=torch.int32, device=cu.device)
    lengths = cu[1:] - cu[:-1]
    blocks = (lengths + tokens_per_block - 1) // tokens_per_block  # [B]
    block_cu = torch.cumsum(blocks, 0)  # [B]: one past each sequence's last block
    slot = torch.arange(capacity, device=cu.device)
    seq = torch.searchsorted(block_cu, slot, right=True)  # [capacity]; B for a spare row
    used = seq < sequences
    seq = seq.clamp(max=sequences - 1)
    first = (slot - (block_cu[seq] - blocks[seq])) * tokens_per_block
    table = torch.stack([cu[seq], first, torch.minimum(first + tokens_per_block, lengths[seq])], 1) * used[:, None]
    order = torch.sort(table[:, 2], descending=True, stable=True).indices  # a block visits `end` keys
    return table[order].to(torch.int32)


# ----------------------------------------------------------------------------------------------------------------
# The wrapper, registered as a PyTorch custom op


def tokens_bucket(tokens: int) -> int:
    """The autotune key's token count: the next power of two from 1024 to 131072 (a config per bucket)."""
    return min(max(1024, 1 << max(0, tokens - 1).bit_length()), 1 << 17)


def _set_descriptor_blocks(nargs: dict) -> None:
    """A TMA config's pre-hook: the descriptors' tile is the config's BLOCK_N keys x the head dim."""
    for name in ("K_DESC", "V_DESC"):
        nargs[name].block_shape = [nargs["BLOCK_N"], nargs["HEAD_DIM"]]


_TUNERS: dict[tuple, triton.runtime.Autotuner] = {}  # (variant, configs) -> the kernel under triton.autotune


def _tuned(variant: str, settings: tuple[tuple[int, int, int, int], ...]) -> triton.runtime.Autotuner:
    """The kernel under triton.autotune over these configs (BLOCK_M, BLOCK_N, num_warps, num_stages) for a variant,
    keyed by head dim, tensor dtypes and the token-count bucket."""
    if (variant, settings) not in _TUNERS:
        tuned = []
        hook = _set_descriptor_blocks if variant == "tma" else None
        for block_m, block_n, warps, stages in settings:
            flags = _flags(variant, _config(block_m, block_n, warps, stages))
            tuned.append(triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n, **flags}, warps, stages, pre_hook=hook))
        _TUNERS[variant, settings] = triton.autotune(tuned, key=["HEAD_DIM", "tokens_bucket"])(_attention_kernel)
    return _TUNERS[variant, settings]


def autotune_choices() -> list[dict]:
    """The configs autotune has chosen in this process (variant, head dim, token bucket, dtypes, config); a tuner
    with a single config chooses nothing and reports that config for every key."""
    choices = []
    for (variant, _), tuner in _TUNERS.items():
        chosen = tuner.cache.items() if len(tuner.configs) > 1 else [(("any", "any"), tuner.configs[0])]
        for key, config in chosen:
            launch = {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages}
            choices.append({"variant": variant, "head_dim": key[0], "tokens_bucket": key[1], "dtypes": list(key[2:]),
                            "candidates": len(tuner.configs), **launch})  # fmt: skip
    return choices


def chosen_config(q: torch.Tensor, k: torch.Tensor, variant: str | None = None) -> dict | None:
    """The config autotune chose for q's shape and dtype at q's token count (None before the first call)."""
    variant = variant or os.environ.get("QWEN3_EMBED_ATTENTION_VARIANT") or DEFAULT_VARIANT
    found = configs(q.shape[2], q.shape[1] // k.shape[1], q.dtype, capability_of(q.device))
    tuner = _tuned(variant, _settings(found))
    chosen = [c for key, c in tuner.cache.items() if key[:2] == (q.shape[2], tokens_bucket(q.shape[0]))]
    for config in tuner.configs if len(tuner.configs) == 1 else chosen:
        return {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages}
    return None


def _settings(found: list[dict]) -> tuple[tuple[int, int, int, int], ...]:
    return tuple((c["BLOCK_M"], c["BLOCK_N"], c["num_warps"], c["num_stages"]) for c in found)


@torch.library.triton_op("qwen3_embed::varlen_attention", mutates_args=())
def _attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, work: torch.Tensor, scale: float,
                  variant: str) -> torch.Tensor:  # fmt: skip
    t, hq, d = q.shape
    hkv = k.shape[1]
    found = configs(d, hq // hkv, q.dtype, capability_of(q.device))
    out = torch.empty_like(q)
    if t == 0 or work.shape[0] == 0:
        return out
    k_desc = v_desc = None
    if variant == "tma":  # [T, Hkv * D] views; the pre-hook sets the tile to the chosen BLOCK_N
        k_desc, v_desc = (TensorDescriptor(x, [t, hkv * d], [x.stride(0), 1], [found[0]["BLOCK_N"], d]) for x in (k, v))
    kernel = _tuned(variant, _settings(found))
    torch.library.wrap_triton(kernel)[(work.shape[0], hkv)](
        q, k, v, out, k_desc, v_desc, work, scale * LOG2_E, hq // hkv, tokens_bucket(t),
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), out.stride(0), out.stride(1),
        HEAD_DIM=d,
    )  # fmt: skip
    return out


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    scale: float,
    work: torch.Tensor | None = None,
    variant: str | None = None,
) -> torch.Tensor:
    """Causal GQA attention within each packed sequence: q [T, Hq, D], k and v [T, Hkv, D] -> [T, Hq, D].

    cu_seqlens [B+1] int32 on q's device. `work` is the pack's work table (`work_table`, for BLOCK_M // group tokens
    per block); without it the offsets are checked (a device sync) and the table built here. `variant` is one of
    VARIANTS (default: $QWEN3_EMBED_ATTENTION_VARIANT, else DEFAULT_VARIANT). Runs the custom op
    `torch.ops.qwen3_embed.varlen_attention`.
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
    if hkv == 0 or hq % hkv:
        raise ValueError(f"{hq} query heads are not a multiple of {hkv} key/value heads")
    if q.dtype not in _TRITON_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(
            f"q, k, v are {q.dtype}, {k.dtype}, {v.dtype}; they must share one of float16, bfloat16, float32"
        )
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"q, k, v are on {q.device}, {k.device}, {v.device}; they must share one device")
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError("q, k and v must have a contiguous last dimension")
    capability = capability_of(q.device)
    variant = variant or os.environ.get("QWEN3_EMBED_ATTENTION_VARIANT") or DEFAULT_VARIANT
    if variant not in VARIANTS:
        raise ValueError(f"attention variant {variant!r} is not one of {', '.join(VARIANTS)}")
    if variant not in variants(capability, d, q.dtype):
        raise ValueError(f"attention variant {variant!r} does not run here; {variants(capability, d, q.dtype)} do")
    if variant == "tma" and any(x.stride(1) != d or (x.stride(0) * x.element_size()) % 16 or x.data_ptr() % 16
                                for x in (k, v)):  # fmt: skip
        raise ValueError("the tma variant needs k and v with contiguous heads and 16-byte aligned rows")
    per_block = tokens_per_block(d, hq // hkv, q.dtype, capability)
    if work is None:
        check_cu_seqlens(cu_seqlens, t, q.device)
        work = work_table(cu_seqlens, t, per_block)
    elif work.dim() != 2 or work.shape[1] != 3 or work.dtype != torch.int32 or work.device != q.device:
        raise ValueError(f"work must be an int32 [rows, 3] table on {q.device}, got {work.dtype} {list(work.shape)}")
    return torch.ops.qwen3_embed.varlen_attention(q, k, v, work, scale, variant)


# ----------------------------------------------------------------------------------------------------------------
# Ahead-of-time compile specs (qwen3_embed.kernels.aot)

_TRITON_DTYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
_STRIDES = ("stride_qt", "stride_qh", "stride_kt", "stride_kh", "stride_vt", "stride_vh", "stride_ot", "stride_oh")
AOT_HEAD_DIMS = (64, 128, 256)
AOT_GROUPS = (1, 2, 4, 8)


def launches(arch: int) -> list:
    """Every compiled form the wrapper can launch on sm_`arch` (head dims 64/128/256, GQA groups 1 to 8, 16-bit
    dtypes, each variant the architecture runs): one binary serves every group, so groups share a launch."""
    capability = divmod(arch, 10)
    found = {}
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        for head_dim in AOT_HEAD_DIMS:
            for group in AOT_GROUPS:
                for config in configs(head_dim, group, dtype, capability):
                    for variant in variants(capability, head_dim, dtype):
                        spec = _launch_spec(dtype, head_dim, config, variant)
                        key = (spec.kernel, repr(sorted(spec.constexprs.items())), repr(sorted(spec.signature.items())),
                               spec.num_warps, spec.num_stages)  # fmt: skip
                        found.setdefault(key, spec).labels.setdefault("groups", []).append(group)
    return list(found.values())


def _launch_spec(dtype: torch.dtype, head_dim: int, config: dict, variant: str):
    """The kernel's compiled form for these settings, as a real launch on contiguous q, k, v specializes it."""
    from .aot import Launch

    t = _TRITON_DTYPES[dtype]
    flags = _flags(variant, config)
    constexprs = {"HEAD_DIM": head_dim, "BLOCK_M": config["BLOCK_M"], "BLOCK_N": config["BLOCK_N"], **flags}
    descriptor = f"tensordesc<{t}[{config['BLOCK_N']}, {head_dim}]>" if flags["TMA"] else "constexpr"
    signature = {"Q": f"*{t}", "K": f"*{t}", "V": f"*{t}", "O": f"*{t}", "K_DESC": descriptor, "V_DESC": descriptor,
                 "WORK": "*i32", "scale_log2": "fp32", "group": "i32", "tokens_bucket": "i32",
                 **dict.fromkeys(_STRIDES, "i32"), **dict.fromkeys(constexprs, "constexpr")}  # fmt: skip
    if not flags["TMA"]:
        constexprs.update(K_DESC=None, V_DESC=None)
    labels = {"op": "attention", "dtype": t, "head_dim": head_dim, "variant": variant, "BLOCK_M": config["BLOCK_M"],
              "BLOCK_N": config["BLOCK_N"], "DIAG_N": flags["DIAG_N"]}  # fmt: skip
    return Launch(__name__, "_attention_kernel", signature, constexprs, ("Q", "K", "V", "O", "WORK", *_STRIDES),
                  config["num_warps"], config["num_stages"], labels)  # fmt: skip
