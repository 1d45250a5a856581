"""The Triton varlen attention kernel against a float64 reference: on CPU through Triton's interpreter, on a GPU
when there is one."""

from __future__ import annotations

import math

import pytest
import torch

from qwen3_embed import ops
from qwen3_embed.kernels.attention import varlen_attention

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + (
    [torch.bfloat16] if DEVICE == "cuda" else []
)  # bf16 is broken in the interpreter
FLOOR = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def pack(lengths, hq, hkv, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = sum(lengths)
    q, k, v = (torch.randn(t, h, d, generator=g).to(DEVICE, dtype) for h in (hq, hkv, hkv))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)
    return q, k, v, cu


def attention64(q, k, v, cu, scale):
    """Causal GQA attention in float64, one sequence at a time, with the softmax written out."""
    group = q.shape[1] // k.shape[1]
    out = torch.empty(q.shape, dtype=torch.float64)
    bounds = cu.tolist()
    for a, b in zip(bounds[:-1], bounds[1:]):
        qs, ks, vs = (x[a:b].double().cpu().transpose(0, 1) for x in (q, k, v))  # [H, L, D]
        ks, vs = ks.repeat_interleave(group, 0), vs.repeat_interleave(group, 0)
        s = qs @ ks.transpose(1, 2) * scale
        s = s.masked_fill(torch.ones(b - a, b - a, dtype=torch.bool).triu(1), -math.inf)
        out[a:b] = (s.softmax(-1) @ vs).transpose(0, 1)
    return out


def check(lengths, hq, hkv, d, dtype):
    q, k, v, cu = pack(lengths, hq, hkv, d, dtype)
    scale = d**-0.5
    out = varlen_attention(q, k, v, cu, scale)
    exact = attention64(q, k, v, cu, scale)
    same_dtype = ops.varlen_attention(q, k, v, cu, scale, backend="torch")
    assert out.shape == q.shape and out.dtype == dtype
    assert torch.isfinite(out).all(), "some outputs were not written"
    kernel_error = (out.double().cpu() - exact).abs().max().item()
    torch_error = (same_dtype.double().cpu() - exact).abs().max().item()
    assert kernel_error <= 2 * torch_error + FLOOR[dtype], f"kernel {kernel_error:.3g}, torch {torch_error:.3g}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group", [1, 2, 4, 8])
@pytest.mark.parametrize("d", [64, 128])
def test_gqa_ratios_and_head_dims(poisoned, dtype, group, d):
    check([1, 7, 33, 130], hq=2 * group, hkv=2, d=d, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "lengths",
    [[1], [1, 1, 1], [64], [65], [200], [3, 0, 5], [17, 1, 63, 129, 2, 31, 64, 5, 9, 40]],
    ids=["one-token", "ones", "one-block", "block+1", "long", "empty-sequence", "many"],
)
def test_sequence_lengths(poisoned, dtype, lengths):
    check(lengths, hq=4, hkv=2, d=64, dtype=dtype)


def test_other_head_dims(poisoned):
    check([5, 40], hq=2, hkv=1, d=32, dtype=torch.float32)
    check([5, 40], hq=2, hkv=1, d=256, dtype=torch.float32)


def test_sequences_do_not_see_each_other():
    """Changing one sequence's keys leaves every other sequence's output bit for bit the same."""
    q, k, v, cu = pack([9, 20, 4], 4, 2, 64, torch.float32)
    before = varlen_attention(q, k, v, cu, 0.125)
    k2, v2 = k.clone(), v.clone()
    k2[9:29] += 1.0
    v2[9:29] -= 1.0
    after = varlen_attention(q, k2, v2, cu, 0.125)
    assert torch.equal(before[:9], after[:9]) and torch.equal(before[29:], after[29:])
    assert not torch.equal(before[9:29], after[9:29])


def test_empty_pack():
    q, k, v, cu = pack([], 4, 2, 64, torch.float32)
    assert varlen_attention(q, k, v, cu, 0.125).shape == (0, 4, 64)


def test_bad_inputs_are_refused():
    q, k, v, cu = pack([3, 5], 4, 2, 64, torch.float32)
    with pytest.raises(ValueError, match="dtype torch.int64; it must be torch.int32"):
        varlen_attention(q, k, v, cu.long(), 0.125)
    with pytest.raises(ValueError, match="runs from 1 to 9; it must run from 0 to 8"):
        varlen_attention(q, k, v, cu + 1, 0.125)
    with pytest.raises(ValueError, match="runs from 0 to 7; it must run from 0 to 8"):
        varlen_attention(q, k, v, torch.tensor([0, 3, 7], dtype=torch.int32, device=DEVICE), 0.125)
    with pytest.raises(ValueError, match=r"decreases at index 2 \(5 -> 3\)"):
        varlen_attention(q, k, v, torch.tensor([0, 5, 3, 8], dtype=torch.int32, device=DEVICE), 0.125)
    with pytest.raises(ValueError, match="3 query heads are not a multiple of 2"):
        varlen_attention(q[:, :3], k, v, cu, 0.125)
    with pytest.raises(ValueError, match="head_dim=48 is not supported"):
        varlen_attention(q[..., :48], k[..., :48], v[..., :48], cu, 0.125)
    with pytest.raises(ValueError, match="must share one of"):
        varlen_attention(q, k.half(), v, cu, 0.125)
    with pytest.raises(ValueError, match=r"must both be \[8, kv_heads, 64\]"):
        varlen_attention(q, k[:7], v[:7], cu, 0.125)
    with pytest.raises(ValueError, match="contiguous last dimension"):
        varlen_attention(q, k.transpose(1, 2).contiguous().transpose(1, 2), v, cu, 0.125)
