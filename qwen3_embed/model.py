"""The Qwen3 decoder as Qwen3-Embedding and Qwen3-Reranker use it: one forward pass over a packed batch.

A batch is T tokens of B sequences laid end to end, with no padding: `input_ids [T]`, `cu_seqlens [B+1]` int32
(sequence b is rows `cu_seqlens[b]:cu_seqlens[b+1]`) and `position_ids [T]`, which restart at 0 for each sequence.
Every matmul runs on `[T, hidden]`; attention never crosses a sequence boundary.

Module and parameter names are the checkpoint's (and transformers'), except that q/k/v and gate/up are stacked by
rows into one GEMM each (`qkv_proj`, `gate_up_proj`, as gpt-fast's wqkv and w13); `state_dict()` and
`load_state_dict()` still speak the checkpoint's keys (`qwen3_embed.checkpoint` maps them). This file is the PyTorch
reference of every op; `qwen3_embed.backends` puts a loaded model on its device's fast path (Triton kernels for
RMSNorm, q/k norm + RoPE and attention on CUDA; oneDNN-packed weights on the CPU) without changing this code.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as recompute

from . import checkpoint, ops
from .config import Qwen3Config


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) * weight over the last dim: statistics in float32, cast back, then the weight."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class RotaryEmbedding(nn.Module):
    """The RoPE angles of each token's position, position * theta^(-2i/D), computed in float32 as transformers."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        self.head_dim = head_dim
        self.theta = theta

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin [T, D/2] in `dtype` (the two halves of a head share them)."""
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.int64, device=position_ids.device).float()
        inv_freq = 1.0 / (self.theta ** (exponents / self.head_dim))  # [D/2]
        angles = position_ids.float()[:, None] * inv_freq[None, :]  # [T, D/2]
        return angles.cos().to(dtype), angles.sin().to(dtype)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, theta={self.theta}"


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE of x [T, H, D] by cos, sin [T, D/2]: x*cos + rotate_half(x)*sin, as transformers rounds it."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos[:, None, :], sin[:, None, :]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class Attention(nn.Module):
    """Grouped-query causal attention (Hq query heads share Hkv key/value heads) with an RMSNorm on each query and
    key head before RoPE."""

    def __init__(self, config: Qwen3Config):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = (
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
        )
        self.sizes = [self.num_heads * self.head_dim] + 2 * [self.num_kv_heads * self.head_dim]  # q, k, v rows
        self.scale = self.head_dim**-0.5
        self.qkv_proj = nn.Linear(config.hidden_size, sum(self.sizes), bias=False)  # q_proj, k_proj, v_proj stacked
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)

    def forward(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], plan: ops.AttentionPlan
    ) -> torch.Tensor:
        t = x.shape[0]
        q, k, v = self.qkv_proj(x).split(self.sizes, dim=-1)
        q = q.view(t, self.num_heads, self.head_dim)  # [T, Hq, D]
        k = k.view(t, self.num_kv_heads, self.head_dim)  # [T, Hkv, D]
        v = v.view(t, self.num_kv_heads, self.head_dim)
        q, k = self.norm_and_rotate(q, k, *rope)
        o = self.attend(q, k, v, plan)  # [T, Hq, D]
        return self.o_proj(o.reshape(t, self.num_heads * self.head_dim))

    def norm_and_rotate(
        self, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """RMSNorm of every query and key head, then RoPE."""
        return apply_rotary(self.q_norm(q), cos, sin), apply_rotary(self.k_norm(k), cos, sin)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: ops.AttentionPlan) -> torch.Tensor:
        """softmax(q k^T / sqrt(D), causal) v within each sequence; query head h reads key/value head h // (Hq/Hkv),
        as if k and v were `repeat_interleave`d Hq/Hkv times along the heads (SDPA's `enable_gqa`)."""
        return ops.varlen_attention(q, k, v, plan.bounds, self.scale)


class MLP(nn.Module):
    """SwiGLU: down_proj(act_fn(gate_proj(x)) * up_proj(x)), act_fn = SiLU."""

    def __init__(self, config: Qwen3Config):
        super().__init__()
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)  # gate, up stacked
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(self.act_fn(gate) * up)


class DecoderLayer(nn.Module):
    """Pre-norm block: h = x + attention(norm(x)), then h + mlp(norm(h))."""

    def __init__(self, config: Qwen3Config):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], plan: ops.AttentionPlan
    ) -> torch.Tensor:
        h = x + self.self_attn(self.input_layernorm(x), rope, plan)
        return h + self.mlp(self.post_attention_layernorm(h))


class Qwen3Model(nn.Module):
    """Token embeddings, the decoder layers and the final norm; pools the last token of each sequence."""

    def __init__(self, config: Qwen3Config):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta)
        self.checkpointing = False  # training: each layer's activations recomputed in the backward, not kept
        # state_dict() and load_state_dict() in the checkpoint's keys: q/k/v and gate/up apart
        self.register_state_dict_post_hook(checkpoint.split_stacked)
        self.register_load_state_dict_pre_hook(checkpoint.stack_parts)
        self.register_load_state_dict_post_hook(checkpoint.name_missing_parts)

    def forward(
        self,
        input_ids: torch.Tensor,
        cu_seqlens: torch.Tensor | ops.AttentionPlan,
        position_ids: torch.Tensor,
        output_hidden_states: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Final-normed hidden state of each sequence's last token, [B, hidden].

        `cu_seqlens` may come as a ready `ops.AttentionPlan` (the pipeline's, checked on the host where the batch was
        packed, so that a GPU never waits on a check). With `output_hidden_states`, also every layer's hidden states
        as transformers reports them: the embeddings, the output of each layer, the last one final-normed;
        num_hidden_layers + 1 tensors [T, hidden].
        """
        plan = cu_seqlens  # the sequence layout, made once per batch for every layer
        if not isinstance(plan, ops.AttentionPlan):
            plan = ops.AttentionPlan(cu_seqlens, input_ids.shape[0], input_ids.device)
            if empty := [b for b, (start, end) in enumerate(zip(plan.bounds, plan.bounds[1:])) if start == end]:
                raise ValueError(f"sequences {empty} of cu_seqlens are empty: each needs a last token to pool")
        x = self.embed_tokens(input_ids)  # [T, hidden]
        rope = self.rotary(position_ids, x.dtype)
        states = [x] if output_hidden_states else None
        for layer in self.layers:
            if self.checkpointing and torch.is_grad_enabled():
                x = recompute(layer, x, rope, plan, use_reentrant=False)
            else:
                x = layer(x, rope, plan)
            if states is not None:
                states.append(x)
        last = self.norm(x[plan.cu_seqlens[1:].long() - 1])  # the final norm only on the rows that are pooled
        if states is None:
            return last
        states[-1] = self.norm(x)
        return last, states
