"""LoRA: a low-rank update `W + (alpha / rank) * B @ A` trained in place of each projection's weight W, which stays
frozen; merged back into plain weights for saving."""

from __future__ import annotations

import math

import torch
from torch import nn

PROJECTIONS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")  # every linear layer of a decoder layer


class LoRALinear(nn.Module):
    """A frozen bias-free linear layer plus a trainable rank-`rank` update: x W^T + scale * (x A^T) B^T. B starts at
    zero, so training starts from the base model's outputs."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.scale = alpha / rank
        weight = base.weight
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, dtype=weight.dtype, device=weight.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, dtype=weight.dtype, device=weight.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # as nn.Linear initializes its weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.T @ self.lora_b.T) * self.scale

    def merged(self) -> nn.Linear:
        """The plain linear layer with weight W + scale * B @ A."""
        linear = self.base
        with torch.no_grad():
            linear.weight += self.scale * (self.lora_b @ self.lora_a)
        return linear


def add_lora(model: nn.Module, rank: int, alpha: float | None = None) -> nn.Module:
    """Every decoder projection of `model` wrapped in a LoRALinear of `rank` (alpha: default 2 x rank), in place;
    every other parameter frozen."""
    model.requires_grad_(False)
    for parent, name in _projections(model, nn.Linear):
        setattr(parent, name, LoRALinear(getattr(parent, name), rank, 2.0 * rank if alpha is None else alpha))
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Every LoRALinear of `model` replaced by its merged plain layer, in place."""
    for parent, name in _projections(model, LoRALinear):
        setattr(parent, name, getattr(parent, name).merged())
    return model


def _projections(model: nn.Module, kind: type) -> list[tuple[nn.Module, str]]:
    return [
        (parent, name)
        for parent in model.modules()
        for name, child in parent.named_children()
        if name in PROJECTIONS and isinstance(child, kind)
    ]
