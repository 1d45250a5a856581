"""Triton kernels for the hot ops, imported as `qwen3_embed.kernels`: each module holds its kernels and their torch
wrapper (registered as a PyTorch custom op); `aot` compiles every launch ahead of time; `experimental` holds
variants that no GPU has measured yet. `qwen3_embed.backends.kernels` puts them in a model."""

from __future__ import annotations

import contextlib

import torch


def on_device(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """The CUDA device of `t` made current for a launch (Triton launches on the current device: a tensor on cuda:1
    needs cuda:1 current); nothing for a CPU tensor (Triton's interpreter)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()
