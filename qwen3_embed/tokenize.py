"""Texts to token ids (`tokenizer.json` through `tokenizers`), and token ids to packed batches."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from itertools import chain
from pathlib import Path

import torch
from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import normalizers

from . import ops

EOS = "<|endoftext|>"  # Qwen3-Embedding pools the hidden state of this token, appended to every text
# NFC composes at most this many characters into one: the longest canonical decomposition (U+1F82 is four).
NFC_FOLD = 4
# A text of more than PROBE_CHARS characters per token of room is read in pieces of that many (see
# Tokenizer.tokens_within); PROBE_SLACK tokens past the room keep the kept tokens clear of where the prefix ends.
PROBE_CHARS, PROBE_SLACK = 8, 64


class TextTooLong(ValueError):
    """A text longer than max_length tokens, with truncation off; `length` says how long (the longest, of several)."""

    def __init__(self, message: str, length: str = ""):
        super().__init__(message)
        self.length = length


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
        first: int = 0,
        cut: Cut | None = None,
        left: bool = False,
    ) -> list[list[int]]:
        """`prefix + tokens of the text + suffix` for each text, at most `max_length` tokens.

        The suffix defaults to one `<|endoftext|>`, the token the embedding models pool. The tokenizer's own
        post-processor is bypassed, so the result is the same whether or not its tokenizer.json appends an EOS.
        A text too long to fit has its tokens cut (never the prefix or suffix; one over `max_chars` characters, which
        cannot fit, is cut to that before it is tokenized, see `_capped`) with a warning (unless `warn` is
        False, for callers that asked for truncation explicitly; or gathered in `cut`, for a caller that tokenizes
        in chunks and warns once), or is an error when `truncate` is False. A token the embedding table has no row
        for is an error naming the text. Texts are named by their index plus `first` (where a chunk begins).
        """
        prefix, suffix = list(prefix), [self.eos_id] if suffix is None else list(suffix)
        room = max_length - len(prefix) - len(suffix)
        if room < 1:
            raise ValueError(
                f"max_length={max_length} leaves no room for text after the {len(prefix) + len(suffix)} tokens of "
                f"the prompt; use at least {len(prefix) + len(suffix) + 1}"
            )
        self._check_rows(prefix + suffix, "the prompt")
        texts, capped = self._capped(texts, room, max_length, truncate, first, left)
        ids, probed = self.tokens_within(texts, room, first, left)
        capped |= probed
        too_long = [i for i, seq in enumerate(ids) if len(seq) > room or i in capped]
        if too_long and not truncate:
            most = max(too_long, key=lambda i: len(ids[i]))
            longest = f"{'at least ' if most in capped else ''}{len(ids[most]) + len(prefix) + len(suffix)}"
            raise TextTooLong(
                f"{len(too_long)} text(s) are longer than max_length={max_length} tokens "
                f"(indices {_some([first + i for i in too_long])}; the longest has {longest}); shorten them, raise "
                "max_length, or pass truncate=True",
                f"{longest} tokens",
            )
        lengths = [(first + i, len(ids[i]) + len(prefix) + len(suffix)) for i in too_long]
        for i in too_long:
            if left:
                del ids[i][: len(ids[i]) - room]
            else:
                del ids[i][room:]
        for i, seq in enumerate(ids):
            self._check_rows(seq, f"text {first + i}")
        warn_here = cut is None and warn
        cut = Cut(max_length) if warn_here else cut
        if cut is not None:  # only once every text is accepted: a call that raises counts none
            cut.add(len(ids), lengths, len(capped))
        if warn_here:
            cut.warn(stacklevel=4)  # the user's call of Embedder.encode or Reranker.score
        return [prefix + seq + suffix for seq in ids]

    def _capped(
        self, texts: Sequence[str], room: int, max_length: int, truncate: bool, first: int, left: bool = False
    ) -> tuple[Sequence[str], set[int]]:
        """The texts cut to `max_chars(room)` characters before they are tokenized (so that tokenizing a text costs
        memory and time for what can fit, not for all of it), and the indices of those cut; with `truncate` False, a
        text over the cap is a TextTooLong, as it could not fit."""
        cap = self.max_chars(room)
        over = [] if cap is None else [i for i, text in enumerate(texts) if len(text) > cap]
        if over and not truncate:
            raise TextTooLong(
                f"{len(over)} text(s) are longer than max_length={max_length} tokens: they have more than {cap} "
                f"characters, more than that many tokens can hold (indices {_some([first + i for i in over])}; the "
                f"longest has {max(len(texts[i]) for i in over)} characters); shorten them, raise max_length, or pass "
                "truncate=True",
                f"more than {cap} characters, more than that many tokens can hold",
            )
        if over:
            texts = [(text[-cap:] if left else text[:cap]) if len(text) > cap else text for text in texts]
        return texts, set(over)

    @cached_property
    def longest_token(self) -> int:
        """The longest vocabulary token in characters (a byte-level token of k characters stands for k bytes)."""
        return max(map(len, self._tokenizer.get_vocab(with_added_tokens=True)))

    def max_chars(self, max_length: int) -> int | None:
        """The most characters a text of `max_length` tokens can hold, so that a longer text cannot fit; None when
        the normalizer is one whose folding of characters is not known (only none and NFC are).

        Each token stands for at most `longest_token` characters of normalized text, and NFC folds at most
        NFC_FOLD input characters into one."""
        normalizer = self._tokenizer.normalizer
        if normalizer is not None and not isinstance(normalizer, normalizers.NFC):
            return None
        return max_length * self.longest_token * (1 if normalizer is None else NFC_FOLD)

    @property
    def backend(self) -> _HFTokenizer:
        """The `tokenizers` Tokenizer underneath (for the server's /tokenize, /decode and token-id checks)."""
        return self._tokenizer

    def token_id(self, token: str) -> int:
        """The id of a token of the vocabulary, or a clear error."""
        token_id = self._tokenizer.token_to_id(token)
        if token_id is None:
            raise ValueError(f"the tokenizer has no token {token!r}")
        return token_id

    def tokens_within(
        self, texts: Sequence[str], room: int, first: int = 0, left: bool = False
    ) -> tuple[list[list[int]], set[int]]:
        """The tokens of each text, and the indices of those known to pass `room` tokens from a prefix alone (a
        suffix, with `left`: the part a cut keeps). A text of more than PROBE_CHARS x room characters is read in
        pieces of that many, each tokenized alone and counted, until the count passes room + PROBE_SLACK; then only
        the prefix read so far is tokenized (enough to cut it to `room` or refuse it). Tokenizing holds a hundred or
        more bytes a character and more a token, so a piece holds at most PROBE_CHARS x room tokens whatever the
        text: a run of digits or emoji is a token a character, a run of spaces 128 characters a token (a prefix
        doubled until its tokens passed the room let a dense rest follow spaces: 948,194 tokens for 2 MB)."""
        size = PROBE_CHARS * room
        long = {i for i, text in enumerate(texts) if len(text) > size}
        ids = self._tokens(["" if i in long else text for i, text in enumerate(texts)], first)
        probed = set()
        for i in long:
            text = texts[i][::-1] if left else texts[i]  # a suffix is read from the end
            read = counted = 0
            while True:
                while read < len(text) and counted <= room + PROBE_SLACK:
                    piece = text[read : read + size]
                    counted += len(self._tokens([piece[::-1] if left else piece], first + i)[0])
                    read += len(piece)
                ids[i] = self._tokens([texts[i][len(text) - read :] if left else texts[i][:read]], first + i)[0]
                if read == len(text) or len(ids[i]) > room:
                    break
                counted = len(ids[i])  # the pieces' ends split runs that the prefix joins: read on
            if read < len(text):
                probed.add(i)
        return ids, probed

    def ids(self, text: str) -> list[int]:
        """The tokens of a text, without any special token added."""
        return self._tokens([text])[0]

    def _tokens(self, texts: Sequence[str], first: int = 0) -> list[list[int]]:
        """The tokens of each text; a text that is not valid Unicode (a lone surrogate) is an error naming it."""
        try:
            return [e.ids for e in self._tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)]
        except TypeError:
            for i, text in enumerate(texts):
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError as e:
                    raise ValueError(
                        f"text {first + i} is not valid Unicode: it holds the lone surrogate U+{ord(text[e.start]):04X}"
                        f" at character {e.start}"
                    ) from None
            raise

    def _check_rows(self, seq: list[int], what: str) -> None:
        if seq and max(seq) >= self.vocab_size:
            bad = max(seq)
            raise ValueError(
                f"{what} contains the token {self._tokenizer.id_to_token(bad)!r} (id {bad}), but the model's "
                f"embedding table has only {self.vocab_size} rows; remove it from the text"
            )


@dataclass
class Cut:
    """The texts that tokenizing cut to fit `max_length`, gathered over the chunks of one call and reported once."""

    max_length: int
    texts: int = 0  # texts tokenized so far
    indices: list[int] = field(default_factory=list)  # of the texts cut
    longest: int = 0  # tokens of the longest text cut, before the cut (of what was tokenized)
    capped: int = 0  # texts cut to the character cap before they were tokenized

    def add(self, texts: int, cut: list[tuple[int, int]], capped: int = 0) -> None:
        """A chunk of `texts` texts tokenized, with the (index, tokens) of those cut and how many of them were cut to
        the character cap first."""
        self.texts += texts
        self.indices += [i for i, _ in cut]
        self.longest = max([self.longest] + [n for _, n in cut])
        self.capped += capped

    def warn(self, stacklevel: int) -> None:
        if self.indices:
            warnings.warn(
                f"{len(self.indices)} of {self.texts} text(s) were longer than max_length={self.max_length} tokens and "
                f"were cut to fit (indices {_some(self.indices)}; the longest had {'at least ' if self.capped else ''}"
                f"{self.longest}); pass truncate=False "
                "(--no-truncate) to get an error instead",
                stacklevel=stacklevel + 1,
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
    bounds: list[int]  # cu_seqlens on the host

    def to(self, device: torch.device) -> Batch:
        """The batch on `device`: on a GPU, copied from pinned memory without waiting."""
        tensors = (self.input_ids, self.cu_seqlens, self.position_ids)
        if device.type == "cuda":
            tensors = (t.pin_memory() for t in tensors)
        return Batch(*(t.to(device, non_blocking=True) for t in tensors), self.index, self.bounds)

    def plan(self) -> ops.AttentionPlan:
        """The attention plan of the batch, its offsets checked here on the host (no device sync)."""
        return ops.AttentionPlan(self.cu_seqlens, len(self.input_ids), self.input_ids.device, bounds=self.bounds)


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
        bounds=cu_seqlens.tolist(),
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
