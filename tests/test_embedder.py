"""Embedder against sentence-transformers, batch invariance, order, and every bad input."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from checkpoints import SHAPE_0_6B, SHARED_TOKENIZER, TINY_SHAPES, texts_of_lengths
from qwen3_embed import Embedder

TASK = "Given a web search query, retrieve relevant passages that answer the query"
QUERIES = ["What is the capital of China?", "Explain gravity", "中文 query 🙂"]
DOCUMENTS = [
    "The capital of China is Beijing.",
    "Gravity is a force that attracts two bodies towards each other. It gives weight to physical objects.",
    "",
]


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)


def sentence_transformer(folder, **kwargs):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device="cpu", **kwargs)


@pytest.mark.parametrize("shape", ["gqa4", "0.6B-layers"])
def test_matches_sentence_transformers(build_checkpoint, shape):
    folder, _ = build_checkpoint(shape, SHAPE_0_6B if shape == "0.6B-layers" else TINY_SHAPES[shape])
    ours = Embedder.from_pretrained(folder, device="cpu")
    st = sentence_transformer(folder)
    documents = DOCUMENTS + texts_of_lengths(6, seed=3)
    q_ref = st.encode(QUERIES, prompt_name="query", convert_to_tensor=True)
    d_ref = st.encode(documents, convert_to_tensor=True)
    assert cosine(ours.encode(QUERIES, prompt_name="query"), q_ref).min() >= 0.99999
    assert cosine(ours.encode(QUERIES, instruction=TASK), q_ref).min() >= 0.99999
    assert cosine(ours.encode(documents), d_ref).min() >= 0.99999


def test_matryoshka_dim_matches_sentence_transformers_truncate_dim(tiny, embedder):
    st = sentence_transformer(tiny[0], truncate_dim=24)
    texts = QUERIES + DOCUMENTS
    ours = embedder.encode(texts, dim=24)
    assert ours.shape == (len(texts), 24)
    torch.testing.assert_close(ours.norm(dim=-1), torch.ones(len(texts)))  # re-normalized after the slice
    assert cosine(ours, st.encode(texts, convert_to_tensor=True)).min() >= 0.99999


@pytest.mark.skipif(
    not (SHARED_TOKENIZER / "tokenizer.json").exists(), reason=f"no real Qwen3 tokenizer at {SHARED_TOKENIZER}"
)
def test_real_vocabulary_matches_sentence_transformers(build_checkpoint):
    folder, _ = build_checkpoint("real-vocab", (151669, 32, 2, 4, 2, 8, 64), tokenizer=SHARED_TOKENIZER)
    texts = ["test", "test again", "中文、日本語 🙂", "<|im_start|>user<|im_end|>", "Explain gravity"]
    ours = Embedder.from_pretrained(folder, device="cpu").encode(texts, prompt_name="query")
    ref = sentence_transformer(folder).encode(texts, prompt_name="query", convert_to_tensor=True)
    assert cosine(ours, ref).min() >= 0.99999


def test_batch_invariance(embedder):
    texts = texts_of_lengths(40, seed=5, max_words=200)
    together = embedder.encode(texts, batch_tokens=100_000)
    in_small_batches = embedder.encode(texts, batch_tokens=300)
    for i in [0, 7, 13, 39]:
        alone = embedder.encode(texts[i])
        assert (alone - together[i]).abs().max() <= 1e-5
    assert (in_small_batches - together).abs().max() <= 1e-5


def test_order_is_the_callers(embedder):
    texts = texts_of_lengths(12, seed=6)
    forward = embedder.encode(texts, batch_tokens=200)
    backward = embedder.encode(texts[::-1], batch_tokens=200)
    torch.testing.assert_close(backward, forward.flip(0), rtol=0, atol=1e-6)
    assert not torch.allclose(forward[0], forward[1])


def test_output_types_and_shapes(embedder):
    hidden = embedder.config.hidden_size
    single = embedder.encode("hello")
    assert single.shape == (hidden,) and single.dtype == torch.float32 and single.device.type == "cpu"
    assert embedder.encode(("a", "b")).shape == (2, hidden)
    assert embedder.encode([]).shape == (0, hidden)
    assert embedder.encode([], dim=8).shape == (0, 8)


def test_normalize_false_gives_the_pooled_hidden_state(embedder):
    raw = embedder.encode(["hello world"], normalize=False)
    assert abs(raw.norm().item() - 1) > 1e-3
    torch.testing.assert_close(torch.nn.functional.normalize(raw, dim=-1), embedder.encode(["hello world"]))


def test_similarity(embedder):
    q, d = embedder.encode(QUERIES), embedder.encode(DOCUMENTS)
    scores = embedder.similarity(q, d)
    assert scores.shape == (3, 3)
    torch.testing.assert_close(scores, q @ d.T)
    torch.testing.assert_close(embedder.similarity(q[0], d), scores[:1])
    torch.testing.assert_close(embedder.similarity(2 * q, d), scores)  # cosine, whatever the norms
    with pytest.raises(ValueError, match="cannot compare vectors of 96 and 8 dimensions"):
        embedder.similarity(q, d[:, :8])


def test_non_string_item_is_named(embedder):
    with pytest.raises(TypeError, match=r"texts\[2\] is int, not str"):
        embedder.encode(["a", "b", 3])
    with pytest.raises(TypeError, match=r"texts\[0\] is NoneType"):
        embedder.encode([None])
    with pytest.raises(ValueError, match=r"text 1 is not valid Unicode: it holds the lone surrogate U\+D800 at "):
        embedder.encode(["ok", "a\ud800"])


@pytest.mark.parametrize("dim", [0, -1, 97])
def test_dim_out_of_range(embedder, dim):
    with pytest.raises(ValueError, match=f"dim={dim} is outside 1..96, the model's hidden size"):
        embedder.encode(["a"], dim=dim)


def test_prompt_errors(embedder):
    with pytest.raises(ValueError, match="one of instruction, prompt_name and prompt, not instruction and prompt_name"):
        embedder.encode(["a"], instruction="x", prompt_name="query")
    with pytest.raises(ValueError, match="not prompt_name and prompt"):
        embedder.encode_query(["a"], prompt_name="query", prompt="Query: ")
    with pytest.raises(
        ValueError, match=r"prompt_name='passage' is not among the checkpoint's prompts \['document', 'query'\]"
    ):
        embedder.encode(["a"], prompt_name="passage")


def test_max_length_limits(embedder):
    with pytest.raises(ValueError, match="max_length=40000 is outside 2..32768"):
        embedder.encode(["a"], max_length=40000)
    long_text = "gravity " * 50
    with pytest.warns(UserWarning, match="1 of 2 text"):
        cut = embedder.encode(["short", long_text], max_length=16)
    with pytest.raises(ValueError, match="longer than max_length=16"):
        embedder.encode(["short", long_text], max_length=16, truncate=False)
    with pytest.warns(UserWarning):
        ids = embedder.tokenizer.encode([long_text], max_length=16)[0]
    assert len(ids) == 16
    same = embedder.encode(embedder.tokenizer._tokenizer.decode(ids[:-1]))
    torch.testing.assert_close(cut[1], same, rtol=0, atol=1e-5)  # the kept prefix, embedded with its EOS


def test_default_max_length_is_8192_within_the_model_limit(build_checkpoint):
    folder, _ = build_checkpoint("short-context", TINY_SHAPES["gqa1"], max_position_embeddings=64)
    small = Embedder.from_pretrained(folder)
    with pytest.warns(UserWarning, match="max_length=64"):
        small.encode(["gravity " * 100])


def test_batch_tokens_must_be_positive(embedder):
    with pytest.raises(ValueError, match="batch_tokens=0"):
        embedder.encode(["a"], batch_tokens=0)


def test_fp16_overflow_names_the_texts(tiny, tmp_path):
    folder = tmp_path / "overflow"
    shutil.copytree(tiny[0], folder)
    weights = load_file(folder / "model.safetensors")
    weights["layers.1.mlp.down_proj.weight"] *= 1e6
    save_file(weights, folder / "model.safetensors")
    texts = ["a", "the capital", "b"]
    assert torch.isfinite(Embedder.from_pretrained(folder, dtype="float32").encode(texts)).all()
    with pytest.raises(FloatingPointError, match=r"non-finite .* torch.float16 .*indices \[0, 1, 2\].*bfloat16"):
        Embedder.from_pretrained(folder, dtype="float16").encode(texts)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_non_finite_vectors_get_the_advice_of_the_dtype_in_use(tiny, tmp_path, dtype):
    """Only float16 overflows where the others do not: in bfloat16 or float32, NaN points at the weights."""
    folder = tmp_path / "nan"
    shutil.copytree(tiny[0], folder)
    weights = load_file(folder / "model.safetensors")
    weights["norm.weight"][0] = float("nan")
    save_file(weights, folder / "model.safetensors")
    advice = {"bfloat16": "try dtype='float32'; if it gives them too, the", "float32": "the"}[dtype]
    with pytest.raises(FloatingPointError, match=rf"in torch.{dtype} for the texts at indices \[0\]; {advice} "
                       "checkpoint's weights may hold NaN or infinite values: download it again$"):  # fmt: skip
        Embedder.from_pretrained(folder, dtype=dtype).encode(["a"])


@pytest.mark.parametrize("option", ["normalize", "truncate", "show_progress", "convert_to_numpy"])
def test_boolean_options_take_only_booleans(embedder, option):
    with pytest.raises(TypeError, match=f"{option}='no' must be True or False"):
        embedder.encode(["a"], **{option: "no"})
    assert embedder.encode("a", **{option: np.True_}).shape == (96,)


def test_defaults_on_cpu(embedder):
    assert embedder.device.type == "cpu" and embedder.dtype == torch.float32


@pytest.mark.parametrize("value", [256.0, "8", True])
def test_dim_must_be_an_integer(embedder, value):
    with pytest.raises(TypeError, match=r"dim=.* must be an integer \(1\.\.96\)"):
        embedder.encode(["a"], dim=value)


def test_numpy_integers_are_integers(embedder):
    assert embedder.encode(["a"], dim=np.int64(8), max_length=np.int32(64)).shape == (1, 8)


def test_sentence_transformers_names(tiny, embedder):
    """encode_query, encode_document, truncate_dim and convert_to_numpy agree with sentence-transformers' own."""
    st = sentence_transformer(tiny[0])
    queries = st.encode_query(QUERIES, truncate_dim=24)
    documents = st.encode_document(DOCUMENTS, truncate_dim=24)
    ours_q = embedder.encode_query(QUERIES, truncate_dim=24, convert_to_numpy=True)
    ours_d = embedder.encode_document(DOCUMENTS, truncate_dim=24, convert_to_numpy=True)
    assert isinstance(ours_q, np.ndarray) and ours_q.shape == queries.shape == (3, 24)
    assert cosine(torch.from_numpy(ours_q), torch.from_numpy(queries)).min() >= 0.99999
    assert cosine(torch.from_numpy(ours_d), torch.from_numpy(documents)).min() >= 0.99999
    np.testing.assert_allclose(
        embedder.similarity(ours_q, ours_d).numpy(), st.similarity(queries, documents).numpy(), atol=1e-5
    )
    with pytest.raises(ValueError, match="dim=16 and truncate_dim=24 are the same option"):
        embedder.encode(["a"], dim=16, truncate_dim=24)


def test_sentence_transformers_encode_options(tiny, embedder):
    """normalize_embeddings, convert_to_tensor, show_progress_bar, prompt, get_sentence_embedding_dimension and
    similarity_fn_name as SentenceTransformer takes and gives them, on the same checkpoint."""
    st = sentence_transformer(tiny[0])
    texts = QUERIES + DOCUMENTS
    options = dict(prompt="Instruct: Classify it\nQuery:", convert_to_tensor=True, show_progress_bar=False)
    for normalize in (True, False):  # the checkpoint's Normalize module normalizes either way
        ours = embedder.encode(texts, normalize_embeddings=normalize, **options)
        expected = st.encode(texts, normalize_embeddings=normalize, **options)
        assert isinstance(ours, torch.Tensor) and ours.shape == expected.shape
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours, embedder.encode(texts, instruction="Classify it"))  # the prompt it prepends
    assert isinstance(embedder.encode(texts, convert_to_numpy=True, convert_to_tensor=True), torch.Tensor)
    as_numpy = embedder.encode(texts, convert_to_tensor=False)  # sentence-transformers' default: numpy
    assert isinstance(as_numpy, np.ndarray) and isinstance(st.encode(texts, convert_to_tensor=False), np.ndarray)
    np.testing.assert_array_equal(as_numpy, embedder.encode(texts).numpy())
    raw = embedder.encode(texts, normalize=False)
    assert raw.norm(dim=-1).min() > 1.5  # what normalize=False gives, and normalize_embeddings=True normalizes
    torch.testing.assert_close(
        embedder.encode(texts, normalize=False, normalize_embeddings=True), embedder.encode(texts)
    )
    assert embedder.get_sentence_embedding_dimension() == embedder.get_embedding_dimension() == 96
    assert st.get_embedding_dimension() == 96
    assert embedder.similarity_fn_name == st.similarity_fn_name == "cosine"
    with pytest.raises(AttributeError):
        embedder.similarity_fn_name = "dot"  # similarity is cosine, whatever the name says


@pytest.mark.parametrize("precision", ["int8", "uint8", "binary", "ubinary"])
def test_precision_is_quantize_embeddings_of_the_vectors(tiny, embedder, precision):
    from sentence_transformers.util import quantize_embeddings

    texts = texts_of_lengths(20, seed=1)
    floats = embedder.encode(texts, convert_to_numpy=True)
    calibration = embedder.encode(texts_of_lengths(30, seed=2), convert_to_numpy=True)
    ranges = np.vstack([calibration.min(axis=0), calibration.max(axis=0)]) * 0.9
    for quantization in [{}, {"calibration_embeddings": calibration}, {"ranges": ranges}]:
        if precision.endswith("binary") and quantization:
            continue
        ours = embedder.encode(texts, precision=precision, convert_to_numpy=True, **quantization)
        expected = quantize_embeddings(floats, precision, **quantization)
        assert ours.dtype == expected.dtype and ours.shape == expected.shape
        np.testing.assert_array_equal(ours, expected)  # bit for bit
    theirs = sentence_transformer(tiny[0]).encode(texts, precision=precision)  # its own vectors, rounded its way
    ours = embedder.encode(texts, precision=precision)
    assert isinstance(ours, torch.Tensor) and ours.numpy().dtype == theirs.dtype
    differ = ours.numpy().astype(int) - theirs.astype(int)
    assert abs(differ).max() <= 1 and (differ != 0).mean() < 0.02  # a step apart where a value sits on a boundary
    assert embedder.encode(texts[0], precision="binary").shape == (12,)


def test_precision_errors(embedder):
    with pytest.raises(ValueError, match="precision='int4' is not one of float32, float16, int8, uint8, binary"):
        embedder.encode(["a", "b"], precision="int4")
    with pytest.raises(ValueError, match="ranges and calibration_embeddings are for precision='int8' or 'uint8'"):
        embedder.encode(["a", "b"], precision="binary", calibration_embeddings=np.ones((2, 96), np.float32))
    with pytest.raises(ValueError, match="at least 2 calibration vectors"):
        embedder.encode("one text, no calibration", precision="int8")


def test_encode_query_without_sentence_transformers_prompts_uses_the_card_instruction(embedder):
    plain = Embedder(embedder.model, embedder.tokenizer)  # a checkpoint without config_sentence_transformers.json
    torch.testing.assert_close(plain.encode_query(QUERIES), embedder.encode(QUERIES, instruction=TASK))
    torch.testing.assert_close(plain.encode_document(DOCUMENTS), embedder.encode(DOCUMENTS))
    other = embedder.encode_query(QUERIES, instruction="Retrieve semantically similar text")
    torch.testing.assert_close(other, embedder.encode(QUERIES, instruction="Retrieve semantically similar text"))


def test_batch_size_warns_and_names_batch_tokens(embedder):
    with pytest.warns(UserWarning, match=r"batch_size=32 is not used: .* pass batch_tokens= .*now 2048 on cpu"):
        vectors = embedder.encode(QUERIES, batch_size=32)
    torch.testing.assert_close(vectors, embedder.encode(QUERIES))


def test_similarity_takes_numpy_and_lists(embedder):
    q, d = embedder.encode(QUERIES), embedder.encode(DOCUMENTS)
    expected = embedder.similarity(q, d)
    torch.testing.assert_close(embedder.similarity(q.numpy(), d.numpy().astype(np.float64)), expected)
    torch.testing.assert_close(embedder.similarity(q.tolist(), d[0].tolist()), expected[:, :1])
    with pytest.raises(ValueError, match="not 3-D and 2-D"):
        embedder.similarity(q[None], d)
    assert embedder.similarity([], []).shape == (0, 0)  # no vectors: no scores
    assert embedder.similarity(embedder.encode([]), d).shape == (0, 3)


def test_texts_tokenized_in_chunks_give_the_same_vectors_and_one_warning(embedder, monkeypatch):
    """encode tokenizes the next chunk of texts while the model runs this one: chunks change nothing but speed."""
    from qwen3_embed import pipeline

    texts = texts_of_lengths(11, seed=8, max_words=8) + ["gravity " * 100, "a", "gravity " * 120]
    with pytest.warns(UserWarning, match="2 of 14 text"):  # and with the stack level of the user's call
        whole = embedder.encode(texts, max_length=96)
    monkeypatch.setattr(pipeline, "TOKENIZE_CHUNK", 4)
    with pytest.warns(UserWarning) as caught:
        chunked = embedder.encode(texts, max_length=96)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-6)
    cuts = [str(w.message) for w in caught if "were cut" in str(w.message)]
    assert len(cuts) == 1 and "2 of 14 text(s)" in cuts[0] and "(indices 11, 13;" in cuts[0]
    with pytest.raises(ValueError, match=r"2 text\(s\) are longer .*\(indices 11, 13;"):  # found before any work
        embedder.encode(texts, max_length=96, truncate=False)
    with pytest.raises(TypeError, match=r"texts\[13\] is int"):
        embedder.encode([*texts[:13], 5])
