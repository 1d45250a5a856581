"""Attention over a packed batch: the plan (a batch's offsets, checked once on the host, and what backends derive
from them) and the reference attention."""

from __future__ import annotations

import subprocess
import sys

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


def test_the_reference_attention_keeps_each_sequence_to_itself_and_is_causal():
    """One sequence alone and inside a pack give the same rows; a query never sees a later key."""
    q, k, v = (torch.randn(9, h, 16) for h in (4, 2, 2))
    packed = ops.varlen_attention(q, k, v, [0, 4, 9], 0.25)
    alone = ops.varlen_attention(q[4:], k[4:], v[4:], [0, 5], 0.25)
    torch.testing.assert_close(packed[4:], alone, rtol=0, atol=0)
    k2, v2 = k.clone(), v.clone()
    k2[6:], v2[6:] = 0, 0
    torch.testing.assert_close(ops.varlen_attention(q, k2, v2, [0, 4, 9], 0.25)[:6], packed[:6], rtol=0, atol=0)


def test_importing_the_package_never_imports_the_compiler():
    """torch's compiler takes about a second to import; only compiled layers and the kernels need it."""
    code = "import sys, qwen3_embed; sys.exit('torch._dynamo' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
