"""Token ids with exactly one final <|endoftext|>, truncation that says so, and packing into batches."""

from __future__ import annotations

import warnings

import pytest
import torch

from checkpoints import SHARED_TOKENIZER, make_tokenizer
from qwen3_embed import tokenize
from qwen3_embed.tokenize import PROBE_CHARS, PROBE_SLACK, TextTooLong, Tokenizer, batches, pack

TEXTS = ["The capital of China is Beijing.", "", " ", "gravity<|endoftext|>", "<|im_start|>x<|im_end|>", "中文 é"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    with_eos, without_eos = tmp_path_factory.mktemp("with"), tmp_path_factory.mktemp("without")
    make_tokenizer(with_eos, post_processor=True)
    make_tokenizer(without_eos, post_processor=False)
    return with_eos, without_eos


def test_eos_appended_once_with_or_without_post_processor(folders):
    with_eos, without_eos = (Tokenizer(f / "tokenizer.json", vocab_size=300) for f in folders)
    a, b = with_eos.encode(TEXTS, max_length=64), without_eos.encode(TEXTS, max_length=64)
    assert a == b
    eos = with_eos.eos_id
    for ids in a:
        assert ids[-1] == eos
    assert a[1] == [eos] and a[3][-2:] == [eos, eos]  # an EOS typed in the text stays text


def test_matches_the_transformers_tokenizer(folders):
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(folders[0])
    ours = Tokenizer(folders[0] / "tokenizer.json", vocab_size=300).encode(TEXTS, max_length=64)
    assert ours == reference(TEXTS)["input_ids"]


def test_truncation_keeps_the_eos_and_warns(folders):
    tok = Tokenizer(folders[0] / "tokenizer.json", vocab_size=300)
    texts = ["a b c d e f g h i j", "short", "k l m n o p q r s t u v"]
    full = tok.encode(texts, max_length=64)
    with pytest.warns(UserWarning, match=r"2 of 3 text\(s\) were longer than max_length=6 tokens .*indices 0, 2"):
        cut = tok.encode(texts, max_length=6)
    assert [len(ids) for ids in cut] == [6, len(full[1]), 6]
    assert cut[0] == full[0][:5] + [tok.eos_id] and cut[1] == full[1]


def test_exact_fit_is_not_truncation(folders):
    tok = Tokenizer(folders[0] / "tokenizer.json", vocab_size=300)
    n = len(tok.encode(["a b c d"], max_length=64)[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(tok.encode(["a b c d"], max_length=n)[0]) == n


def test_truncation_can_be_an_error(folders):
    tok = Tokenizer(folders[0] / "tokenizer.json", vocab_size=300)
    with pytest.raises(
        ValueError, match=r"1 text\(s\) are longer than max_length=4 tokens \(indices 1; the longest has"
    ):
        tok.encode(["a", "a b c d e f g"], max_length=4, truncate=False)


def test_a_text_over_the_character_cap_is_cut_to_it_before_it_is_tokenized(folders, monkeypatch):
    """Tokenizing costs about 130 bytes a character: a 9.6 MB text given to Embedder.encode took 11.7 s and 1.9 GB,
    though all but max_length tokens of it were dropped. A text of more characters than the tokens left for it can
    hold (max_chars) cannot fit, so Tokenizer.encode (which the Embedder, the Reranker, the corpus encoder and the
    server use) cuts it to that before tokenizing it, and refuses it without truncation."""
    tok = Tokenizer(folders[0] / "tokenizer.json", vocab_size=300)
    tokens, seen = Tokenizer._tokens, []
    monkeypatch.setattr(Tokenizer, "_tokens", lambda self, texts, first=0: seen.extend(map(len, texts)) or
                        tokens(self, texts, first))  # fmt: skip
    cap = tok.max_chars(16 - 1)  # max_length 16, less the EOS
    text = "a b c d " * cap
    with pytest.warns(UserWarning, match=r"1 of 2 text\(s\) were longer than .* the longest had at least \d+\)"):
        ids = tok.encode([text, "short"], max_length=16)
    *pieces, prefix = seen[2:]  # of the capped text: pieces of PROBE_CHARS characters a token of room, counted, then
    assert seen[:2] == [0, 5] and set(pieces) == {PROBE_CHARS * 15} and prefix == sum(pieces)  # the prefix they make
    assert ids[0] == tok.ids(text)[:15] + [tok.eos_id]  # the tokens of the whole text
    with pytest.raises(TextTooLong, match=rf"1 text\(s\) are longer than max_length=16 tokens: they have more than "
                       rf"{cap} characters.*\(indices 1; the longest has {len(text)} characters\)"):  # fmt: skip
        tok.encode(["short", text], max_length=16, truncate=False)


def test_a_long_text_is_read_in_pieces_as_far_as_it_can_fit(folders, monkeypatch):
    """Under the cap, a text of a token a character (digits, emoji) still cost its whole length to tokenize (a 50 MB
    line: +1.5 GB, as an attacker trial reported). A long text is counted in pieces of PROBE_CHARS characters a token
    of room, until its tokens pass the room by PROBE_SLACK; only the prefix read is tokenized, and its first tokens
    are the whole text's."""
    tok = Tokenizer(folders[0] / "tokenizer.json", vocab_size=300)
    tokens, seen = Tokenizer._tokens, []
    monkeypatch.setattr(Tokenizer, "_tokens", lambda self, texts, first=0: seen.append(list(map(len, texts))) or
                        tokens(self, texts, first))  # fmt: skip
    monkeypatch.setattr(tokenize, "PROBE_CHARS", 1)  # so that the first piece falls short and more are read
    text = "gravity pulls " * 1000
    with pytest.warns(UserWarning, match=r"the longest had at least \d+\)"):
        ids = tok.encode(["short", text], max_length=64)
    *pieces, prefix = [sizes[0] for sizes in seen[1:]]
    assert seen[0] == [5, 0] and len(pieces) >= 2 and set(pieces) == {63} and prefix == sum(pieces)
    counts = [len(tok.ids(text[a : a + 63])) for a in range(0, prefix, 63)]
    assert sum(counts[:-1]) <= 63 + PROBE_SLACK < sum(counts)
    assert ids[1] == tok.ids(text)[:63] + [tok.eos_id]
    seen.clear()
    under_the_cap = text[: tok.max_chars(63)]
    with pytest.raises(TextTooLong, match=r"\(indices 0; the longest has at least \d+\)") as refused:
        tok.encode([under_the_cap], max_length=64, truncate=False)
    assert refused.value.length.startswith("at least ") and max(map(max, seen)) == prefix
    seen.clear()
    assert tok.encode([text[:100]], max_length=64, warn=False)[0] == tok.ids(text[:100])[:63] + [tok.eos_id]
    assert seen[-1] == [100]  # a text that ends before its pieces pass the room: tokenized whole


@pytest.mark.skipif(not SHARED_TOKENIZER.exists(), reason=f"needs the real tokenizer ({SHARED_TOKENIZER})")
def test_spaces_then_digits_cost_no_more_than_the_pieces_that_fit():
    """Doubling a prefix until its tokens passed the room was beaten by a run of spaces (128 a token) and then
    digits (one a token): the last prefix was the whole text, 948,194 tokens of a 2 MB /tokenize request."""
    tok = Tokenizer(SHARED_TOKENIZER / "tokenizer.json", vocab_size=151669)
    room, text = 63, " " * (128 * 200) + "a" + "7" * 100_000
    counted = []
    with pytest.MonkeyPatch.context() as patch:
        tokens = Tokenizer._tokens
        patch.setattr(Tokenizer, "_tokens", lambda self, texts, first=0: counted.append(
            sum(map(len, out := tokens(self, texts, first)))) or out)  # fmt: skip
        for left in (False, True):
            ids, probed = tok.tokens_within([text[::-1] if left else text], room, left=left)  # spaces read first
            assert probed == {0} and max(counted) <= PROBE_CHARS * room + room + PROBE_SLACK
            assert left or ids[0][:room] == tok.ids(text)[:room]  # a cut end of a run of spaces moves its tokens
            counted.clear()


def test_token_outside_the_embedding_table(folders):
    tok = Tokenizer(folders[0] / "tokenizer.json", vocab_size=260)
    with pytest.raises(
        ValueError, match=r"text 1 contains the token .* but the model's embedding table has only 260 rows"
    ):
        tok.encode(["a", "The capital of China is Beijing."], max_length=64)


def test_tokenizer_without_endoftext(tmp_path):
    from tokenizers import Tokenizer as HF
    from tokenizers.models import WordLevel

    HF(WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match="has no <|endoftext|> token"):
        Tokenizer(tmp_path / "tokenizer.json", vocab_size=2)


needs_real_tokenizer = pytest.mark.skipif(
    not (SHARED_TOKENIZER / "tokenizer.json").exists(),
    reason=f"the real Qwen3 tokenizer is not at {SHARED_TOKENIZER} (set QWEN3_TOKENIZER_DIR)",
)


@needs_real_tokenizer
def test_real_tokenizer_ids():
    tok = Tokenizer(SHARED_TOKENIZER / "tokenizer.json", vocab_size=151669)
    # the output quoted from the real tokenizer in the Qwen3-Embedding issue tracker (there left-padded)
    assert tok.encode(["test", "test again"], max_length=8192) == [[1944, 151643], [1944, 1549, 151643]]
    assert tok.eos_id == 151643


@needs_real_tokenizer
def test_real_tokenizer_matches_transformers_on_hard_text():
    from transformers import AutoTokenizer

    texts = [
        "<think>x</think>",
        "<|im_end|> not eos",
        "中文、日本語、한국어 🙂👍🏽",
        "tabs\tand\nnewlines  ",
        "café vs cafe\u0301",
    ]
    ours = Tokenizer(SHARED_TOKENIZER / "tokenizer.json", vocab_size=151669).encode(texts, max_length=8192)
    assert ours == AutoTokenizer.from_pretrained(SHARED_TOKENIZER)(texts)["input_ids"]


@needs_real_tokenizer
def test_added_token_past_a_smaller_table_is_an_error():
    tok = Tokenizer(SHARED_TOKENIZER / "tokenizer.json", vocab_size=151665)  # the 4B/8B table
    with pytest.raises(ValueError, match=r"text 1 contains the token '</think>' \(id 151668\)"):
        tok.encode(["fine", "<think>x</think>"], max_length=8192)


def test_pack():
    batch = pack([[5, 6, 7], [8], [9, 10]], index=[2, 0, 1])
    assert batch.input_ids.tolist() == [5, 6, 7, 8, 9, 10]
    assert batch.cu_seqlens.tolist() == [0, 3, 4, 6] and batch.cu_seqlens.dtype == torch.int32
    assert batch.position_ids.tolist() == [0, 1, 2, 0, 0, 1]
    assert batch.index == [2, 0, 1]


def test_batches_respect_the_budget_and_cover_every_sequence_once():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 40, (50,), generator=g).tolist() + [100]
    sequences = [[1] * n for n in lengths]
    seen = []
    sizes = []
    for batch in batches(sequences, max_tokens=64):
        tokens = int(batch.cu_seqlens[-1])
        assert tokens <= 64 or len(batch.index) == 1  # only a lone sequence may exceed the budget
        sizes.extend(len(sequences[i]) for i in batch.index)
        seen.extend(batch.index)
    assert sorted(seen) == list(range(len(sequences)))
    assert sizes == sorted(sizes, reverse=True)
