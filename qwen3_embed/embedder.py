"""Embedder: texts -> L2-normalized Qwen3-Embedding vectors."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import checkpoint
from .config import Qwen3Config
from .model import Qwen3Model
from .tokenize import Tokenizer, batches

DEFAULT_MAX_LENGTH = 8192  # what the official evaluation uses
# Tokens per forward pass. On CPU, 2048 keeps the activations in cache and measured fastest (benchmarks/);
# on CUDA, larger batches keep the GPU busy.
DEFAULT_BATCH_TOKENS = {"cpu": 2048, "cuda": 16384}


def format_instruction(instruction: str, text: str) -> str:
    """The model card's query format (no space after 'Query:')."""
    return f"Instruct: {instruction}\nQuery:{text}"


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


class Embedder:
    def __init__(
        self,
        model: Qwen3Model,
        tokenizer: Tokenizer,
        prompts: dict[str, str] | None = None,
        default_prompt_name: str | None = None,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.prompts = prompts or {}
        self.default_prompt_name = default_prompt_name

    @property
    def config(self) -> Qwen3Config:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike = "Qwen/Qwen3-Embedding-0.6B",
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
    ) -> Embedder:
        """Load a local folder or hub id (default: CUDA in bf16 when available, else CPU in float32)."""
        folder = checkpoint.resolve(name_or_path)
        device = torch.device(device) if device is not None else default_device()
        dtype = checkpoint.resolve_dtype(dtype) if dtype is not None else default_dtype(device)
        config = Qwen3Config.from_json(folder / "config.json")
        model = checkpoint.load_model(folder, config, dtype, device)
        tokenizer = Tokenizer(folder / "tokenizer.json", config.vocab_size)
        prompts, default_prompt_name = read_prompts(folder)
        return cls(model, tokenizer, prompts, default_prompt_name)

    def encode(
        self,
        texts: str | Sequence[str],
        *,
        instruction: str | None = None,
        prompt_name: str | None = None,
        dim: int | None = None,
        normalize: bool = True,
        max_length: int | None = None,
        truncate: bool = True,
        batch_tokens: int | None = None,
        show_progress: bool = False,
    ) -> torch.Tensor:
        """Embed texts: float32 CPU tensor [len(texts), dim] in the input's order ([dim] for a single string).

        instruction: formats each text as `Instruct: {instruction}\\nQuery:{text}` (for queries).
        prompt_name: prepends a prompt of the checkpoint's config_sentence_transformers.json (e.g. 'query').
        dim: keep the first `dim` values (Matryoshka), normalized afterwards; default: the hidden size.
        max_length: tokens per text, EOS included (default 8192, at most the model's maximum); longer texts are
        cut with a warning, or are an error when `truncate` is False.
        batch_tokens: tokens per forward pass (default 2048 on CPU, 16384 on CUDA); a longer text runs alone.
        """
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] is a {type(text).__name__}, not a str")
        hidden = self.config.hidden_size
        dim = hidden if dim is None else dim
        if not 1 <= dim <= hidden:
            raise ValueError(f"dim={dim} is outside 1..{hidden}, the model's hidden size")
        max_length = self._check_max_length(max_length)
        if batch_tokens is None:
            batch_tokens = DEFAULT_BATCH_TOKENS.get(self.device.type, DEFAULT_BATCH_TOKENS["cpu"])
        if batch_tokens < 1:
            raise ValueError(f"batch_tokens={batch_tokens} must be at least 1")
        texts = self._apply_prompt(texts, instruction, prompt_name)

        out = torch.empty(len(texts), dim, dtype=torch.float32)
        ids = self.tokenizer.encode(texts, max_length, truncate)
        with torch.inference_mode(), tqdm(total=len(texts), unit="text", disable=not show_progress) as progress:
            for batch in batches(ids, batch_tokens):
                b = batch.to(self.device)
                pooled = self.model(b.input_ids, b.cu_seqlens, b.position_ids)
                vectors = pooled[:, :dim].float()
                if normalize:
                    vectors = F.normalize(vectors, dim=-1)
                vectors = vectors.cpu()
                bad = (~torch.isfinite(vectors).all(dim=1)).nonzero().flatten().tolist()
                if bad:
                    raise FloatingPointError(
                        f"the model produced non-finite values (inf or NaN) in {self.dtype} for the texts at "
                        f"indices {sorted(batch.index[i] for i in bad)}; float16 overflows on some inputs: use "
                        "dtype='bfloat16' or 'float32'"
                    )
                out[batch.index] = vectors
                progress.update(len(batch.index))
        return out[0] if single else out

    @staticmethod
    def similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of every row of `a` with every row of `b`: [n, m] (a 1-D input counts as one row)."""
        a, b = torch.atleast_2d(a), torch.atleast_2d(b)
        if a.shape[-1] != b.shape[-1]:
            raise ValueError(f"cannot compare vectors of {a.shape[-1]} and {b.shape[-1]} dimensions")
        return F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T

    def _check_max_length(self, max_length: int | None) -> int:
        limit = self.config.max_position_embeddings
        if max_length is None:
            return min(DEFAULT_MAX_LENGTH, limit)
        if not 2 <= max_length <= limit:
            raise ValueError(f"max_length={max_length} is outside 2..{limit}, the model's maximum sequence length")
        return max_length

    def _apply_prompt(self, texts: list[str], instruction: str | None, prompt_name: str | None) -> list[str]:
        if instruction is not None and prompt_name is not None:
            raise ValueError("pass either instruction or prompt_name, not both")
        if instruction is not None:
            return [format_instruction(instruction, t) for t in texts]
        prompt_name = prompt_name or self.default_prompt_name
        if prompt_name is None:
            return texts
        if prompt_name not in self.prompts:
            raise ValueError(
                f"prompt_name={prompt_name!r} is not among the checkpoint's prompts {sorted(self.prompts)} "
                "(config_sentence_transformers.json)"
            )
        return [self.prompts[prompt_name] + t for t in texts]


def read_prompts(folder: Path) -> tuple[dict[str, str], str | None]:
    """The named prompts of a sentence-transformers checkpoint, and its default prompt name."""
    path = folder / "config_sentence_transformers.json"
    if not path.exists():
        return {}, None
    with open(path, encoding="utf-8") as f:
        st = json.load(f)
    return st.get("prompts") or {}, st.get("default_prompt_name")
