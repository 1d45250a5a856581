"""The Triton kernels in place of the model's PyTorch references: the table `KERNELS` says which module runs which
kernel, and `use_kernels(model)` applies it once, at load, to a model on CUDA (or, for the tests, to a CPU model
under Triton's interpreter).

Each kernel module subclasses the reference module and overrides only the method that the kernel replaces, so the
modules, their names, parameters and hooks stay the model's. One difference a reader can see: on the kernel path
`q_norm` and `k_norm` are not called as modules (the fused q/k norm + RoPE kernel reads their weights), so hooks on
them fire on the reference path only.
"""

from __future__ import annotations

import torch

from ..kernels import attention, rmsnorm
from ..model import Attention, Qwen3Model, RMSNorm
from ..ops import AttentionPlan


class KernelRMSNorm(RMSNorm):
    """RMSNorm through `qwen3_embed.kernels.rmsnorm.rms_norm` (several rows per program, float32 statistics)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rmsnorm.rms_norm(x, self.weight, self.eps)


class KernelAttention(Attention):
    """Attention whose q/k norm + RoPE is one kernel (`rmsnorm.qk_norm_rope`) and whose attention is the varlen
    flash attention kernel (`attention.varlen_attention`); float32 on a GPU, and GPUs before sm_80, run the
    reference SDPA, for which the kernel has no launch config."""

    def norm_and_rotate(
        self, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return rmsnorm.qk_norm_rope(q, k, self.q_norm.weight, self.k_norm.weight, self.q_norm.eps, cos, sin)

    @torch.compiler.disable  # the token count picks the autotune bucket: never traced, so never a guard on it
    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: AttentionPlan) -> torch.Tensor:
        group, capability = self.num_heads // self.num_kv_heads, attention.capability_of(q.device)
        if not attention.configs(self.head_dim, group, q.dtype, capability):
            return super().attend(q, k, v, plan)
        per_block = attention.tokens_per_block(self.head_dim, group, q.dtype, capability)
        work = plan.prepared(
            ("work table", per_block), lambda: attention.work_table(plan.cu_seqlens, plan.tokens, per_block)
        )
        return attention.varlen_attention(q, k, v, plan.cu_seqlens, self.scale, work=work)


KERNELS = {RMSNorm: KernelRMSNorm, Attention: KernelAttention}  # reference module -> its kernel module


def use_kernels(model: Qwen3Model) -> Qwen3Model:
    """Every module of `model` that a kernel replaces turned into its kernel module, in place (same parameters)."""
    for module in model.modules():
        if type(module) in KERNELS:
            module.__class__ = KERNELS[type(module)]
    return model


def use_references(model: Qwen3Model) -> Qwen3Model:
    """The kernel modules of `model` turned back into the reference modules, in place."""
    references = {kernel: reference for reference, kernel in KERNELS.items()}
    for module in model.modules():
        if type(module) in references:
            module.__class__ = references[type(module)]
    return model
