"""Texts to token ids (`tokenizer.json` through `tokenizers`), and token ids to packed batches."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer as _HFTokenizer

EOS = "<|endoftext|>"  # Qwen3-Embedding pools the hidden state of this token, appended to every text


class Tokenizer:
    """A checkpoint's `tokenizer.json`, for a model whose embedding table has `vocab_size` rows."""

    def __init__(self, path: str | Path, vocab_size: int):
        self._tokenizer = _HFTokenizer.from_file(str(path))
        # Settings stored in tokenizer.json must not cut or pad behind our back.
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self.vocab_size = vocab_size
        eos_id = self._tokenizer.token_to_id(EOS)
        if eos_id is None:
            raise ValueError(f"{path} has no {EOS} token; is it a Qwen3 tokenizer?")
        self.eos_id = eos_id

    def encode(self, texts: Sequence[str], max_length: int, truncate: bool = True) -> list[list[int]]:
        """Token ids of each text, ending with exactly one `<|endoftext|>`, at most `max_length` long.

        The post-processor is bypassed and the EOS appended here, so the result is the same whether or not
        the tokenizer.json appends one. A longer text is cut before its EOS with a warning, or is an error
        when `truncate` is False. A token the embedding table has no row for is an error naming the text.
        """
        encodings = self._tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)
        ids = [e.ids for e in encodings]
        too_long = [i for i, seq in enumerate(ids) if len(seq) + 1 > max_length]
        if too_long:
            longest = max(len(ids[i]) + 1 for i in too_long)
            if not truncate:
                raise ValueError(
                    f"{len(too_long)} text(s) are longer than max_length={max_length} tokens "
                    f"(indices {_some(too_long)}; the longest has {longest}); shorten them, raise max_length, "
                    "or pass truncate=True"
                )
            warnings.warn(
                f"{len(too_long)} of {len(ids)} text(s) were longer than max_length={max_length} tokens and were "
                f"cut to fit (indices {_some(too_long)}; the longest had {longest}); pass truncate=False to get an "
                "error instead",
                stacklevel=3,
            )
            for i in too_long:
                del ids[i][max_length - 1 :]
        for i, seq in enumerate(ids):
            if seq and max(seq) >= self.vocab_size:
                bad = max(seq)
                raise ValueError(
                    f"text {i} contains the token {self._tokenizer.id_to_token(bad)!r} (id {bad}), but the model's "
                    f"embedding table has only {self.vocab_size} rows; remove it from the text"
                )
            seq.append(self.eos_id)
        return ids


def _some(indices: list[int], shown: int = 10) -> str:
    head = ", ".join(map(str, indices[:shown]))
    return head + (f", ... ({len(indices) - shown} more)" if len(indices) > shown else "")


@dataclass
class Batch:
    """Sequences packed end to end, with no padding."""

    input_ids: torch.Tensor  # [T] int64
    cu_seqlens: torch.Tensor  # [B+1] int32: sequence b is input_ids[cu_seqlens[b]:cu_seqlens[b+1]]
    position_ids: torch.Tensor  # [T] int64, restarting at 0 for each sequence
    max_seqlen: int
    index: list[int]  # where each sequence came from in the caller's list

    def to(self, device: torch.device) -> Batch:
        return Batch(
            self.input_ids.to(device),
            self.cu_seqlens.to(device),
            self.position_ids.to(device),
            self.max_seqlen,
            self.index,
        )


def pack(sequences: Sequence[list[int]], index: list[int]) -> Batch:
    """One packed batch of the given token id lists."""
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.int64)
    cu_seqlens = torch.zeros(len(sequences) + 1, dtype=torch.int64)
    torch.cumsum(lengths, 0, out=cu_seqlens[1:])
    starts = torch.repeat_interleave(cu_seqlens[:-1], lengths)
    return Batch(
        input_ids=torch.tensor([t for s in sequences for t in s], dtype=torch.int64),
        cu_seqlens=cu_seqlens.to(torch.int32),
        position_ids=torch.arange(int(cu_seqlens[-1])) - starts,
        max_seqlen=int(lengths.max()),
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
