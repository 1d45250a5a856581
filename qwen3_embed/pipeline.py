"""What the Embedder and the Reranker share: loading, defaults, and running token ids through the model in packed,
token-budget batches."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import backends, checkpoint
from .checks import check_bools, check_int, check_max_length, resolve_device
from .config import Qwen3Config
from .model import Qwen3Model
from .tokenize import Tokenizer, batches

# The model cards' task: for the embedding models' queries, and the rerankers' default instruction.
DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
# Texts tokenized at a time by `run_texts`, the next chunk while the model runs this one: thousands of texts fill
# many batches, so a GPU is never kept waiting for tokens after the first chunk.
TOKENIZE_CHUNK = 4096  # what the official evaluation uses
# Tokens per forward pass. On CPU, 2048 keeps the activations in cache and measured fastest (benchmarks/);
# on CUDA, larger batches keep the GPU busy.
DEFAULT_BATCH_TOKENS = {"cpu": 2048, "cuda": 16384}


def resolve_dtype(device: torch.device, dtype: str | torch.dtype | None) -> torch.dtype:
    """The dtype a model runs in on `device`: the one asked for; "auto": bfloat16 on CUDA and on CPUs that multiply
    bfloat16 natively (AMX or AVX512-BF16), float32 on others; None: bfloat16 on CUDA, float32 on any CPU (vectors as
    close to the reference as they get)."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" or native_bf16() else torch.float32
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return checkpoint.resolve_dtype(dtype)


def native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AMX tiles or AVX512-BF16)."""
    return any(getattr(torch.cpu, f"_is_{isa}_supported", lambda: False)() for isa in ("amx_tile", "avx512_bf16"))


def load_model(
    folder: Path, config: Qwen3Config, dtype: torch.dtype, device: torch.device, skip: frozenset[str] = frozenset()
) -> Qwen3Model:
    """A Qwen3Model in eval mode with the checkpoint's weights (ignoring the keys in `skip`), read straight into
    place: built on the meta device, so no random weights are ever allocated."""
    with torch.device("meta"):
        model = Qwen3Model(config)
    params = {name: p.shape for name, p in model.named_parameters()}
    layout = checkpoint.layout(params, config)
    state = checkpoint.read_state_dict(folder, layout, params, dtype, device, skip)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval().requires_grad_(False)


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
        pack: bool = True,
    ):
        """(folder, model, tokenizer) of a local folder or hub id; default: CUDA in bf16 when available, else CPU
        in float32. A checkpoint of the other kind is an error unless `check_kind` is False. `pack=False` leaves a
        CPU model's weights plain (for training)."""
        check_bools(check_kind=check_kind)
        device = resolve_device(device)
        dtype = resolve_dtype(device, dtype)
        folder = checkpoint.resolve(name_or_path)
        config = Qwen3Config.from_json(folder / "config.json")
        tokenizer = Tokenizer(folder / "tokenizer.json", config.vocab_size)
        if check_kind:
            checkpoint.check_kind(folder, cls.KIND)
        return folder, backends.prepare(load_model(folder, config, dtype, device, skip), pack=pack), tokenizer

    def max_length(self, max_length: int | None) -> int:
        """The token limit per sequence: default 8192, at most the model's maximum."""
        return check_max_length(max_length, self.config.max_position_embeddings)

    def batch_tokens(self, batch_tokens: int | None) -> int:
        if batch_tokens is None:
            return DEFAULT_BATCH_TOKENS.get(self.device.type, DEFAULT_BATCH_TOKENS["cpu"])
        return check_int("batch_tokens", batch_tokens, 1)

    def ignore_batch_size(self, batch_size: int | None, batch_tokens: int | None) -> None:
        """sentence-transformers' batch_size is not used here: warn (naming batch_tokens) when it is given."""
        if batch_size is not None:
            warnings.warn(
                f"batch_size={batch_size} is not used: qwen3-embed packs each batch up to a number of tokens, not "
                f"texts; pass batch_tokens= to change it (now {self.batch_tokens(batch_tokens)} on {self.device.type})",
                stacklevel=3,
            )

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
        rows, order = [], []
        with torch.inference_mode():
            for batch in batches(ids, budget):
                b = batch.to(self.device)
                rows.append(head(self.model(b.input_ids, b.plan(), b.position_ids)))
                order += batch.index
                if progress is not None:
                    progress.update(len(batch.index), len(b.input_ids))
            out = rows[0].new_empty((len(ids), *rows[0].shape[1:]), device="cpu")
            out[order] = torch.cat(rows).cpu()  # one copy from the device, after the last batch
        return out

    def run_texts(
        self,
        texts: Sequence,
        tokenize: Callable[[list, int], list[list[int]]],
        head: Callable[[torch.Tensor], torch.Tensor],
        batch_tokens: int | None = None,
        progress: Progress | None = None,
        all_first: bool = False,
    ) -> torch.Tensor:
        """`run` over texts tokenized TOKENIZE_CHUNK at a time by `tokenize(texts, first)`: the next chunk on a
        background thread (the Rust tokenizer lets go of the GIL) while the model runs the current one. With
        `all_first`, every text is tokenized before the model runs (so that a text refused is found before any
        work is done)."""
        texts, outputs = list(texts), []
        chunk = len(texts) if all_first else TOKENIZE_CHUNK
        with ThreadPoolExecutor(1) as tokenizing:
            pending = tokenizing.submit(tokenize, texts[:chunk], 0)
            for first in range(0, len(texts), chunk):
                ids, following = pending.result(), first + chunk
                if following < len(texts):
                    pending = tokenizing.submit(tokenize, texts[following : following + chunk], following)
                outputs.append(self.run(ids, head, batch_tokens, progress))
        return torch.cat(outputs)


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
