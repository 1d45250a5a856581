"""Gradients of a kernel against the same computation in PyTorch, in its dtype and in float64, for the backward
kernels' tests. Tolerance: the kernel's error is at most twice the same-dtype PyTorch autograd error plus
GRADIENT_FLOOR x the largest exact gradient (a relative floor: a weight's gradient sums over every row)."""

from __future__ import annotations

import torch

GRADIENT_FLOOR = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def largest(t: torch.Tensor) -> float:
    return t.abs().max().item() if t.numel() else 0.0


def assert_grads_close(kernel: list[torch.Tensor], same_dtype: list[torch.Tensor], exact: list[torch.Tensor]) -> None:
    for i, (a, b, c) in enumerate(zip(kernel, same_dtype, exact)):
        dtype = a.dtype
        assert a.dtype == b.dtype and a.shape == c.shape, i
        assert torch.isfinite(a).all(), f"gradient {i}: some elements were not written"
        a, b, c = a.double().cpu(), b.double().cpu(), c.double().cpu()
        kernel_error, torch_error = largest(a - c), largest(b - c)
        floor = GRADIENT_FLOOR[dtype] * max(1.0, largest(c))
        assert kernel_error <= 2 * torch_error + floor, f"grad {i}: kernel {kernel_error:.3g}, torch {torch_error:.2g}"


def grads(fn, inputs: list[torch.Tensor], out_grads: list[torch.Tensor], dtype=None) -> list[torch.Tensor]:
    """The gradients of sum(fn(*inputs) * out_grads) with respect to the floating inputs, taken in `dtype`."""
    leaves = [x.detach().to(dtype or x.dtype).requires_grad_(x.is_floating_point()) for x in inputs]
    outs = fn(*leaves)
    outs = outs if isinstance(outs, tuple) else (outs,)
    torch.autograd.backward(outs, [g.to(o.device, o.dtype) for o, g in zip(outs, out_grads)])
    return [x.grad for x in leaves if x.requires_grad]
