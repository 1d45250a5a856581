"""Telling the model's own token ids from another tokenizer's, by a round trip through the model's tokenizer.

OpenAI's clients may send token ids in place of texts, and LangChain's `OpenAIEmbeddings` does by default: OpenAI's
tiktoken (cl100k) ids, which the model would embed as its own ids of other tokens (cosine 0.18 to the right vector).
The model's own ids are what its tokenizer gives for some text, so decoding them to bytes and tokenizing those again
gives them back; another tokenizer's ids mostly decode to a jumble that tokenizes to other ids.

A client may also cut a long text's ids into windows: a window's first and last tokens can hold part of a UTF-8
character, and its first and last words may tokenize otherwise on their own (`'` then `s` becomes `'s`). So the
partial characters at either end are set aside, and where the whole window does not come back, the text between its
first and last pre-tokens must. benchmarks/foreign_ids.py measures both sides on the real Qwen3 tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Tokenizer

# A request is refused when at least this share of its id lists (and at least one) do not come back.
FOREIGN_SHARE = 0.25


def byte_level_alphabet() -> dict[str, int]:
    """The byte-level BPE's characters (GPT-2's): each stands for one byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    chars = {b: chr(b) for b in printable} | {b: chr(256 + n) for n, b in enumerate(others)}
    return {c: b for b, c in chars.items()}


class RoundTrip:
    """The bytes of each token of a byte-level BPE tokenizer (Qwen's), and the round trip of id lists through it."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        alphabet = byte_level_alphabet()
        added = {i: t.content for i, t in tokenizer.get_added_tokens_decoder().items()}
        self.bytes: list[bytes] = []
        for i in range(tokenizer.get_vocab_size(with_added_tokens=True)):
            token = added.get(i)
            if token is None:
                token = tokenizer.id_to_token(i) or ""
                self.bytes.append(b"".join(bytes([alphabet[c]]) if c in alphabet else c.encode() for c in token))
            else:
                self.bytes.append(token.encode())

    def foreign(self, lists: Sequence[Sequence[int]]) -> list[int]:
        """The indices of the lists that do not come back from the round trip."""
        return [i for i, ids in enumerate(lists) if not self.survives(ids)]

    def survives(self, ids: Sequence[int]) -> bool:
        """Whether `ids` come back when decoded and tokenized again, partial characters at the ends aside, and
        where the whole does not, the ids between the text's first and last pre-tokens."""
        if any(not 0 <= t < len(self.bytes) for t in ids):
            return False  # an embedding row without a token: the tokenizer never gives it
        offsets = [0]
        for t in ids:
            offsets.append(offsets[-1] + len(self.bytes[t]))
        data = b"".join(self.bytes[t] for t in ids)
        first = 0
        while first < len(ids) and 0x80 <= data[offsets[first]] < 0xC0:  # starts inside a character
            first += 1
        last = len(ids)
        while last > first:
            try:
                text = data[offsets[first] : offsets[last]].decode()
                break
            except UnicodeDecodeError as e:
                if e.reason != "unexpected end of data":
                    return False  # invalid within: no text's bytes
                last -= 1  # ends inside a character
        else:
            return True  # no whole character: nothing to judge
        window = list(ids[first:last])
        if self.encode(text) == window:
            return True
        return self._middle_survives(text, window, [o - offsets[first] for o in offsets[first : last + 1]])

    def _middle_survives(self, text: str, window: list[int], offsets: list[int]) -> bool:
        """Whether the ids between the first and last pre-tokens of `text` (that start at a token) come back;
        `offsets`: each token's first byte in the text's bytes, and its end."""
        at = {offset: i for i, offset in enumerate(offsets)}
        chars = [0]
        for c in text:
            chars.append(chars[-1] + len(c.encode()))
        starts = [chars[start] for _, (start, _) in self.tokenizer.pre_tokenizer.pre_tokenize_str(text)[1:]]
        starts = [s for s in starts if s in at]
        if len(starts) < 2:
            return True  # one or two words: nothing to judge between the ends
        data = text.encode()
        middle = data[starts[0] : starts[-1]].decode()
        return self.encode(middle) == window[at[starts[0]] : at[starts[-1]]]

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids
