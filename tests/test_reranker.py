"""Reranker against the model card's recipe written with transformers, and its behaviour on every input."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from checkpoints import REPO, SHARED_TOKENIZER, TINY_SHAPES, make_reranker_checkpoint, texts_of_lengths
from qwen3_embed.reranker import DEFAULT_INSTRUCTION, PREFIX, SUFFIX, Reranker, format_pair
from qwen3_embed.tokenize import TextTooLong

QUERY = "What is the capital of China?"
DOCUMENTS = [
    "The capital of China is Beijing.",
    "Gravity is a force that attracts two bodies towards each other.",
    "",
    "yes",
]


@pytest.fixture(scope="module", params=["tied", "untied"])
def checkpoint(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"reranker-{request.param}")
    hf = make_reranker_checkpoint(folder, TINY_SHAPES["gqa2"], tied=request.param == "tied")
    keys = load_file(folder / "model.safetensors").keys()
    assert all(k.startswith("model.") or k == "lm_head.weight" for k in keys)
    assert ("lm_head.weight" in keys) == (request.param == "untied")  # the layouts under test
    return folder, hf


@pytest.fixture(scope="module")
def reranker(checkpoint):
    return Reranker.from_pretrained(checkpoint[0], device="cpu")


def card_recipe(folder, model, pairs: list[tuple[str, str]], max_length: int, instruction=DEFAULT_INSTRUCTION):
    """The model card's transformers code: left padding, full logits, log-softmax over [no, yes]."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
    no, yes = tokenizer.convert_tokens_to_ids("no"), tokenizer.convert_tokens_to_ids("yes")
    prefix_tokens = tokenizer.encode(PREFIX, add_special_tokens=False)
    suffix_tokens = tokenizer.encode(SUFFIX, add_special_tokens=False)
    texts = [format_pair(instruction, q, d) for q, d in pairs]
    inputs = tokenizer(texts, padding=False, truncation="longest_first", return_attention_mask=False,
                       max_length=max_length - len(prefix_tokens) - len(suffix_tokens))  # fmt: skip
    inputs["input_ids"] = [prefix_tokens + ids + suffix_tokens for ids in inputs["input_ids"]]
    with warnings.catch_warnings():  # the card's call draws a warning that max_length is unused here
        warnings.simplefilter("ignore")
        inputs = tokenizer.pad(inputs, padding=True, return_tensors="pt", max_length=max_length)
    with torch.no_grad():
        logits = model(**inputs).logits[:, -1, :]
    scores = torch.nn.functional.log_softmax(torch.stack([logits[:, no], logits[:, yes]], dim=1), dim=1)
    return scores[:, 1].exp()


def test_matches_the_card_recipe(checkpoint, reranker):
    folder, hf = checkpoint
    long_document = " ".join(texts_of_lengths(3, seed=9, max_words=80))
    documents = DOCUMENTS + texts_of_lengths(4, seed=8) + [long_document]
    pair_tokens = [len(reranker.tokenizer.ids(format_pair(DEFAULT_INSTRUCTION, QUERY, d))) for d in documents]
    max_length = len(reranker.prefix) + len(reranker.suffix) + max(pair_tokens[:-1]) + 3
    assert max_length < len(reranker.prefix) + len(reranker.suffix) + pair_tokens[-1]  # only the last is cut
    with pytest.warns(UserWarning, match="1 of 9 text"):
        ours = reranker.score(QUERY, documents, max_length=max_length)
    reference = card_recipe(folder, hf, [(QUERY, d) for d in documents], max_length)
    assert ours.dtype == torch.float32 and ours.shape == (len(documents),)
    assert 0 < ours.min() and ours.max() < 1 and ours.std() > 1e-3  # real probabilities, not a constant
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)


def test_raw_scores_are_the_logit_difference(reranker):
    probabilities = reranker.score(QUERY, DOCUMENTS)
    raw = reranker.score(QUERY, DOCUMENTS, raw=True)
    torch.testing.assert_close(torch.sigmoid(raw), probabilities, rtol=0, atol=1e-6)
    assert raw.abs().max() > 0.1


def test_instruction(checkpoint, reranker):
    folder, hf = checkpoint
    ours = reranker.score(QUERY, DOCUMENTS, instruction="Judge relevance")
    reference = card_recipe(folder, hf, [(QUERY, d) for d in DOCUMENTS], 8192, instruction="Judge relevance")
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)
    assert not torch.allclose(ours, reranker.score(QUERY, DOCUMENTS))


def test_batch_invariance_and_order(reranker):
    documents = texts_of_lengths(12, seed=4)
    together = reranker.score(QUERY, documents, batch_tokens=100_000)
    small_batches = reranker.score(QUERY, documents, batch_tokens=150)
    alone = torch.cat([reranker.score(QUERY, [d]) for d in documents])
    reversed_order = reranker.score(QUERY, documents[::-1])
    torch.testing.assert_close(small_batches, together, rtol=0, atol=1e-6)
    torch.testing.assert_close(alone, together, rtol=0, atol=1e-6)
    torch.testing.assert_close(reversed_order, together.flip(0), rtol=0, atol=1e-6)


def test_pairs_input(reranker):
    pairs = [(QUERY, DOCUMENTS[0]), ("Explain gravity", DOCUMENTS[1]), ("Explain gravity", DOCUMENTS[0])]
    scores = reranker.score(pairs)
    torch.testing.assert_close(scores[:1], reranker.score(QUERY, DOCUMENTS[:1]))
    torch.testing.assert_close(scores[1:], reranker.score("Explain gravity", [DOCUMENTS[1], DOCUMENTS[0]]))


def test_generators_are_read_once(reranker):
    scores = reranker.score(QUERY, DOCUMENTS)
    torch.testing.assert_close(reranker.score(QUERY, (d for d in DOCUMENTS)), scores, rtol=0, atol=0)
    torch.testing.assert_close(reranker.score((QUERY, d) for d in DOCUMENTS), scores, rtol=0, atol=0)
    assert reranker.rank(QUERY, iter(DOCUMENTS)) == reranker.rank(QUERY, DOCUMENTS)
    with_text = reranker.rank(QUERY, iter(DOCUMENTS), return_documents=True)
    assert [hit["text"] for hit in with_text] == [DOCUMENTS[hit["corpus_id"]] for hit in with_text]
    with pytest.raises(TypeError, match="the query is int: pass a str with a list of documents"):
        reranker.score(5)
    with pytest.raises(TypeError, match="a list of documents"):
        reranker.score(QUERY, 5)


def test_rank_and_top_k(reranker):
    documents = texts_of_lengths(8, seed=2)
    scores = reranker.score(QUERY, documents).tolist()
    ranked = reranker.rank(QUERY, documents)
    assert [hit["corpus_id"] for hit in ranked] == sorted(range(8), key=lambda i: -scores[i])
    assert [hit["score"] for hit in ranked] == sorted(scores, reverse=True)
    assert reranker.rank(QUERY, documents, top_k=3) == ranked[:3]
    assert reranker.rank(QUERY, documents, top_k=0) == []
    ties = reranker.rank(QUERY, ["same", "same", "same"])
    assert [hit["corpus_id"] for hit in ties] == [0, 1, 2]  # ties keep the input order


def test_empty_documents(reranker):
    assert reranker.score(QUERY, []).shape == (0,)
    assert reranker.rank(QUERY, []) == []


def test_bad_input(reranker):
    with pytest.raises(TypeError, match=r"documents\[1\] is int, not str"):
        reranker.score(QUERY, ["a", 1])
    with pytest.raises(TypeError, match=r"pairs\[0\] is not a \(query, document\) pair"):
        reranker.score([("a",)])
    with pytest.raises(TypeError, match="a list of documents"):
        reranker.score(QUERY, "one document")
    with pytest.raises(TypeError, match="not both"):
        reranker.score([("q", "d")], ["d"])
    with pytest.raises(ValueError, match="top_k=-1"):
        reranker.rank(QUERY, ["a"], top_k=-1)
    with pytest.raises(TypeError, match="a list of documents"):
        reranker.rank(QUERY, "one document")
    with pytest.raises(TypeError, match=r"pairs\[0\] is not a \(query, document\) pair"):
        reranker.predict(["a", 1])


@pytest.mark.parametrize("option", ["truncate", "show_progress", "raw"])
def test_boolean_options_take_only_booleans(checkpoint, reranker, option):
    with pytest.raises(TypeError, match=f"{option}='no' must be True or False"):
        reranker.score(QUERY, ["a"], **{option: "no"})
    with pytest.raises(TypeError, match="check_kind=0 must be True or False"):
        Reranker.from_pretrained(checkpoint[0], check_kind=0)


def test_max_length_too_small_says_the_minimum(reranker):
    with pytest.raises(TextTooLong, match=r"leaving no room for a document within max_length=10") as error:
        reranker.score(QUERY, ["a"], max_length=10)
    minimum = int(re.search(r"use max_length of at least (\d+)$", str(error.value))[1])
    assert reranker.score(QUERY, [""], max_length=minimum).shape == (1,)  # fits without a cut: no warning
    with pytest.raises(TextTooLong, match=f"at least {minimum}$"):
        reranker.score(QUERY, ["a"], max_length=minimum - 1)
    with pytest.raises(ValueError, match="longer than max_length"):
        reranker.score(QUERY, ["a b c d e f g h i j k l m n o p"], max_length=minimum, truncate=False)
    with pytest.raises(ValueError, match="max_length=1000000 is outside 2..32768"):
        reranker.score(QUERY, ["a"], max_length=10**6)


def test_a_query_that_leaves_no_room_for_a_document_is_refused(reranker):
    """Cutting such a pair's end would cut its whole document away, and score every document the same: refused, by
    the rule the server refuses it with (413), naming the query's length and the limit. A pair whose query fits still
    has its document's end cut."""
    query = "word " * 600
    tokens = len(reranker.tokenizer.ids(query))
    with pytest.raises(TextTooLong) as server:
        reranker.tokenize_query(query, DOCUMENTS[:2], max_length=512)
    message = str(server.value)
    assert re.fullmatch(rf"the query has {tokens} tokens, \d+ with the prompt, leaving no room for a document within "
                        r"max_length=512: shorten the query, or use max_length of at least \d+", message)  # fmt: skip
    calls = [
        lambda: reranker.score(query, DOCUMENTS[:2], max_length=512),
        lambda: reranker.score(query, DOCUMENTS[:2], max_length=512, truncate=False),
        lambda: reranker.rank(query, DOCUMENTS[:2], max_length=512),
        lambda: reranker.score([(QUERY, "d"), (query, "d")], max_length=512),
    ]
    for call in calls:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # refused, not cut with a warning
            with pytest.raises(TextTooLong) as refused:
                call()
        assert str(refused.value) == message
    with pytest.warns(UserWarning, match="1 of 2 text"):
        scores = reranker.score(QUERY, ["word " * 600, "word"], max_length=512)
    assert scores[0] != scores[1]


def test_the_command_refuses_a_query_that_leaves_no_room_for_a_document(tmp_path):
    """`qwen3-embed rerank` in a process of its own: the refusal names --max-length, and nothing is scored."""
    make_reranker_checkpoint(tmp_path, TINY_SHAPES["gqa2"], tied=True)
    argv = ["rerank", "--model", str(tmp_path), "--max-length", "512", "--query", "word " * 600,
            "--document", "Beijing is the capital", "--document", "Gravity is a force"]  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "qwen3_embed.cli", *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 1 and done.stdout == ""
    assert re.fullmatch(r"qwen3-embed: error: the query has \d+ tokens, \d+ with the prompt, leaving no room for a "
                        r"document within --max-length=512: shorten the query, or use --max-length of at least \d+\n",
                        done.stderr)  # fmt: skip


def test_untied_config_without_lm_head_is_an_error(checkpoint, tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(checkpoint[0], folder)
    weights = {k: v for k, v in load_file(folder / "model.safetensors").items() if k != "lm_head.weight"}
    save_file(weights, folder / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    config["tie_word_embeddings"] = False
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="no lm_head.weight, yet config.json says the embeddings are not tied"):
        Reranker.from_pretrained(folder)


@pytest.mark.skipif(
    not (SHARED_TOKENIZER / "tokenizer.json").exists(), reason=f"no real Qwen3 tokenizer at {SHARED_TOKENIZER}"
)
def test_real_tokenizer_with_or_without_an_eos_post_processor(tmp_path):
    """The yes/no ids are the official ones, and an EOS-appending tokenizer.json changes nothing."""
    folder = tmp_path / "real"
    make_reranker_checkpoint(folder, (151669, 32, 1, 4, 2, 8, 64), tied=True)
    shutil.copy(SHARED_TOKENIZER / "tokenizer.json", folder / "tokenizer.json")  # appends <|endoftext|>
    with_eos = Reranker.from_pretrained(folder)
    assert with_eos.tokenizer.token_id("yes") == 9693 and with_eos.tokenizer.token_id("no") == 2152
    data = json.loads((folder / "tokenizer.json").read_text())
    data["post_processor"] = None
    (folder / "tokenizer.json").write_text(json.dumps(data))
    without = Reranker.from_pretrained(folder)
    assert with_eos.prefix == without.prefix and with_eos.suffix == without.suffix
    documents = ["中文 document", "The capital of China is Beijing."]
    torch.testing.assert_close(with_eos.score(QUERY, documents), without.score(QUERY, documents), rtol=0, atol=0)


def test_rank_takes_numpy_and_tuples(reranker):
    import numpy as np

    ranked = reranker.rank(QUERY, DOCUMENTS)
    assert reranker.rank(QUERY, np.array(DOCUMENTS)) == ranked
    assert reranker.rank(QUERY, tuple(DOCUMENTS), top_k=np.int64(2)) == ranked[:2]
    with pytest.raises(TypeError, match=r"top_k=1.5 must be an integer"):
        reranker.rank(QUERY, DOCUMENTS, top_k=1.5)


def test_a_converted_model_still_scores(checkpoint):
    """The yes/no rows follow the model's dtype: .double() (or .half()) on the loaded model keeps score working."""
    converted = Reranker.from_pretrained(checkpoint[0], device="cpu")
    before = converted.score("capital", ["Beijing", "gravity"])
    converted.model.double()
    torch.testing.assert_close(converted.score("capital", ["Beijing", "gravity"]), before, rtol=0, atol=1e-5)


def cross_encoder(folder):
    """sentence-transformers' CrossEncoder on a reranker checkpoint, with a chat template that renders the card's
    prompt for its (query, document) messages (the instruction from a system message, as its `prompt` makes one)."""
    from sentence_transformers import CrossEncoder

    text = lambda s: "'" + s.replace("\n", "\\n").replace("'", "\\'") + "'"  # noqa: E731  (a Jinja string)
    content = lambda role: f"{{%- for m in messages if m.role == '{role}' -%}}{{{{- m.content -}}}}{{%- endfor -%}}"  # noqa: E731
    template = (
        f"{{%- set ns = namespace(instruction={text(DEFAULT_INSTRUCTION)}) -%}}"
        "{%- for m in messages if m.role == 'system' -%}{%- set ns.instruction = m.content -%}{%- endfor -%}"
        f"{{{{- {text(PREFIX + '<Instruct>: ')} + ns.instruction + {text(chr(10) + '<Query>: ')} -}}}}"
        f"{content('query')}{{{{- {text(chr(10) + '<Document>: ')} -}}}}{content('document')}{{{{- {text(SUFFIX)} -}}}}"
    )
    (folder / "chat_template.jinja").write_text(template, encoding="utf-8")
    try:
        return CrossEncoder(str(folder), device="cpu")
    finally:
        (folder / "chat_template.jinja").unlink()


def test_predict_and_rank_match_cross_encoder(checkpoint, reranker):
    """CrossEncoder's predict and rank, their arguments and return types, on the same checkpoint."""
    import numpy as np

    ce = cross_encoder(checkpoint[0])
    documents = DOCUMENTS + texts_of_lengths(4, seed=12)
    pairs = [(QUERY, d) for d in documents]
    expected = ce.predict(pairs)
    ours = reranker.predict(pairs)
    assert isinstance(ours, np.ndarray) and ours.dtype == expected.dtype == np.float32
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-5)
    single = reranker.predict(pairs[1])
    assert isinstance(single, np.float32) and single == pytest.approx(float(ce.predict(pairs[1])), abs=1e-5)
    tensor = reranker.predict(pairs, convert_to_tensor=True)
    assert isinstance(tensor, torch.Tensor) and isinstance(ce.predict(pairs, convert_to_tensor=True), torch.Tensor)
    identity = torch.nn.Identity()  # the logits, as raw=True gives them
    logits = reranker.predict(pairs, activation_fn=identity)
    np.testing.assert_allclose(logits, ce.predict(pairs, activation_fn=identity), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits, reranker.score(pairs, raw=True).numpy(), rtol=0, atol=0)
    np.testing.assert_allclose(reranker.predict(pairs, instruction="Judge relevance"),
                               ce.predict(pairs, prompt="Judge relevance"), rtol=0, atol=1e-5)  # fmt: skip
    for options in [{}, {"top_k": 3}, {"return_documents": True}, {"top_k": 2, "return_documents": True}]:
        theirs = ce.rank(QUERY, documents, batch_size=4, **options)
        with pytest.warns(UserWarning, match="batch_size=4 is not used"):
            ranked = reranker.rank(QUERY, documents, batch_size=4, **options)
        assert [hit.keys() for hit in ranked] == [hit.keys() for hit in theirs]
        assert [hit["corpus_id"] for hit in ranked] == [hit["corpus_id"] for hit in theirs]
        assert [hit.get("text") for hit in ranked] == [hit.get("text") for hit in theirs]
        assert all(type(a["score"]) is type(b["score"]) is float for a, b in zip(ranked, theirs))
        np.testing.assert_allclose([h["score"] for h in ranked], [h["score"] for h in theirs], rtol=0, atol=1e-5)


# The Qwen3-Reranker model card's prompt, copied from the card (not imported from the code under test).
CARD_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
CARD_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
CARD_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
# Their ids in Qwen3's vocabulary: the special tokens are matched in the text ("yes" is 9693 inside '"yes"').
CARD_PREFIX_IDS = [151644, 8948, 198, 60256, 3425, 279, 11789, 20027, 279, 8502, 3118, 389, 279, 11361, 323, 279, 758,
                   1235, 3897, 13, 7036, 429, 279, 4226, 646, 1172, 387, 330, 9693, 1, 476, 330, 2152, 3263, 151645,
                   198, 151644, 872, 198]  # fmt: skip
CARD_SUFFIX_IDS = [151645, 198, 151644, 77091, 198, 151667, 271, 151668, 271]


def test_the_prompt_is_the_model_cards_text():
    assert (PREFIX, SUFFIX, DEFAULT_INSTRUCTION) == (CARD_PREFIX, CARD_SUFFIX, CARD_INSTRUCTION)
    pair = format_pair("an instruction", QUERY, DOCUMENTS[0])
    assert pair == f"<Instruct>: an instruction\n<Query>: {QUERY}\n<Document>: {DOCUMENTS[0]}"


@pytest.mark.skipif(
    not (SHARED_TOKENIZER / "tokenizer.json").exists(),
    reason=f"the card's token ids need the real Qwen3 tokenizer, which is not at {SHARED_TOKENIZER} (it is never "
    "committed: copy ../shared/qwen3-tokenizer to local/, or set QWEN3_TOKENIZER_DIR)",
)
def test_the_prompt_gives_the_model_cards_token_ids(tmp_path):
    """The card tokenizes with transformers: prefix ids + the pair's ids (no special tokens added) + suffix ids."""
    from transformers import AutoTokenizer

    card = AutoTokenizer.from_pretrained(SHARED_TOKENIZER)
    assert card.encode(CARD_PREFIX, add_special_tokens=False) == CARD_PREFIX_IDS
    assert card.encode(CARD_SUFFIX, add_special_tokens=False) == CARD_SUFFIX_IDS
    folder = tmp_path / "real"
    make_reranker_checkpoint(folder, (151669, 32, 1, 4, 2, 8, 64), tied=True, tokenizer=SHARED_TOKENIZER)
    reranker = Reranker.from_pretrained(folder)
    assert reranker.prefix == CARD_PREFIX_IDS and reranker.suffix == CARD_SUFFIX_IDS
    pairs = [(QUERY, DOCUMENTS[0]), ("Explain gravity", "中文 document 🙂")]
    texts = [f"<Instruct>: {CARD_INSTRUCTION}\n<Query>: {q}\n<Document>: {d}" for q, d in pairs]
    expected = [CARD_PREFIX_IDS + card.encode(t, add_special_tokens=False) + CARD_SUFFIX_IDS for t in texts]
    assert reranker.tokenize(pairs) == expected
    assert reranker.tokenize_query(QUERY, [DOCUMENTS[0]]) == expected[:1]
