"""Texts to token ids (`tokenizer.json` through `tokenizers`), and token ids to packed batches."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import torch
from tokenizers import Tokenizer as _HFTokenizer

EOS = "<|endoftext|>"  # Qwen3-Embedding pools the hidden state of this token, appended to every text


class Tokenizer:
    """A checkpoint's `tokenizer.json`, for a model whose embedding table has `vocab_size` rows."""

    def __init__(self, path: str | Path, vocab_size: int):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path.parent} has no tokenizer.json; copy the model's tokenizer.json there (it is in the model's hub "
                "repository beside config.json)"
            )
        try:
            self._tokenizer = _HFTokenizer.from_file(str(path))
        except Exception as e:  # the tokenizers library raises a bare Exception for a broken file
            raise ValueError(f"{path} could not be read as a tokenizer ({e}); download it again") from None
        # Settings stored in tokenizer.json must not cut or pad behind our back.
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self.vocab_size = vocab_size
        eos_id = self._tokenizer.token_to_id(EOS)
        if eos_id is None:
            raise ValueError(f"{path} has no {EOS} token; is it a Qwen3 tokenizer?")
        self.eos_id = eos_id

    def encode(
        self,
        texts: Sequence[str],
        max_length: int,
        truncate: bool = True,
        prefix: Sequence[int] = (),
        suffix: Sequence[int] | None = None,
        warn: bool = True,
    ) -> list[list[int]]:
        """`prefix + tokens of the text + suffix` for each text, at most `max_length` tokens.

        The suffix defaults to one `<|endoftext|>`, the token the embedding models pool. The tokenizer's own
        post-processor is bypassed, so the result is the same whether or not its tokenizer.json appends an EOS.
        A text too long to fit has its tokens cut (never the prefix or suffix) with a warning (unless `warn` is
        False, for callers that asked for truncation explicitly), or is an error when `truncate` is False. A token
        the embedding table has no row for is an error naming the text.
        """
        prefix, suffix = list(prefix), [self.eos_id] if suffix is None else list(suffix)
        room = max_length - len(prefix) - len(suffix)
        if room < 1:
            raise ValueError(
                f"max_length={max_length} leaves no room for text after the {len(prefix) + len(suffix)} tokens of "
                f"the prompt; use at least {len(prefix) + len(suffix) + 1}"
            )
        self._check_rows(prefix + suffix, "the prompt")
        ids = [e.ids for e in self._tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)]
        too_long = [i for i, seq in enumerate(ids) if len(seq) > room]
        if too_long:
            longest = max(len(ids[i]) for i in too_long) + len(prefix) + len(suffix)
            if not truncate:
                raise ValueError(
                    f"{len(too_long)} text(s) are longer than max_length={max_length} tokens "
                    f"(indices {_some(too_long)}; the longest has {longest}); shorten them, raise max_length, "
                    "or pass truncate=True"
                )
            if warn:  # stacklevel: the user's call of Embedder.encode or Reranker.score
                warnings.warn(
                    f"{len(too_long)} of {len(ids)} text(s) were longer than max_length={max_length} tokens and were "
                    f"cut to fit (indices {_some(too_long)}; the longest had {longest}); pass truncate=False "
                    "(--no-truncate) to get an error instead",
                    stacklevel=4,
                )
            for i in too_long:
                del ids[i][room:]
        for i, seq in enumerate(ids):
            self._check_rows(seq, f"text {i}")
        return [prefix + seq + suffix for seq in ids]

    def token_id(self, token: str) -> int:
        """The id of a token of the vocabulary, or a clear error."""
        token_id = self._tokenizer.token_to_id(token)
        if token_id is None:
            raise ValueError(f"the tokenizer has no token {token!r}")
        return token_id

    def ids(self, text: str) -> list[int]:
        """The tokens of a text, without any special token added."""
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def _check_rows(self, seq: list[int], what: str) -> None:
        if seq and max(seq) >= self.vocab_size:
            bad = max(seq)
            raise ValueError(
                f"{what} contains the token {self._tokenizer.id_to_token(bad)!r} (id {bad}), but the model's "
                f"embedding table has only {self.vocab_size} rows; remove it from the text"
            )


def _some(indices: list[int], shown: int = 10) -> str:
    head = ", ".join(map(str, indices[:shown]))
    return head + (f", ... ({len(indices) - shown} more)" if len(indices) > shown else "")


@dataclass
class Batch:
    """Sequences packed end to end, with no padding."""

    input_ids: torch.Tensor  # [T] int64
    cu_seqlens: torch.Tensor  # [B+1] int32: sequence b is input_ids[cu_seqlens[b]:cu_seqlens[b+1]]
    position_ids: torch.Tensor  # [T] int64, restarting at 0 for each sequence
    index: list[int]  # where each sequence came from in the caller's list

    def to(self, device: torch.device) -> Batch:
        return Batch(
            self.input_ids.to(device),
            self.cu_seqlens.to(device),
            self.position_ids.to(device),
            self.index,
        )


def pack(sequences: Sequence[list[int]], index: list[int]) -> Batch:
    """One packed batch of the given token id lists."""
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.int64)
    cu_seqlens = torch.zeros(len(sequences) + 1, dtype=torch.int64)
    torch.cumsum(lengths, 0, out=cu_seqlens[1:])
    starts = torch.repeat_interleave(cu_seqlens[:-1], lengths)
    return Batch(
        input_ids=torch.tensor(list(chain.from_iterable(sequences)), dtype=torch.int64),
        cu_seqlens=cu_seqlens.to(torch.int32),
        position_ids=torch.arange(int(cu_seqlens[-1])) - starts,
        index=index,
    )


def batches(sequences: Sequence[list[int]], max_tokens: int) -> Iterator[Batch]:
    """Packed batches of at most `max_tokens` tokens (a longer sequence goes alone), longest sequences first."""
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]), reverse=True)
    chunk: list[int] = []
    tokens = 0
    for i in order:
        if chunk and tokens + len(sequences[i]) > max_tokens:
            yield pack([sequences[j] for j in chunk], chunk)
            chunk, tokens = [], 0
        chunk.append(i)
        tokens += len(sequences[i])
    if chunk:
        yield pack([sequences[j] for j in chunk], chunk)
