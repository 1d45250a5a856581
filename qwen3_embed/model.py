"""The Qwen3 decoder as used by Qwen3-Embedding, over packed (padding-free) batches.

A batch is T tokens of B sequences laid end to end: `input_ids [T]`, `cu_seqlens [B+1]` int32 (sequence b is rows
`cu_seqlens[b]:cu_seqlens[b+1]`) and `position_ids [T]`, which restart at 0 for every sequence. Every matmul
runs on `[T, hidden]`; attention never crosses a sequence boundary. Module and parameter names are the
checkpoint's, except that q/k/v and gate/up are stacked into one GEMM each (`qkv_proj`, `gate_up_proj`); `state_dict()`
and `load_state_dict()` still speak the safetensors keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import ops
from .config import Qwen3Config


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """norm(x); with a residual, (norm(x + residual), x + residual) in one pass."""
        return ops.rms_norm(x, self.weight, self.eps, residual)


class RotaryEmbedding(nn.Module):
    """Rotate-half RoPE angles for the batch's positions, computed in float32 as transformers does."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        self.head_dim = head_dim
        self.theta = theta

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin [T, head_dim / 2] in `dtype` (the two halves of a head share them)."""
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.int64, device=position_ids.device).float()
        inv_freq = 1.0 / (self.theta ** (exponents / self.head_dim))  # [D/2]
        angles = position_ids.float()[:, None] * inv_freq[None, :]  # [T, D/2]
        return angles.cos().to(dtype), angles.sin().to(dtype)


class Linear(nn.Linear):
    """nn.Linear without a bias, whose weight may be packed for the CPU's oneDNN kernels (`Qwen3Model.pack_weights`)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.linear(x, self.weight)


class StackedLinear(Linear):
    """Projections of one input that the checkpoint stores apart (`parts`: name -> output rows), stacked by rows so
    that they run as one GEMM (gpt-fast's wqkv and w13); returns one output per part. Qwen3Model's `state_dict()`
    and `load_state_dict()` speak the checkpoint's names (`q_proj.weight`, ...), with `checkpoint_layout()` between."""

    def __init__(self, in_features: int, parts: dict[str, int]):
        super().__init__(in_features, sum(parts.values()))
        self.parts = parts

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return super().forward(x).split(list(self.parts.values()), dim=-1)


class Attention(nn.Module):
    """Grouped-query causal attention with an RMSNorm on each query and key head before RoPE."""

    def __init__(self, config: Qwen3Config):
        super().__init__()
        hidden, d = config.hidden_size, config.head_dim
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = d
        q_rows, kv_rows = self.num_heads * d, self.num_kv_heads * d
        self.qkv_proj = StackedLinear(hidden, {"q_proj": q_rows, "k_proj": kv_rows, "v_proj": kv_rows})
        self.o_proj = Linear(self.num_heads * d, hidden)
        self.q_norm = RMSNorm(d, config.rms_norm_eps)
        self.k_norm = RMSNorm(d, config.rms_norm_eps)

    def forward(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], plan: ops.AttentionPlan
    ) -> torch.Tensor:
        t = x.shape[0]
        q, k, v = self.qkv_proj(x)
        q = q.view(t, self.num_heads, self.head_dim)  # [T, Hq, D]
        k = k.view(t, self.num_kv_heads, self.head_dim)  # [T, Hkv, D]
        v = v.view(t, self.num_kv_heads, self.head_dim)
        # q_norm / k_norm on each head, then RoPE, in one pass over both
        q, k = ops.qk_norm_rope(q, k, self.q_norm.weight, self.k_norm.weight, self.q_norm.eps, *rope)
        o = ops.varlen_attention(q, k, v, plan, scale=self.head_dim**-0.5)
        return self.o_proj(o.reshape(t, self.num_heads * self.head_dim))


class MLP(nn.Module):
    """SwiGLU: down_proj(silu(gate_proj(x)) * up_proj(x))."""

    def __init__(self, config: Qwen3Config):
        super().__init__()
        inter = config.intermediate_size
        self.gate_up_proj = StackedLinear(config.hidden_size, {"gate_proj": inter, "up_proj": inter})
        self.down_proj = Linear(inter, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    """Pre-norm block: h = x + attention(norm(x)), then out = h + mlp(norm(h)).

    The residual adds are fused into the norms: a layer takes the previous layer's MLP output and the residual
    stream before it (None for the first layer, whose input is the embeddings) and returns the same pair for its
    own output, which is their sum.
    """

    def __init__(self, config: Qwen3Config):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None,
        rope: tuple[torch.Tensor, torch.Tensor],
        plan: ops.AttentionPlan,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            h, residual = self.input_layernorm(x), x
        else:
            h, residual = self.input_layernorm(x, residual)
        x = self.self_attn(h, rope, plan)
        h, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(h), residual


class Qwen3Model(nn.Module):
    def __init__(self, config: Qwen3Config):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta)
        self.register_state_dict_post_hook(_split_stacked)  # state_dict(): the checkpoint's names
        self.register_load_state_dict_pre_hook(_stack_parts)  # load_state_dict(): from the checkpoint's names
        self.register_load_state_dict_post_hook(_after_load)

    def checkpoint_layout(self) -> dict[str, tuple[str, int, torch.Size]]:
        """Where each checkpoint tensor lives: its name -> (parameter, first row, shape); a StackedLinear's
        parameter holds several, one after the other."""
        layout = {name: (name, 0, p.shape) for name, p in self.named_parameters()}
        for module_name, module in self.named_modules():
            if isinstance(module, StackedLinear):
                param, parent, row = f"{module_name}.weight", module_name.rpartition(".")[0], 0
                del layout[param]
                for part, rows in module.parts.items():
                    layout[f"{parent}.{part}.weight"] = (param, row, torch.Size([rows, module.in_features]))
                    row += rows
        return layout

    cuda_graphs: CudaGraphs | None = None  # set to CudaGraphs(model) to replay the forward from CUDA graphs

    def pack_weights(self, packed: bool = True) -> None:
        """Hold the projections' weights in oneDNN's blocked layout for the CPU (packed once here, not at every
        call), or back in the plain layout. `checkpoint.load_model` packs a CPU model in float32 or bfloat16, where
        it measured 2-4x (float32) and 1.1-1.9x (bfloat16) F.linear's speed on the benchmarks' CPU."""
        for module in self.modules():
            if isinstance(module, Linear):
                weight = ops.pack_linear_weight(module.weight) if packed else ops.unpacked(module.weight)
                module.weight = nn.Parameter(weight, requires_grad=False)

    def compile_layers(self) -> None:
        """Compile each decoder layer with torch.compile, for dynamic token counts (one compile serves every batch
        shape): RMSNorm, the residual adds, RoPE and SiLU*up fuse into a few loops around the GEMMs; attention runs
        eagerly in between. The eager path is the one `forward` reads as; compiling changes no result beyond float
        rounding. Weights packed for oneDNN are unpacked first (the compiler reads plain tensors)."""
        self.pack_weights(False)
        ops.attention_eager_when_compiled()
        for layer in self.layers:
            layer.compile(dynamic=True)

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
        plan = cu_seqlens  # once per batch, for every layer
        if not isinstance(plan, ops.AttentionPlan):
            plan = ops.AttentionPlan(cu_seqlens, input_ids.shape[0], input_ids.device)
        if self.cuda_graphs is not None and not output_hidden_states:
            return self.cuda_graphs(input_ids, plan, position_ids)  # `encode`, replayed
        return self.encode(input_ids, plan, position_ids, output_hidden_states)

    def encode(
        self,
        input_ids: torch.Tensor,
        plan: ops.AttentionPlan,
        position_ids: torch.Tensor,
        output_hidden_states: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """`forward` on a batch whose attention plan is made."""
        x = self.embed_tokens(input_ids)  # [T, hidden]
        rope = self.rotary(position_ids, x.dtype)
        states = [x] if output_hidden_states else None
        residual = None
        for layer in self.layers:
            x, residual = layer(x, residual, rope, plan)
            if states is not None:
                states.append(x + residual)
        last_rows = plan.cu_seqlens[1:].long() - 1  # the final norm only on the rows that are pooled
        last, _ = self.norm(x[last_rows], residual[last_rows])
        if states is None:
            return last
        states[-1] = self.norm(x, residual)[0]
        return last, states


def _split_stacked(model: Qwen3Model, state_dict: dict, prefix: str, local_metadata) -> None:
    """state_dict hook: weights packed for oneDNN unpacked, and each stacked parameter as the checkpoint's tensors
    (views of its rows)."""
    for key, value in state_dict.items():
        state_dict[key] = ops.unpacked(value)
    stacked = set()
    for name, (param, row, shape) in model.checkpoint_layout().items():
        if name != param:
            state_dict[prefix + name] = state_dict[prefix + param][row : row + shape[0]]
            stacked.add(prefix + param)
    for key in stacked:
        del state_dict[key]


def _stacked_parts(model: Qwen3Model) -> dict[str, list[tuple[str, torch.Size]]]:
    """Each stacked parameter -> the checkpoint's tensors it holds (name, shape), in order."""
    parts: dict[str, list[tuple[str, torch.Size]]] = {}
    for name, (param, _, shape) in model.checkpoint_layout().items():
        if name != param:
            parts.setdefault(param, []).append((name, shape))
    return parts


def _stack_parts(model: Qwen3Model, state_dict: dict, prefix: str, *args) -> None:
    """load_state_dict hook: the checkpoint's tensors of each stacked parameter, checked for shape and stacked when
    all are there (else the absent ones are noted for `_after_load`, and the present ones are unused: unexpected);
    weights packed for oneDNN unpacked for the copy, packed again after."""
    model._absent = {}
    for param, names in _stacked_parts(model).items():
        present = [(prefix + name, shape) for name, shape in names if prefix + name in state_dict]
        for key, shape in present:
            if state_dict[key].shape != shape:
                raise ValueError(f"{key} has shape {tuple(state_dict[key].shape)}; this model takes {tuple(shape)}")
        if len(present) == len(names):
            state_dict[prefix + param] = torch.cat([state_dict.pop(key) for key, _ in present])
        else:
            model._absent[prefix + param] = [prefix + name for name, _ in names if prefix + name not in state_dict]
    model._repack = any(p.is_mkldnn for p in model.parameters())
    if model._repack:
        model.pack_weights(False)


def _after_load(model: Qwen3Model, incompatible) -> None:
    """load_state_dict hook: a stacked parameter's absent tensors reported by the checkpoint's names; weights
    packed again."""
    missing = incompatible.missing_keys
    missing[:] = [name for key in missing for name in model._absent.get(key, [key])]
    if model._repack:
        model.pack_weights()


def pad_to_bucket(
    input_ids: torch.Tensor, cu_seqlens: torch.Tensor, position_ids: torch.Tensor, tokens: int, sequences: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A packed batch grown to `tokens` tokens and `sequences` sequences: its tokens, then one padding sequence (id 0)
    up to `tokens`, then empty sequences. Attention stays within sequences, so the real ones' outputs do not change."""
    t, b = input_ids.shape[0], cu_seqlens.shape[0] - 1
    if tokens < t or sequences < b + 1:
        raise ValueError(
            f"a batch of {t} tokens in {b} sequences does not fit {tokens} tokens in {sequences} sequences"
        )
    ids = torch.cat([input_ids, input_ids.new_zeros(tokens - t)])
    positions = torch.cat(
        [position_ids, torch.arange(tokens - t, dtype=position_ids.dtype, device=position_ids.device)]
    )
    cu = torch.cat([cu_seqlens, cu_seqlens.new_full((sequences - b,), tokens)])
    return ids, cu, positions


class CudaGraphs:
    """The model's forward replayed from CUDA graphs, one per bucket of (tokens, sequences), powers of two.

    A batch is padded to its bucket (`pad_to_bucket`), copied into the bucket's static inputs and replayed; the
    real sequences' rows come back. A bucket is warmed up (autotune runs then) and captured on first use; captures
    share one memory pool. Needs a 16-bit model on CUDA with the Triton kernels (the reference attention reads
    offsets on the host, which a replay cannot). Off by default: it becomes the default once a GPU run measures it
    faster than the eager forward (benchmarks/gpu_check.py times both).
    """

    def __init__(self, model: Qwen3Model, min_tokens: int = 256):
        weight = model.embed_tokens.weight
        if not weight.is_cuda or weight.dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(
                f"CUDA graphs need a float16 or bfloat16 model on CUDA, not {weight.dtype} on {weight.device}"
            )
        self.model = model
        self.min_tokens = min_tokens
        self.graphs: dict[tuple[int, int], tuple] = {}  # bucket -> (graph, ids, cu_seqlens, positions, output)
        self.pool = None

    def __call__(self, input_ids: torch.Tensor, plan: ops.AttentionPlan, position_ids: torch.Tensor) -> torch.Tensor:
        t, b = input_ids.shape[0], plan.cu_seqlens.shape[0] - 1
        bucket = (max(self.min_tokens, 1 << max(0, t - 1).bit_length()), 1 << b.bit_length())
        if bucket not in self.graphs:
            self.graphs[bucket] = self._capture(*bucket)
        graph, ids, cu, positions, out = self.graphs[bucket]
        for static, value in zip(
            (ids, cu, positions), pad_to_bucket(input_ids, plan.cu_seqlens, position_ids, *bucket)
        ):
            static.copy_(value)
        graph.replay()
        return out[:b].clone()

    def _capture(self, tokens: int, sequences: int) -> tuple:
        device = self.model.embed_tokens.weight.device
        ids = torch.zeros(tokens, dtype=torch.long, device=device)
        positions = torch.arange(tokens, device=device)
        cu = torch.full((sequences + 1,), tokens, dtype=torch.int32, device=device)
        cu[0] = 0

        def run():
            return self.model.encode(ids, ops.AttentionPlan(cu, tokens, device, check=False), positions)

        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up: autotune and the allocator, outside the capture
            run()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = run()
        self.pool = graph.pool()
        return graph, ids, cu, positions, out
