"""What the Embedder and the Reranker share: loading, defaults, and running token ids through the model in packed,
token-budget batches."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from . import checkpoint
from .config import Qwen3Config
from .model import Qwen3Model
from .tokenize import Tokenizer, batches

# The model cards' task: for the embedding models' queries, and the rerankers' default instruction.
DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
DEFAULT_MAX_LENGTH = 8192  # what the official evaluation uses
# Tokens per forward pass. On CPU, 2048 keeps the activations in cache and measured fastest (benchmarks/);
# on CUDA, larger batches keep the GPU busy.
DEFAULT_BATCH_TOKENS = {"cpu": 2048, "cuda": 16384}


def check_int(name: str, value: object, low: int, high: int | None = None, high_is: str = "") -> int:
    """An integer option's value (an int or a numpy integer), checked to lie in low..high."""
    bounds = f"{low}..{high}" if high is not None else f"at least {low}"
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}={value!r} must be an integer ({bounds})")
    if high is None and value < low:
        raise ValueError(f"{name}={value} must be at least {low}")
    if high is not None and not low <= value <= high:
        raise ValueError(f"{name}={value} is outside {bounds}" + (f", {high_is}" if high_is else ""))
    return int(value)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device to run on: the one asked for, checked to exist here, else CUDA when available, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not a device name; use 'cpu', 'cuda' or 'cuda:N'") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise ValueError(
                f"device {str(device)!r} was asked for, but torch sees no CUDA GPU here (torch {torch.__version__} is "
                f"{build}); use device 'cpu', or install a CUDA build of torch on a machine with a GPU"
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r} does not exist: torch sees {torch.cuda.device_count()} GPU(s)")
    elif resolved.type != "cpu":
        raise ValueError(f"device {str(device)!r} is not supported; use 'cpu' or 'cuda'")
    return resolved


class Pipeline:
    """A Qwen3Model with its tokenizer."""

    def __init__(self, model: Qwen3Model, tokenizer: Tokenizer):
        self.model = model
        self.tokenizer = tokenizer

    @property
    def config(self) -> Qwen3Config:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    KIND = ""  # "embedding" or "reranker": the checkpoints a subclass loads

    @classmethod
    def load(
        cls,
        name_or_path: str | os.PathLike,
        device: str | torch.device | None,
        dtype: str | torch.dtype | None,
        check_kind: bool = True,
        skip: frozenset[str] = frozenset(),
    ):
        """(folder, model, tokenizer) of a local folder or hub id; default: CUDA in bf16 when available, else CPU
        in float32. A checkpoint of the other kind is an error unless `check_kind` is False."""
        device = resolve_device(device)
        dtype = checkpoint.resolve_dtype(dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32))
        folder = checkpoint.resolve(name_or_path)
        config = Qwen3Config.from_json(folder / "config.json")
        tokenizer = Tokenizer(folder / "tokenizer.json", config.vocab_size)
        if check_kind:
            checkpoint.check_kind(folder, cls.KIND)
        return folder, checkpoint.load_model(folder, config, dtype, device, skip), tokenizer

    def max_length(self, max_length: int | None) -> int:
        """The token limit per sequence: default 8192, at most the model's maximum."""
        limit = self.config.max_position_embeddings
        if max_length is None:
            return min(DEFAULT_MAX_LENGTH, limit)
        return check_int("max_length", max_length, 2, limit, "the model's maximum sequence length")

    def batch_tokens(self, batch_tokens: int | None) -> int:
        if batch_tokens is None:
            return DEFAULT_BATCH_TOKENS.get(self.device.type, DEFAULT_BATCH_TOKENS["cpu"])
        return check_int("batch_tokens", batch_tokens, 1)

    def run(
        self,
        ids: Sequence[list[int]],
        head: Callable[[torch.Tensor], torch.Tensor],
        batch_tokens: int | None = None,
        progress: Progress | None = None,
    ) -> torch.Tensor:
        """head(final-normed hidden state of the last token, [B, hidden]) of every sequence, as a CPU tensor in the
        order of `ids`; sequences are packed into batches of at most `batch_tokens` tokens, longest first."""
        if not ids:
            raise ValueError("no sequences to run")
        budget = self.batch_tokens(batch_tokens)
        out = None
        with torch.inference_mode():
            for batch in batches(ids, budget):
                b = batch.to(self.device)
                rows = head(self.model(b.input_ids, b.cu_seqlens, b.position_ids)).cpu()
                if out is None:
                    out = rows.new_empty(len(ids), *rows.shape[1:])
                out[batch.index] = rows
                if progress is not None:
                    progress.update(len(batch.index), b.input_ids.numel())
        return out


class Progress:
    """A progress bar counted in texts (or pairs), advanced per batch, that shows tokens per second."""

    def __init__(self, total: int | None, unit: str = "text", enabled: bool = True, desc: str | None = None):
        self.bar = tqdm(total=total, unit=unit, disable=not enabled, desc=desc, dynamic_ncols=True)
        self.tokens = 0

    def update(self, items: int, tokens: int) -> None:
        self.tokens += tokens
        self.bar.update(items)
        elapsed = self.bar.format_dict["elapsed"]
        if not self.bar.disable and elapsed > 0:
            self.bar.set_postfix_str(f"{self.tokens / elapsed:,.0f} tokens/s", refresh=False)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
