"""Opt-in ways of running a loaded model's forward compiled: each decoder layer through torch.compile
(`compile_layers`), and the whole forward replayed from CUDA graphs (`use_cuda_graphs`). Both change no result
beyond float rounding (tested); both are off by default until a measurement says otherwise (the README's tables).
"""

from __future__ import annotations

import torch

from ..model import Qwen3Model
from ..ops import AttentionPlan
from . import cpu


def compile_layers(model: Qwen3Model) -> Qwen3Model:
    """Each decoder layer compiled with torch.compile for dynamic token counts (one compile serves every batch
    shape), in place: RMSNorm, the residual adds, RoPE and SiLU x up fuse into a few loops around the GEMMs, and
    attention runs eagerly in between (it follows the batch's sequence lengths). Weights packed for oneDNN are
    unpacked first: the compiler reads plain tensors."""
    cpu.unpack(model)
    for layer in model.layers:
        layer.self_attn.attend = torch.compiler.disable(layer.self_attn.attend)
        layer.compile(dynamic=True)
    return model


def use_cuda_graphs(model: Qwen3Model, min_tokens: int = 256) -> Qwen3Model:
    """`model`'s forward replayed from CUDA graphs (`CudaGraphs`), in place; `output_hidden_states` still runs the
    eager forward."""
    model.forward = CudaGraphs(model, min_tokens)
    return model


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
    """A model's forward replayed from CUDA graphs, one per bucket of (tokens, sequences), powers of two.

    A batch is padded to its bucket (`pad_to_bucket`), copied into the bucket's static inputs and replayed; the
    real sequences' rows come back. A bucket is warmed up (autotune runs then) and captured on first use; captures
    share one memory pool. Needs a 16-bit model on CUDA with the Triton kernels (the reference attention reads
    offsets on the host, which a replay cannot). benchmarks/gpu_check.py times it against the eager forward.
    """

    def __init__(self, model: Qwen3Model, min_tokens: int = 256):
        weight = model.embed_tokens.weight
        if not weight.is_cuda or weight.dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(
                f"CUDA graphs need a float16 or bfloat16 model on CUDA, not {weight.dtype} on {weight.device}"
            )
        self.eager = type(model).forward.__get__(model)  # the class's forward, bound: what a capture records
        self.min_tokens = min_tokens
        self.graphs: dict[tuple[int, int], tuple] = {}  # bucket -> (graph, ids, cu_seqlens, positions, output)
        self.pool = None
        self.device = weight.device

    def __call__(
        self,
        input_ids: torch.Tensor,
        cu_seqlens: torch.Tensor | AttentionPlan,
        position_ids: torch.Tensor,
        output_hidden_states: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        if output_hidden_states:
            return self.eager(input_ids, cu_seqlens, position_ids, output_hidden_states)
        cu_seqlens = cu_seqlens.cu_seqlens if isinstance(cu_seqlens, AttentionPlan) else cu_seqlens
        t, b = input_ids.shape[0], cu_seqlens.shape[0] - 1
        bucket = (max(self.min_tokens, 1 << max(0, t - 1).bit_length()), 1 << b.bit_length())
        if bucket not in self.graphs:
            self.graphs[bucket] = self._capture(*bucket)
        graph, ids, cu, positions, out = self.graphs[bucket]
        for static, value in zip((ids, cu, positions), pad_to_bucket(input_ids, cu_seqlens, position_ids, *bucket)):
            static.copy_(value)
        graph.replay()
        return out[:b].clone()

    def _capture(self, tokens: int, sequences: int) -> tuple:
        ids = torch.zeros(tokens, dtype=torch.long, device=self.device)
        positions = torch.arange(tokens, device=self.device)
        cu = torch.full((sequences + 1,), tokens, dtype=torch.int32, device=self.device)
        cu[0] = 0

        def run():
            return self.eager(ids, AttentionPlan(cu, tokens, self.device, check=False), positions)

        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # warm-up: autotune and the allocator, outside the capture
            run()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = run()
        self.pool = graph.pool()
        return graph, ids, cu, positions, out
