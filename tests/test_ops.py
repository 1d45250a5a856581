"""The attention plan: a batch's offsets, checked once on the host, and what backends derive from them."""

from __future__ import annotations

import pytest
import torch

from qwen3_embed import ops


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
