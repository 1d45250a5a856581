"""The torch backend's attention: SDPA over groups of near-equal sequences, right-padded, against the float64
reference; and the groups it forms."""

from __future__ import annotations

import pytest
import torch
from test_kernels_attention import FLOOR, attention64, pack

from qwen3_embed import ops

# Short sequences that group, long ones that run alone, empty ones, lengths in no order.
LENGTHS = [5, 300, 17, 1, 0, 16, 15, 40, 3, 260, 33, 2, 18]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("hq, hkv, d", [(4, 2, 64), (3, 3, 16), (8, 1, 32)])
def test_grouped_sdpa_against_float64(poisoned, dtype, hq, hkv, d):
    q, k, v, cu = pack(LENGTHS, hq, hkv, d, dtype)
    plan = ops.AttentionPlan(cu, q.shape[0], q.device)
    out = ops.varlen_attention_sdpa(q, k, v, plan, d**-0.5)
    exact = attention64(q, k, v, cu, d**-0.5)
    per_sequence = ops.varlen_attention_reference(q, k, v, plan.bounds, d**-0.5)
    assert torch.isfinite(out).all(), "some rows were not written"
    error = (out.double() - exact).abs().max().item()
    reference_error = (per_sequence.double() - exact).abs().max().item()
    assert error <= 2 * reference_error + FLOOR[dtype], f"grouped {error:.3g}, per sequence {reference_error:.3g}"


def test_groups_cover_every_sequence_once_within_the_padding_bound():
    bounds = [0, *torch.tensor(LENGTHS).cumsum(0).tolist()]
    calls = ops.sdpa_groups(bounds, torch.device("cpu"))
    covered = []
    for call in calls:
        if isinstance(call, ops.PaddedGroup):
            lengths = torch.bincount(call.rows // call.longest).tolist()
            assert call.count == len(lengths) > 1 and max(lengths) == call.longest < ops.ALONE_FROM
            padded, real = call.count * call.longest**2, sum(n * n for n in lengths)
            assert padded <= (1 + ops.MAX_PADDING) * real
            covered += call.tokens.tolist()
        else:
            covered += list(range(*call))
    assert sorted(covered) == list(range(bounds[-1]))
    alone = [end - start for start, end in (c for c in calls if not isinstance(c, ops.PaddedGroup))]
    assert {300, 260} <= set(alone)
    assert sum(isinstance(c, ops.PaddedGroup) for c in calls) >= 2


def test_the_plan_makes_the_groups_once(monkeypatch):
    q, k, v, cu = pack([3, 4, 5], 2, 1, 16, torch.float32)
    plan = ops.AttentionPlan(cu, q.shape[0], q.device)
    made = []
    groups = ops.sdpa_groups
    monkeypatch.setattr(ops, "sdpa_groups", lambda *a: made.append(1) or groups(*a))
    first = ops.varlen_attention(q, k, v, plan, 0.25, backend="torch")
    again = ops.varlen_attention(q, k, v, plan, 0.25, backend="torch")
    assert made == [1] and torch.equal(first, again)


def test_a_plan_from_host_offsets_never_reads_the_device_tensor(monkeypatch):
    """The pipeline's plan: offsets checked on the host where the batch was packed, so a GPU is never waited on."""
    cu = torch.tensor([0, 3, 7], dtype=torch.int32)
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: pytest.fail("the device offsets were read"))
    plan = ops.AttentionPlan(cu, 7, cu.device, bounds=[0, 3, 7])
    assert plan.bounds == [0, 3, 7]
    with pytest.raises(ValueError, match="cu_seqlens decreases at index 2"):
        ops.AttentionPlan(torch.zeros(4, dtype=torch.int32), 7, cu.device, bounds=[0, 3, 2, 7])
    with pytest.raises(ValueError, match="it must run from 0 to 7"):
        ops.AttentionPlan(cu, 7, cu.device, bounds=[0, 3, 6])


def test_pipeline_batches_carry_their_host_offsets():
    from qwen3_embed.tokenize import pack

    batch = pack([[1, 2, 3], [4], [5, 6]], [2, 0, 1])
    assert batch.bounds == batch.cu_seqlens.tolist() == [0, 3, 4, 6]
    assert batch.plan().bounds == [0, 3, 4, 6]
