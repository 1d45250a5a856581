"""The bf16 path of the RMSNorm and attention kernels, on a CPU, by emulation.

Triton's interpreter cannot run bf16 (its bf16 dots give garbage and its float32 -> bf16 casts truncate), so these
tests run each kernel in float32 under the interpreter with every bf16 rounding point of the bf16 kernel reproduced:
the inputs (what the kernel loads) are bf16 values, and every explicit float32 cast in the kernel (`.to(dtype)`,
which is bf16 in a bf16 launch: the normalized row before the weight, the RoPE products, P before the P.V dot, every
stored output) rounds to bf16, to nearest even as the GPU's `cvt.rn.bf16.f32` does. The kernels' other casts are
`.to(tl.float32)` of a loaded bf16 value, which the rounding leaves unchanged. Each result is checked against a
float64 reference with the bf16 tolerances of the GPU tests.

Not covered here (only a GPU run covers them: the tests marked `gpu` run bf16 on the GPU): the code Triton
generates for bf16 (layouts, tensor-core MMA and its accumulation order, shared memory and async copies, the TMA
variant's descriptors); whether the interpreter's launch settings are a GPU's (under the interpreter every dtype
gets the one config `configs(..., None)` gives); and float32 -> bf16 conversion by the hardware itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import triton.language as tl
from test_kernels_attention import attention64
from test_kernels_rmsnorm import norm64, qk_norm_rope_reference, rms_norm_reference, rope64, rope_tables
from triton.runtime import interpreter
from triton.runtime.interpreter import TensorHandle

from qwen3_embed import ops
from qwen3_embed.kernels import attention, rmsnorm

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the kernel tests run bf16 itself")
# The GPU tests' bf16 floors (tests/test_kernels_rmsnorm.py, tests/test_kernels_attention.py).
NORM_FLOOR, ATTENTION_FLOOR = 8e-3, 1.6e-2
INTERPRETER = Path(interpreter.__file__)
KERNELS = Path(attention.__file__).parent  # the kernels' source (experimental/ too)


def bf16(x: torch.Tensor) -> torch.Tensor:
    """x rounded to bf16 (to nearest even), held in float32."""
    return x.bfloat16().float()


def written_in_the_kernels() -> bool:
    """Whether the cast being made is written in the kernels' source: Triton's own functions cast too (`tl.sum` casts
    its input to the sum's dtype, float32 to float32), and those casts do not round in a bf16 kernel."""
    frame = sys._getframe(2)  # 0: this function, 1: the cast
    while frame is not None and Path(frame.f_code.co_filename) == INTERPRETER:
        frame = frame.f_back  # the interpreter's wrappers
    return frame is not None and Path(frame.f_code.co_filename).is_relative_to(KERNELS)


@pytest.fixture
def bf16_casts(monkeypatch) -> dict:
    """While on, a float32 kernel under the interpreter rounds to bf16 at each float32 -> float32 cast its source
    writes, where the bf16 kernel rounds; Triton's own casts, casts to other types and the implicit casts of the
    arithmetic are untouched. The state counts the casts rounded; `on` can be switched off for a plain float32 run."""
    original = tl.core.tensor.to
    state = {"on": True, "rounded": 0}

    def to(self, dtype, fp_downcast_rounding=None, bitcast=False, _semantic=None):
        out = original(self, dtype, fp_downcast_rounding, bitcast, _semantic=_semantic)
        if not state["on"] or bitcast or self.dtype != tl.float32 or out.dtype != tl.float32:
            return out
        if not written_in_the_kernels():
            return out
        state["rounded"] += 1
        values = torch.from_numpy(np.asarray(out.handle.data, dtype=np.float32))
        return tl.core.tensor(TensorHandle(bf16(values).numpy(), tl.float32), out.type)

    to.__triton_builtin__ = True  # the interpreter hands its semantic to builtins only
    monkeypatch.setattr(tl.core.tensor, "to", to)
    return state


def inputs(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return bf16(torch.randn(shape, generator=g) * 3 + 0.5), bf16(torch.rand(shape[-1], generator=g) + 0.5)


def assert_bf16_close(out: torch.Tensor, same_dtype: torch.Tensor, exact: torch.Tensor, floor: float) -> None:
    """Every output is a bf16 value, and its error at most twice PyTorch's bf16 error, plus the floor."""
    assert out.dtype == torch.float32 and torch.isfinite(out).all(), "some outputs were not written"
    assert torch.equal(out, bf16(out)), "an output is not a bf16 value: a store did not round"
    kernel_error = (out.double() - exact).abs().max().item()
    torch_error = (same_dtype.double() - exact).abs().max().item()
    assert kernel_error <= 2 * torch_error + floor, f"kernel {kernel_error:.3g}, torch bf16 {torch_error:.3g}"


def assert_rounds_as(out: torch.Tensor, reference: torch.Tensor) -> None:
    """The kernel rounds where PyTorch's bf16 reference rounds: at least 95% of the outputs bit for bit (their float32
    statistics may differ in the last bit, which a rounding can carry; without the emulated roundings inside the
    kernel 65-75% agree)."""
    same = (out == reference.float()).float().mean().item()
    assert same >= 0.95, f"{same:.1%} of the outputs equal PyTorch's bf16 ones"


@pytest.mark.parametrize("shape", [(1, 7), (5, 33), (19, 1000), (3, 1024)])
def test_rms_norm_in_bf16(poisoned, bf16_casts, shape):
    x, w = inputs(shape)
    out = rmsnorm.rms_norm(x, w, 1e-6)
    reference = rms_norm_reference(x.bfloat16(), w.bfloat16(), 1e-6)
    assert_bf16_close(out, reference, norm64(x, w, 1e-6), NORM_FLOOR)
    assert bf16_casts["rounded"] > 0, "no cast rounded: the emulation did not run"
    assert_rounds_as(out, reference)


@pytest.mark.parametrize("tokens, q_heads, k_heads, d", [(7, 6, 3, 128), (21, 5, 1, 64)])
def test_qk_norm_rope_in_bf16(poisoned, bf16_casts, tokens, q_heads, k_heads, d):
    q, qw = inputs((tokens, q_heads, d), seed=3)
    k, kw = inputs((tokens, k_heads, d), seed=4)
    cos, sin = (bf16(t) for t in rope_tables(tokens, d, torch.float32))
    out_q, out_k = rmsnorm.qk_norm_rope(q, k, qw, kw, 1e-6, cos, sin)
    as_bf16 = (t.bfloat16() for t in (q, k, qw, kw))
    ref_q, ref_k = qk_norm_rope_reference(*as_bf16, 1e-6, cos.bfloat16(), sin.bfloat16())
    assert_bf16_close(out_q, ref_q, rope64(q, qw, cos, sin), NORM_FLOOR)
    assert_bf16_close(out_k, ref_k, rope64(k, kw, cos, sin), NORM_FLOOR)
    assert_rounds_as(out_q, ref_q)
    assert_rounds_as(out_k, ref_k)


@pytest.mark.parametrize("lengths, hq, hkv, d", [([1, 17, 64, 100], 4, 2, 64), ([130, 3], 8, 1, 128)])
def test_attention_in_bf16(poisoned, bf16_casts, lengths, hq, hkv, d):
    g = torch.Generator().manual_seed(0)
    t = sum(lengths)
    q, k, v = (bf16(torch.randn(t, h, d, generator=g)) for h in (hq, hkv, hkv))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    scale = d**-0.5
    out = attention.varlen_attention(q, k, v, cu, scale)
    same_dtype = ops.varlen_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), cu.tolist(), scale)
    assert_bf16_close(out, same_dtype, attention64(q, k, v, cu, scale), ATTENTION_FLOOR)


def test_the_emulation_rounds_where_the_bf16_kernel_rounds(bf16_casts):
    """Switched off, the same float32 run gives another answer, and outputs that are not bf16 values: the rounding
    points are reached (P before the P.V dot among them, since the inputs are bf16 values either way)."""
    g = torch.Generator().manual_seed(1)
    q, k, v = (bf16(torch.randn(40, 2, 16, generator=g)) for _ in range(3))
    cu = torch.tensor([0, 40], dtype=torch.int32)
    emulated = attention.varlen_attention(q, k, v, cu, 0.25)
    assert bf16_casts["rounded"] > 0 and torch.equal(emulated, bf16(emulated))
    bf16_casts["on"] = False
    plain = attention.varlen_attention(q, k, v, cu, 0.25)
    assert not torch.equal(plain, bf16(plain))
    assert not torch.equal(bf16(plain), emulated)  # P was rounded, not only the output
