"""How a loaded model runs fast on its device, chosen once per model when it is loaded; `qwen3_embed.model` stays
the PyTorch reference and an ordinary nn.Module on every backend.

- `kernels`: the Triton kernels in place of RMSNorm, the q/k norm with RoPE and attention (CUDA; on CPU tensors
  only under Triton's interpreter, which is how the tests check them).
- `cpu`: the projections' weights packed once for oneDNN, rows padded to a few sizes (a CPU model).
- `compiled`: each decoder layer through torch.compile, and the forward replayed from CUDA graphs (both opt-in).

`prepare` applies the first two by the model's device; `QWEN3_EMBED_BACKEND=torch|triton` (read once, at load)
forces the references or the kernels, so that both can be compared on one machine.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from ..model import Qwen3Model
from . import cpu

BACKENDS = ("torch", "triton")


def prepare(model: Qwen3Model, backend: str | None = None, pack: bool = True) -> Qwen3Model:
    """`model`, loaded onto its device, put on that device's fast path: the Triton kernels where they run (`backend`,
    else $QWEN3_EMBED_BACKEND, else by device), and packed weights on the CPU unless `pack` is False (training: autograd
    needs plain weights)."""
    device = model.embed_tokens.weight.device
    if choose(device, backend) == "triton":
        from . import kernels

        kernels.use_kernels(model)
    if device.type == "cpu" and pack:
        cpu.pack(model)
    return model


def choose(device: torch.device, backend: str | None = None) -> str:
    """The backend a model on `device` runs: the argument, else $QWEN3_EMBED_BACKEND, else Triton on CUDA when it
    is installed, else the PyTorch reference."""
    choice = backend or os.environ.get("QWEN3_EMBED_BACKEND") or "auto"
    triton = importlib.util.find_spec("triton") is not None
    if choice == "auto":
        return "triton" if device.type == "cuda" and triton else "torch"
    if choice not in BACKENDS:
        raise ValueError(f"backend {choice!r} is not one of auto, {', '.join(BACKENDS)} (QWEN3_EMBED_BACKEND)")
    asked = f"backend={choice!r}" if backend else f"QWEN3_EMBED_BACKEND={choice}"
    if choice == "triton" and not triton:
        raise ImportError(f"{asked} asks for the Triton kernels, but triton is not installed: pip install triton")
    if choice == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            f"{asked} asks for the Triton kernels, which run on CUDA, for a model on the {device.type}: set "
            "TRITON_INTERPRET=1 in the environment before Python starts to run them on the CPU through Triton's "
            "interpreter (slow; for testing them), or use QWEN3_EMBED_BACKEND=torch"
        )
    return choice
