"""Models loaded for training: plain weights that take gradients (never the CPU backend's oneDNN-packed layout),
in train mode, optionally with each decoder layer's activations recomputed in the backward pass."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .. import checkpoint
from ..backends import cpu
from ..embedder import Embedder, read_prompts
from ..model import Qwen3Model
from ..reranker import Reranker
from ..tokenize import Tokenizer


def load_embedder(
    name_or_path: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype = torch.float32,
    checkpointing: bool = False,
) -> tuple[Path, Embedder]:
    """(its folder, an Embedder whose model trains): float32 weights by default (autocast gives bfloat16 compute),
    every parameter requiring gradients; `checkpointing` recomputes each layer in the backward pass instead of keeping
    its activations."""
    folder, model, tokenizer = Embedder.load(name_or_path, device, dtype, pack=False)
    model.checkpointing = checkpointing
    return folder, Embedder(model.train().requires_grad_(True), tokenizer, *read_prompts(folder))


class TrainingReranker(Reranker):
    """A Reranker whose "no" and "yes" rows of the output projection train with the model: the embedding table's
    rows when the checkpoint ties them (so that both uses of those rows learn), else a parameter of their own."""

    def __init__(self, model: Qwen3Model, tokenizer: Tokenizer, no_yes: torch.Tensor):
        self.rows = [tokenizer.token_id("no"), tokenizer.token_id("yes")]
        super().__init__(model, tokenizer, no_yes)

    @property
    def no_yes(self) -> torch.Tensor:
        if self.model.config.tie_word_embeddings:
            return self.model.embed_tokens.weight[self.rows]
        return self._no_yes

    @no_yes.setter
    def no_yes(self, rows: torch.Tensor) -> None:
        self._no_yes = torch.nn.Parameter(rows.detach().clone())


def load_reranker(
    name_or_path: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype = torch.float32,
    checkpointing: bool = False,
) -> tuple[Path, TrainingReranker]:
    """(its folder, a Reranker whose model and "no"/"yes" rows train), as `load_embedder`."""
    folder = checkpoint.resolve(name_or_path)
    loaded = Reranker.from_pretrained(folder, device=device, dtype=dtype)
    model = cpu.unpack(loaded.model).train().requires_grad_(True)
    model.checkpointing = checkpointing
    return folder, TrainingReranker(model, loaded.tokenizer, loaded.no_yes)
