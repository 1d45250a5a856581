"""The Triton RMSNorm kernels against a float64 reference: on CPU through Triton's interpreter, on a GPU if any."""

from __future__ import annotations

import pytest
import torch
from gradients import assert_grads_close, grads

from qwen3_embed.kernels import rmsnorm
from qwen3_embed.model import RMSNorm, apply_rotary

pytestmark = pytest.mark.gpu
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + (
    [torch.bfloat16] if DEVICE == "cuda" else []
)  # bf16 is broken in the interpreter
FLOOR = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def assert_close_to_reference(out: torch.Tensor, same_dtype: torch.Tensor, exact: torch.Tensor) -> None:
    """The kernel's error is at most twice the same-dtype PyTorch error, plus a small floor."""
    assert out.dtype == same_dtype.dtype and out.shape == exact.shape
    assert torch.isfinite(out).all(), "some outputs were not written"
    kernel_error = (out.double() - exact).abs().max().item()
    torch_error = (same_dtype.double() - exact).abs().max().item()
    assert kernel_error <= 2 * torch_error + FLOOR[out.dtype], f"kernel {kernel_error:.3g}, torch {torch_error:.3g}"


def inputs(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * 3 + 0.5).to(DEVICE, dtype)
    w = (torch.rand(shape[-1], generator=g) + 0.5).to(DEVICE, dtype)
    return x, w


def rms_norm_reference(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """The model's RMSNorm (the PyTorch reference) with weight w."""
    return torch.func.functional_call(RMSNorm(w.shape[0], eps), {"weight": w}, (x,))


def qk_norm_rope_reference(q, k, qw, kw, eps, cos, sin):
    """The model's Attention.norm_and_rotate: RMSNorm of each head, then RoPE."""
    return apply_rotary(rms_norm_reference(q, qw, eps), cos, sin), apply_rotary(
        rms_norm_reference(k, kw, eps), cos, sin
    )


def norm64(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.double()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w.double()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 7), (5, 33), (19, 1000), (3, 2560), (2, 3, 96)])
@pytest.mark.parametrize("eps", [1e-6, 1e-2])
def test_rms_norm(poisoned, dtype, shape, eps):
    x, w = inputs(shape, dtype)
    out = rmsnorm.rms_norm(x, w, eps)
    assert_close_to_reference(out, rms_norm_reference(x, w, eps), norm64(x, w, eps))


def rope_tables(tokens: int, d: int, dtype):
    positions = torch.cat([torch.arange(tokens // 2), torch.arange(tokens - tokens // 2)]).to(DEVICE)
    inv_freq = 1.0 / (1e6 ** (torch.arange(0, d, 2, device=DEVICE).float() / d))
    angles = positions.float()[:, None] * inv_freq
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rope64(x, w, cos, sin):
    n = norm64(x, w, 1e-6)
    n1, n2 = n.chunk(2, dim=-1)
    c, s = cos.double()[:, None], sin.double()[:, None]
    return torch.cat((n1 * c - n2 * s, n2 * c + n1 * s), dim=-1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens, q_heads, k_heads, d", [(1, 1, 1, 128), (7, 6, 3, 128), (21, 5, 1, 64), (3, 2, 2, 16)])
def test_qk_norm_rope(poisoned, dtype, tokens, q_heads, k_heads, d):
    """q and k heads normed and rotated in one launch, each against the float64 reference."""
    q, qw = inputs((tokens, q_heads, d), dtype, seed=3)
    k, kw = inputs((tokens, k_heads, d), dtype, seed=4)
    cos, sin = rope_tables(tokens, d, dtype)
    out_q, out_k = rmsnorm.qk_norm_rope(q, k, qw, kw, 1e-6, cos, sin)
    ref_q, ref_k = qk_norm_rope_reference(q, k, qw, kw, 1e-6, cos, sin)
    assert_close_to_reference(out_q, ref_q, rope64(q, qw, cos, sin))
    assert_close_to_reference(out_k, ref_k, rope64(k, kw, cos, sin))


@pytest.mark.parametrize("dtype", DTYPES)
def test_qk_norm_rope_reads_q_and_k_out_of_the_stacked_projection(poisoned, dtype):
    """q and k as the model gives them: column blocks of one [T, (Hq + 2 Hkv) * D] qkv output, strided by token."""
    tokens, q_heads, k_heads, d = 9, 6, 2, 32
    qkv, w = inputs((tokens, (q_heads + 2 * k_heads) * d), dtype, seed=5)
    q, k, _ = qkv.split([q_heads * d, k_heads * d, k_heads * d], dim=-1)
    q, k = q.view(tokens, q_heads, d), k.view(tokens, k_heads, d)
    assert not q.is_contiguous() and not k.is_contiguous()
    qw, kw = w[:d], w[d : 2 * d]
    cos, sin = rope_tables(tokens, d, dtype)
    out_q, out_k = rmsnorm.qk_norm_rope(q, k, qw, kw, 1e-6, cos, sin)
    assert out_q.is_contiguous() and out_k.is_contiguous()
    ref_q, ref_k = qk_norm_rope_reference(q, k, qw, kw, 1e-6, cos, sin)
    assert_close_to_reference(out_q, ref_q, rope64(q, qw, cos, sin))
    assert_close_to_reference(out_k, ref_k, rope64(k, kw, cos, sin))


def test_the_custom_ops():
    """The torch.ops.qwen3_embed RMSNorm ops (what torch.compile and CUDA graphs capture) against the references, and
    torch.library.opcheck's schema and autograd-registration checks (its fake-tensor checks need a GPU)."""
    x, w = inputs((5, 64), torch.float32)
    r, _ = inputs((5, 64), torch.float32, seed=1)
    q, k = x.view(5, 2, 32), r.view(5, 2, 32)
    cos, sin = rope_tables(5, 32, torch.float32)
    norm_rope = (q, k, w[:32], w[32:], 1e-6, cos, sin)
    cases = [
        (torch.ops.qwen3_embed.rms_norm.default, (x, w, 1e-6), (rms_norm_reference(x, w, 1e-6),)),
        (torch.ops.qwen3_embed.qk_norm_rope.default, norm_rope, qk_norm_rope_reference(*norm_rope)),
    ]
    for op, args, expected in cases:
        out = op(*args)
        for a, b in zip(out if isinstance(out, tuple) else (out,), expected):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6 if DEVICE == "cpu" else 4e-6)  # a GPU's sums, FMAs
        checks = torch.library.opcheck(op, args, test_utils=("test_schema", "test_autograd_registration"))
        assert set(checks.values()) == {"SUCCESS"}


def test_empty_input():
    x, w = inputs((0, 64), torch.float32)
    assert rmsnorm.rms_norm(x, w, 1e-6).shape == (0, 64)


def test_bad_inputs_are_refused():
    x, w = inputs((4, 64), torch.float32)
    with pytest.raises(ValueError, match="x has dtype torch.float64"):
        rmsnorm.rms_norm(x.double(), w.double(), 1e-6)
    with pytest.raises(ValueError, match="weight is torch.float16 .* they must match"):
        rmsnorm.rms_norm(x, w.half(), 1e-6)
    with pytest.raises(ValueError, match=r"weight has shape \[32\], expected \[64\]"):
        rmsnorm.rms_norm(x, w[:32], 1e-6)
    with pytest.raises(ValueError, match="contiguous last dimension"):
        rmsnorm.rms_norm(x.T, torch.ones(4, device=DEVICE), 1e-6)
    q = x.view(4, 1, 64)
    cos, sin = rope_tables(4, 64, torch.float32)
    with pytest.raises(ValueError, match=r"cos is .* expected torch.float32 \[4, 32\]"):
        rmsnorm.qk_norm_rope(q, q, w, w, 1e-6, cos[:3], sin)
    with pytest.raises(ValueError, match=r"q must be \[tokens, heads, head_dim\]"):
        rmsnorm.qk_norm_rope(x, q, w, w, 1e-6, cos, sin)
    with pytest.raises(ValueError, match="k must have contiguous heads"):
        rmsnorm.qk_norm_rope(q, torch.zeros(64, 1, 4, device=DEVICE).permute(2, 1, 0), w, w, 1e-6, cos, sin)


# ----------------------------------------------------------------------------------------------------------------
# Backward: the gradients through torch.library.register_autograd on the ops, against float64 autograd of the
# PyTorch references (`gradients.assert_grads_close` states the tolerance).


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 7), (5, 33), (19, 1000), (2, 3, 96), (0, 64)])
def test_rms_norm_backward(poisoned, monkeypatch, dtype, shape):
    """dx and dweight; 3 programs at most, so each walks several row blocks, as a big batch does on a GPU."""
    monkeypatch.setattr(rmsnorm, "PARTIALS", 3)
    x, w = inputs(shape, dtype)
    dy = inputs(shape, dtype, seed=7)[0]
    eps = 1e-6
    kernel = grads(lambda x, w: rmsnorm.rms_norm(x, w, eps), [x, w], [dy])
    same_dtype = grads(lambda x, w: rms_norm_reference(x, w, eps), [x, w], [dy])
    exact = grads(lambda x, w: rms_norm_reference(x, w, eps), [x, w], [dy], torch.float64)
    assert_grads_close(kernel, same_dtype, exact)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens, q_heads, k_heads, d", [(1, 1, 1, 128), (7, 6, 3, 128), (21, 5, 1, 64), (3, 2, 2, 16)])
def test_qk_norm_rope_backward(poisoned, dtype, tokens, q_heads, k_heads, d):
    """dq, dk and both weights' gradients, through RoPE and the norm, from q and k read out of one stacked qkv."""
    qkv, w = inputs((tokens, (q_heads + 2 * k_heads) * d), dtype, seed=5)
    cos, sin = rope_tables(tokens, d, dtype)
    dq, dk = inputs((tokens, q_heads, d), dtype, seed=8)[0], inputs((tokens, k_heads, d), dtype, seed=9)[0]

    def split(qkv, w):
        q, k, _ = qkv.split([q_heads * d, k_heads * d, k_heads * d], dim=-1)
        return q.view(tokens, q_heads, d), k.view(tokens, k_heads, d), w[:d], w[d : 2 * d]

    def kernel(qkv, w):
        q, k, qw, kw = split(qkv, w)
        return rmsnorm.qk_norm_rope(q, k, qw, kw, 1e-6, cos, sin)

    def reference(qkv, w):
        q, k, qw, kw = split(qkv, w)
        return qk_norm_rope_reference(q, k, qw, kw, 1e-6, cos.to(qkv.dtype), sin.to(qkv.dtype))

    assert_grads_close(
        grads(kernel, [qkv, w], [dq, dk]),
        grads(reference, [qkv, w], [dq, dk]),
        grads(reference, [qkv, w], [dq, dk], torch.float64),
    )


def test_qk_norm_rope_has_no_gradient_for_the_rope_tables():
    q, w = inputs((3, 2, 16), torch.float32)
    cos, sin = rope_tables(3, 16, torch.float32)
    out_q, _ = rmsnorm.qk_norm_rope(q, q, w, w, 1e-6, cos.requires_grad_(), sin)
    with pytest.raises(NotImplementedError, match="no gradient for cos and sin"):
        out_q.sum().backward()


def test_the_backward_ops():
    """The backward custom ops pass opcheck's schema check, and the forward ops' autograd registration holds with
    inputs that require grad."""
    x, w = inputs((5, 64), torch.float32)
    q, k = x.view(5, 2, 32), x.view(5, 2, 32) * 2
    cos, sin = rope_tables(5, 32, torch.float32)
    cases = [
        (torch.ops.qwen3_embed.rms_norm_backward.default, (x, x, w, 1e-6), ("test_schema",)),
        (torch.ops.qwen3_embed.qk_norm_rope_backward.default, (q, k, q, k, w[:32], w[32:], 1e-6, cos, sin),
         ("test_schema",)),
        (torch.ops.qwen3_embed.rms_norm.default, (x.requires_grad_(), w.requires_grad_(), 1e-6),
         ("test_schema", "test_autograd_registration")),
    ]  # fmt: skip
    for op, args, utils in cases:
        assert set(torch.library.opcheck(op, args, test_utils=utils).values()) == {"SUCCESS"}
