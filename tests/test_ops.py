"""The ops seam: the attention plan (a batch's offsets, checked once on the host, and what backends derive from
them) and the CPU linear."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_on_the_cpu_pads_the_rows_oneDNN_sees_and_gives_F_linear(monkeypatch, dtype):
    """oneDNN keeps a kernel per row count: ops.linear hands it a few row counts only (memory stays bounded), at
    most 1/8 more rows than asked, and returns the caller's rows, equal to F.linear's."""
    seen = []
    pointwise = torch.ops.mkldnn._linear_pointwise
    record = lambda x, *args: seen.append(x.shape[0]) or pointwise(x, *args)  # noqa: E731
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", record)
    weight = torch.randn(48, 40).to(dtype)
    packed = ops.pack_linear_weight(weight)
    for rows in (1, 5, 64, 70):
        x = torch.randn(rows, 40).to(dtype)
        expected = F.linear(x.double(), weight.double()).to(dtype)
        for w in (weight, packed):
            out = ops.linear(x, w)
            assert out.shape == (rows, 48)
            torch.testing.assert_close(out, expected, rtol=0.02 if dtype == torch.bfloat16 else 1e-5, atol=1e-4)
    if packed.is_mkldnn:
        assert seen == [8, 8, 64, 72], seen
    assert [ops.padded_rows(n) for n in (1, 9, 100, 1000, 2047, 2048, 2049)] == [8, 16, 104, 1024, 2048, 2048, 2304]
    assert len({ops.padded_rows(n) for n in range(1, 8193)}) == 64


def test_importing_the_package_never_imports_the_compiler():
    """torch's compiler takes about a second to import; only compile_layers needs it."""
    code = "import sys, qwen3_embed; sys.exit('torch._dynamo' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
