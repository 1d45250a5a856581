"""Search: exact top-k equal to a brute-force torch.topk over shard folders and arrays, rescoring that recovers
planted neighbours, retrieve-then-rerank equal to the steps done by hand, the checks a retriever makes against its
index before a model loads, and every bad input said plainly."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_store import write_folder

from checkpoints import REPO, TINY_SHAPES, make_reranker_checkpoint, texts_of_lengths
from qwen3_embed import Embedder, Reranker
from qwen3_embed.corpus import encode_corpus, load_corpus, read_manifest
from qwen3_embed.search import Index, Retriever, quantization_ranges, quantize, scorers
from qwen3_embed.store import DamagedShard, Vectors
from qwen3_embed.store import vectors as stored_vectors
from qwen3_embed.store.vectors import non_finite

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from sentence_transformers.quantization import quantize_embeddings

DEVICES = ["cpu"] + ([pytest.param("cuda", marks=pytest.mark.gpu)] if torch.cuda.is_available() else [])
TEXTS = list(dict.fromkeys(texts_of_lengths(60, seed=5, max_words=12)))[:45]  # no duplicates, so no ties


def unit(*shape, seed=0) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def brute_force(queries: torch.Tensor, vectors: torch.Tensor, k: int):
    """torch.topk over every score, with equal scores (duplicate texts) in position order: a stable sort."""
    values, indices = (queries.float() @ vectors.float().T).sort(dim=1, descending=True, stable=True)
    return torch.return_types.topk((values[:, :k], indices[:, :k]))


@pytest.fixture(scope="module")
def folders(tiny, embedder, tmp_path_factory):
    """Shard folders of several shapes written by the encoder: (folder, options)."""
    root = tmp_path_factory.mktemp("shards")
    (root / "corpus.txt").write_text("\n".join(TEXTS) + "\n", "utf-8")
    made = []
    for i, options in enumerate([
        {"chunk_size": 7},
        {"chunk_size": 1, "dim": 32, "vector_dtype": "float16"},
        {"chunk_size": 20, "vector_format": "safetensors", "vector_dtype": "float16"},
        {"chunk_size": 45, "vector_format": "safetensors", "dim": 48},
    ]):  # fmt: skip
        folder = root / f"out{i}"
        encode_corpus(tiny[0], root / "corpus.txt", folder, embedder=embedder, show_progress=False, **options)
        made.append((folder, options))
    return made


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("block_rows, piece_bytes", [(3, None), (8, 192), (1000, 192)])  # 192: pieces of 2 to 6 rows
def test_exact_search_over_shards_equals_brute_force(folders, device, block_rows, piece_bytes, monkeypatch):
    if piece_bytes is not None:
        monkeypatch.setattr(scorers, "PIECE_BYTES", piece_bytes)
    for folder, options in folders:
        vectors, ids = load_corpus(folder)
        queries = unit(5, vectors.shape[1], seed=1)
        index = Index.open(folder, device=device, block_rows=block_rows)
        assert (len(index), index.dim, index.precision) == (len(TEXTS), vectors.shape[1], str(vectors.dtype))
        for k in (1, 10, len(TEXTS)):
            expected = brute_force(queries, torch.from_numpy(vectors), k)
            hits = index.search(queries.to(device), k)
            assert hits.positions.tolist() == expected.indices.tolist(), options
            # One BLAS kernel per block shape: the same dot products, rounded in another order at worst.
            torch.testing.assert_close(hits.scores, expected.values, rtol=0, atol=1e-6)
            assert hits.ids == [[ids[p] for p in row] for row in expected.indices.tolist()]


def test_one_query_arrays_and_ids():
    vectors = unit(50, 16, seed=2)
    ids = [f"doc-{i}" for i in range(50)]
    query = unit(16, seed=3)
    for given in (vectors, vectors.numpy(), vectors.half(), vectors.bfloat16(), vectors.double().numpy()):
        hits = Index(given, ids, block_rows=16).search(query.numpy(), 4)
        exact = brute_force(query[None], torch.as_tensor(given).float(), 4)
        assert hits.positions.tolist() == exact.indices[0].tolist()
        assert hits.ids == [ids[i] for i in exact.indices[0].tolist()] and hits.scores.shape == (4,)
    none = Index(vectors).search(torch.empty(0, 16), 3)
    assert none.scores.shape == (0, 3) and none.ids == []


def test_ties_are_broken_by_position_across_blocks():
    """Equal scores in position order, whichever blocks they fall in. (Integer-valued vectors: their dot products are
    exact, so equal rows score equally; float dot products can round differently from one block shape to another.)"""
    basis = torch.tensor([[1.0, 2, 0, 1], [2, 0, 1, 1], [0, 1, 1, 2]])
    vectors = basis[torch.tensor([2, 0, 1, 0, 0, 2, 1, 0, 1, 0, 2, 0])]  # rows 1, 3, 4, 7, 9, 11 are basis[0]
    for block_rows in (1, 2, 5, 12):
        hits = Index(vectors, block_rows=block_rows).search(basis[0], 5)
        assert hits.positions.tolist() == [1, 3, 4, 7, 9] and hits.scores.tolist() == [6.0] * 5
    # Quantized scores are integers, so ties are common there: the first stage keeps the lowest positions too.
    ranges = np.array([[-1.0] * 4, [1.0] * 4])
    codes = torch.from_numpy(quantize(vectors / 3, "int8", ranges=ranges))
    for block_rows in (1, 5):
        index = Index(codes, precision="int8", ranges=ranges, block_rows=block_rows)
        assert index._scan(basis[:1] / 3, 5)[1].tolist() == [[1, 3, 4, 7, 9]]


@pytest.mark.parametrize("stored", ["float16", "uint8"])
def test_threads_searching_one_index_get_the_serial_answers(stored, monkeypatch):
    """8 threads x 200 queries on one Index whose scorer converts its rows (float16 to float32, uint8 to int8) a piece
    at a time: every thread converts into a buffer of its own, so each answer equals the serial one."""
    monkeypatch.setattr(scorers, "PIECE_BYTES", 64 * 64)  # pieces of 64 rows: many conversions per search
    vectors, queries = unit(1000, 64, seed=4), unit(200, 64, seed=5)
    ranges = quantization_ranges(vectors)
    given = vectors.half() if stored == "float16" else torch.from_numpy(quantize(vectors, "uint8", ranges=ranges))
    index = Index(given, precision=stored, ranges=ranges if stored == "uint8" else None, block_rows=500)
    serial = [index.search(q, 5).positions.tolist() for q in queries]

    def search_all(seed: int) -> dict[int, list[int]]:
        order = torch.randperm(len(queries), generator=torch.Generator().manual_seed(seed)).tolist()
        return {i: index.search(queries[i], 5).positions.tolist() for i in order}

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(search_all, range(8)))
    assert all(answer[i] == serial[i] for answer in answers for i in range(len(queries)))


def planted(n=400, dim=64, queries=6, seed=7):
    """Random unit vectors, and for each query five planted neighbours at cosines of about 0.98, 0.94, 0.89, 0.84
    and 0.78, where the rest lie below 0.45."""
    g = torch.Generator().manual_seed(seed)
    q = unit(queries, dim, seed=seed)
    bulk = unit(n, dim, seed=seed + 1)
    rows = torch.randperm(n, generator=g)[: queries * 5].view(queries, 5)
    spread = torch.tensor([0.2, 0.35, 0.5, 0.65, 0.8])[:, None]
    for i in range(queries):
        bulk[rows[i]] = F.normalize(q[i] + spread * unit(5, dim, seed=seed + 2 + i), dim=-1)
    return bulk, q


@pytest.mark.parametrize("precision", ["int8", "uint8", "binary", "ubinary"])
def test_rescoring_recovers_the_exact_top_k_of_a_planted_set(precision):
    vectors, queries = planted()
    exact = brute_force(queries, vectors, 5)
    # A copy quantized from float vectors, rescored against them: the exact scores.
    hits = Index(vectors, precision=precision, block_rows=64).search(queries, 5, rescore_multiplier=4)
    assert hits.positions.tolist() == exact.indices.tolist()
    torch.testing.assert_close(hits.scores, exact.values, rtol=0, atol=1e-6)
    # Vectors stored quantized, rescored against themselves: int8 dequantized keeps the ranking; binary's 0/1 bits
    # (as sentence-transformers rescores them) find the neighbours, in a coarser order.
    ranges = quantization_ranges(vectors) if precision.endswith("int8") else None
    stored = torch.from_numpy(quantize(vectors, precision, ranges=ranges))
    hits = Index(stored, precision=precision, ranges=ranges, block_rows=64).search(queries, 5, rescore_multiplier=4)
    if precision.endswith("int8"):
        assert hits.positions.tolist() == exact.indices.tolist()
        torch.testing.assert_close(hits.scores, exact.values, rtol=0, atol=0.01)
    else:
        assert [set(row) for row in hits.positions.tolist()] == [set(row) for row in exact.indices.tolist()]


def test_first_stage_scores():
    """The integer scores that pick the candidates: int8 codes against the query weighted by each dimension's step
    and rounded to int8; for binary, equal bits less unequal ones; computed here with numpy from the codes
    sentence-transformers makes."""
    vectors, queries = planted(n=100, dim=21)
    ranges = quantization_ranges(vectors)
    index = Index(vectors, precision="int8", ranges=ranges)
    codes = quantize_embeddings(vectors, "int8", ranges=ranges).astype(np.int64)
    weights = queries.numpy() * ((ranges[1] - ranges[0]) / 255)
    q = np.round(weights * (127 / np.abs(weights).max(1, keepdims=True))).astype(np.int64)
    assert np.array_equal(index._scan(queries, 100)[0].numpy(), -np.sort(-(q @ codes.T), axis=1))
    for dim in (21, 128):  # 3 bytes compared a byte at a time, 16 eight at a time
        vectors, queries = planted(n=100, dim=dim)
        bits = np.unpackbits(quantize_embeddings(vectors, "ubinary"), axis=1).astype(np.int64)
        qbits = np.unpackbits(quantize_embeddings(queries, "ubinary"), axis=1).astype(np.int64)
        padded = bits.shape[1]  # 21 bits padded to 24
        equal = padded - np.abs(qbits[:, None, :] - bits[None]).sum(-1)
        for precision in ("binary", "ubinary"):
            got = Index(vectors, precision=precision)._scan(queries, 100)[0].numpy()
            assert np.array_equal(got, -np.sort(-(2 * equal - padded), axis=1)), (dim, precision)


@pytest.mark.parametrize("precision", ["float16", "int8", "binary"])
def test_no_queries_give_no_hits(precision):
    """A batch of no queries gave 'torch.cat(): expected a non-empty list' on a quantized search."""
    vectors, _ = planted(n=50, dim=16)
    hits = Index(vectors.half() if precision == "float16" else vectors, precision=precision).search(
        np.zeros((0, 16), np.float32), 5
    )
    assert hits.positions.shape == (0, 5) and hits.scores.shape == (0, 5) and hits.ids == []


def test_ranges_of_a_quantized_copy():
    vectors, _ = planted()
    assert np.array_equal(Index(vectors, precision="int8", calibration=vectors[:200]).ranges,
                          quantization_ranges(vectors[:200]))  # fmt: skip
    assert np.array_equal(Index(vectors, precision="uint8", block_rows=7).ranges, quantization_ranges(vectors))
    ranges = quantization_ranges(vectors[:2])
    assert np.array_equal(Index(vectors, precision="int8", ranges=ranges).ranges, ranges)


@pytest.fixture(scope="module")
def reranker_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reranker")
    make_reranker_checkpoint(folder, TINY_SHAPES["gqa2"], tied=True)
    return folder


@pytest.fixture(scope="module")
def reranker(reranker_folder):
    return Reranker.from_pretrained(reranker_folder, device="cpu")


def test_retrieve_then_rerank_equals_the_steps_by_hand(embedder, reranker):
    documents = TEXTS[:30]
    ids = [f"d{i}" for i in range(30)]
    index = Index(embedder.encode_document(documents), ids)
    texts = dict(zip(ids, documents))
    queries = ["capital of China", "gravity attracts bodies"]
    task = "Find the passage that answers the question"
    results = Retriever(embedder, index, reranker, texts=texts).search(queries, top_k=3, candidates=8, instruction=task)
    candidates = torch.topk(embedder.encode(queries, instruction=task) @ index.vectors.parts[0].T, 8).indices
    for query, row, hits in zip(queries, candidates.tolist(), results):
        scores = reranker.score(query, [documents[i] for i in row], instruction=task).tolist()
        best = sorted(range(8), key=lambda j: -scores[j])[:3]
        assert [(h.id, h.score, h.text) for h in hits] == [(ids[row[j]], scores[j], documents[row[j]]) for j in best]
    # Without a reranker: the index's order and scores; the card's instruction by default.
    hits = Retriever(embedder, index).search(queries[0], top_k=4)
    expected = index.search(embedder.encode_query(queries[0]), 4)
    assert [(h.id, h.score, h.text) for h in hits] == list(zip(expected.ids, expected.scores.tolist(), [None] * 4))


def test_bad_inputs_are_clear_errors(tiny, embedder, reranker, tmp_path, folders):
    vectors = unit(20, 16)
    index = Index(vectors)
    for call, error, message in [
        (lambda: index.search(unit(3, 8), 2), ValueError, r"queries of shape \[3, 8\] do not match the index's 16"),
        (lambda: index.search(unit(8), 2), ValueError, r"\[1, 8\] do not match"),
        (lambda: index.search(vectors, 0), ValueError, r"top_k=0 is outside 1..20, the 20 vectors of the index"),
        (lambda: index.search(vectors, 21), ValueError, r"top_k=21 is outside 1..20"),
        (lambda: index.search(vectors, 2.5), TypeError, r"top_k=2.5 must be an integer"),
        (lambda: index.search(vectors * float("nan"), 2), ValueError, "queries hold NaN"),
        (lambda: Index(torch.empty(0, 16)).search(vectors, 1), ValueError, "the index is empty"),
        (lambda: Index(vectors, ["a"]), ValueError, "1 ids for 20 vectors"),
        (lambda: Index(vectors[None]), ValueError, r"must be a matrix \[n, dim\]"),
        (lambda: Index(vectors * float("inf")), ValueError, "NaN or infinite"),
        (lambda: Index(torch.zeros(4, 2, dtype=torch.int8)), ValueError, "say which way with precision="),
        (lambda: Index(torch.zeros(4, 2, dtype=torch.int8), precision="float32"), ValueError, "not 'float32'"),
        (lambda: Index(torch.zeros(4, 2, dtype=torch.int8), precision="int8"), ValueError, "need the ranges"),
        (lambda: Index(torch.zeros(4, 2, dtype=torch.int8), precision="ubinary"), ValueError, "are torch.uint8"),
        (lambda: Index(vectors.half(), precision="float32"), ValueError, "cannot be searched at precision 'float32'"),
        (lambda: Index(vectors, precision="int4"), ValueError, "precision='int4' is not one of"),
        (lambda: Index(vectors, precision="int8").search(vectors, 2, rescore_multiplier=0), ValueError, "at least 1"),
        (lambda: Retriever(embedder, index, reranker), ValueError, "the index keeps none: encode the corpus again"),
        (lambda: Retriever(embedder, Index(unit(3, 200))), ValueError, r"the index holds 200-dimensional vectors, more "
         r"than the embedder makes \(96\): use the model that embedded them"),
        (lambda: Retriever(embedder, Index(unit(5, 96)), reranker, texts=list("abcde")).search("q", 3, candidates=2),
         ValueError, "candidates=2 is outside|candidates=2 must be at least 3"),
        (lambda: Retriever(embedder, Index(unit(5, 96)), reranker, texts={}).search("q", 3), KeyError,
         "no text for document id"),
        (lambda: Index.open(tmp_path / "nothing"), FileNotFoundError, "does not exist"),
    ]:  # fmt: skip
        with pytest.raises(error, match=message):
            call()
    # A damaged shard is found before anything is searched.
    folder = folders[0][0]
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for path in folder.iterdir():
        (damaged / path.name).write_bytes(path.read_bytes())
    data = bytearray((damaged / "shard-00002.npy").read_bytes())
    data[-1] ^= 0xFF
    (damaged / "shard-00002.npy").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"fails verification .*\n  shard-00002: shard-00002.npy does not match its "
                       "sha256 checksum\nrerun the encode command"):  # fmt: skip
        Index.open(damaged)
    Index.open(damaged, verify=False)  # sizes, counts, dtypes and shapes still agree
    manifest = json.loads((damaged / "manifest.json").read_text())
    manifest["shards"][0]["rows"] += 1
    (damaged / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="shard-00000: shard-00000.ids.json does not hold a list of 8 ids"):
        Index.open(damaged, verify=False)
    manifest["shards"][0]["rows"] -= 1
    manifest["dim"] = 32  # an edited manifest: the shards' own shapes disagree with it
    (damaged / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="shard-00000: its vectors have 96 values a row where the manifest's dim 32"):
        Index.open(damaged, verify=False)


def test_non_finite_rows_of_a_shard_are_refused_when_first_read(tmp_path, monkeypatch):
    """NaN or infinite rows (which encode never writes) would score first: each block's rows are checked the first
    time they are read, by the first search or a quantized copy, naming the shard and row; never again after."""
    vectors = unit(300, 16).numpy()
    write_folder(tmp_path / "sound", vectors, 100, vector_dtype="float32")
    vectors[234, 5] = np.nan
    write_folder(tmp_path / "nan", vectors, 100, vector_dtype="float32")
    refused = r"shard-00002.npy of .*nan holds NaN or infinite values in row 34 \(row 234 of the index\)"
    index = Index.open(tmp_path / "nan", block_rows=32)
    for call in (lambda: index.search(unit(16), 3), lambda: Index.open(tmp_path / "nan", precision="binary")):
        with pytest.raises(DamagedShard, match=refused):
            call()
    index = Index.open(tmp_path / "sound", block_rows=32)
    checks = []
    monkeypatch.setattr(stored_vectors, "non_finite", lambda rows: checks.append(len(rows)) or non_finite(rows))
    index.search(unit(2, 16), 3)
    assert sorted(checks) == [4] * 3 + [32] * 9  # each block once: 3 shards of 4 blocks
    index.search(unit(2, 16), 3)
    assert len(checks) == 12  # never again
    huge = torch.full((3, 4), 3e38)  # finite, though their sum overflows
    assert non_finite(huge) is None
    huge[1, 2] = -math.inf
    assert non_finite(huge) == 1


# A shard cut short under an open index: a search reads the shard through its memory map, where rows past the file's
# new end would kill the process (SIGBUS). An exact search streams blocks; a binary one gathers rows to rescore.
CUT_SHORT = """
import os, sys
import torch
from qwen3_embed.search import Index
exact, binary = Index.open(sys.argv[1], block_rows=256), Index.open(sys.argv[1], precision="binary")
query = torch.ones(64)
exact.search(query, 3), binary.search(query, 3)
os.truncate(os.path.join(sys.argv[1], "shard-00001.npy"), 1000)
for index in (binary, exact):
    try:
        index.search(query, 3)
    except Exception as e:
        print(type(e).__name__, e)
"""


def test_a_shard_cut_short_under_an_open_index_is_an_error_not_a_crash(tmp_path):
    write_folder(tmp_path / "out", unit(3000, 64).numpy(), 1000, vector_dtype="float32")
    done = subprocess.run([sys.executable, "-c", CUT_SHORT, str(tmp_path / "out")], cwd=REPO, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr  # not killed by SIGBUS (-7)
    message = (f"DamagedShard shard-00001.npy of {tmp_path / 'out'} has 1000 bytes, its record says 256128: it changed "
               f"after the index was opened; check the folder with `qwen3-embed verify {tmp_path / 'out'}`, and open "
               "the index again")  # fmt: skip
    assert done.stdout == f"{message}\n{message}\n"


def test_arguments_of_the_wrong_type_are_named_with_what_to_pass(tiny, embedder, reranker, folders):
    index = Index(unit(5, 96))
    retriever = Retriever(embedder, index)
    for call, error, message in [
        (lambda: retriever.search(5, 1), TypeError, r"queries is int: pass a query \(str\) or a list of them"),
        (lambda: retriever.search(b"q", 1), TypeError, "queries is bytes"),
        (lambda: retriever.search({"q": 1}, 1), TypeError, "queries is dict"),
        (lambda: retriever.search(["q", 5], 1), TypeError, r"queries\[1\] is int, not str"),
        (lambda: retriever.search("a\udcffb", 1), ValueError,
         r"the query is not valid Unicode: it holds the lone surrogate U\+DCFF at character 1 "),
        (lambda: retriever.search("q", 1, instruction=5), TypeError, "instruction is int, not str"),
        (lambda: Retriever(embedder, {"a": "b"}), TypeError, r"index is dict, not an Index: pass Index.open\(DIR\)"),
        (lambda: Retriever.from_pretrained({"a": "b"}, tiny[0]), TypeError, "index is dict, not an Index"),
        (lambda: Retriever("model", index), TypeError, r"embedder is str, not Embedder: pass Embedder.from_pretrained"),
        (lambda: Retriever(None, index), TypeError, "embedder is NoneType, not Embedder"),
        (lambda: Retriever(embedder, index, "model", texts=list("abcde")), TypeError, "reranker is str, not Reranker"),
        (lambda: Retriever(embedder, index, reranker, texts=5), TypeError, "texts is int: pass a mapping from id"),
        (lambda: Retriever.from_pretrained(index, tiny[0], check_kind="no"), TypeError, "check_kind='no' must be True"),
        (lambda: Index.open(folders[0][0], verify="no"), TypeError, "verify='no' must be True or False"),
    ]:  # fmt: skip
        with pytest.raises(error, match=message):
            call()
    assert Retriever(embedder, index, reranker, texts=np.array(list("abcde"))).search("q", 2)[0].text in "abcde"


def test_a_retriever_checks_its_index_before_a_model_loads(tiny, build_checkpoint, embedder, folders, monkeypatch):
    """What `qwen3-embed search` checks before it loads a model, Retriever.from_pretrained checks too, with the same
    messages, and Retriever.search checks every argument before it embeds the queries."""
    folder = folders[0][0]  # float32, 96 dimensions, embedded by the tiny checkpoint, no texts
    index = Index.open(folder)
    narrower = build_checkpoint("gqa1", TINY_SHAPES["gqa1"])[0]  # 64 dimensions, where the index holds 96

    def fail(*args, **kwargs):
        raise AssertionError("a model was loaded, or queries embedded, before the arguments were checked")

    with monkeypatch.context() as no_loading:
        no_loading.setattr(Embedder, "from_pretrained", fail)
        no_loading.setattr(Reranker, "from_pretrained", fail)
        no_loading.setattr(Embedder, "encode_query", fail)
        where, which, narrow = (re.escape(str(x)) for x in (folder, tiny[0], narrower))
        for call, message in [
            (
                lambda: Retriever.from_pretrained(index, narrower),
                rf"{where} holds 96-dimensional vectors, more than {narrow} makes \(64\): search it with {which}, "
                "which embedded it",
            ),
            (
                lambda: Retriever.from_pretrained(index, reranker="R"),
                rf"a reranker reads the documents' texts, and {where} keeps none: encode the corpus again with "
                "--store-text, or pass texts=",
            ),
            (lambda: Retriever.from_pretrained(Index(unit(5, 96))), "an index of vectors in memory names no model"),
            (
                lambda: index.search(unit(96), 2, rescore_multiplier=4),
                rf"rescore_multiplier applies to a quantized search, and {where} is searched in float32; drop it, or "
                "give precision='int8' or 'binary'",
            ),
            (lambda: Retriever(embedder, index).search("q", 2, rescore_multiplier=4), "applies to a quantized search"),
            (lambda: Retriever(embedder, index).search("q", 46), "top_k=46 is outside 1..45"),
            (
                lambda: Retriever(embedder, Index(unit(3, 96))).search("q", 1, rescore_multiplier=2),
                "the index is searched in float32",
            ),
        ]:
            with pytest.raises(ValueError, match=message):
                call()
    # The model the manifest names by default; another one (by content) is a warning, the same one is not.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        retriever = Retriever.from_pretrained(index, device="cpu")
    assert retriever.search(["capital", "gravity"], 3) == Retriever(embedder, index).search(["capital", "gravity"], 3)
    wider = build_checkpoint("gqa4", TINY_SHAPES["gqa4"])[0]  # 128 dimensions: it can embed 96-dimensional queries
    another = rf"{re.escape(str(wider))} is not the model that embedded {where} \({which}, by content\)"
    with pytest.warns(UserWarning, match=another):
        Retriever.from_pretrained(index, wider, device="cpu")


def test_a_retriever_loads_the_reranker_and_takes_texts(embedder, reranker, reranker_folder, folders):
    index = Index.open(folders[0][0])
    retriever = Retriever.from_pretrained(index, reranker=reranker_folder, texts=TEXTS, device="cpu")
    expected = Retriever(embedder, index, reranker, texts=TEXTS).search("capital of China", 3, candidates=6)
    assert retriever.search("capital of China", 3, candidates=6) == expected


def test_an_index_over_a_vectors_store(folders):
    folder = folders[2][0]  # float16 safetensors shards
    vectors = Vectors.open(folder)
    queries = unit(3, vectors.dim, seed=4)
    expected = Index.open(folder, precision="binary").search(queries, 5)
    got = Index(vectors, precision="binary").search(queries, 5)
    assert got.positions.tolist() == expected.positions.tolist() and got.ids == expected.ids
    with pytest.raises(ValueError, match="a Vectors store holds its own ids: give them to Vectors.from_array"):
        Index(vectors, list(range(len(vectors))))


@pytest.mark.parametrize("precision", ["int8", "uint8", "binary", "ubinary"])
def test_quantized_shards_equal_sentence_transformers_and_search_as_in_memory(tiny, embedder, folders, precision):
    source = folders[0][0]  # float32 shards of 7 rows, 96 dimensions
    floats, ids = load_corpus(source)
    calibration = floats[:20] if precision.endswith("int8") else None
    out = source.parent / f"quantized-{precision}"
    encode_corpus(tiny[0], source.parent / "corpus.txt", out, embedder=embedder, chunk_size=7, show_progress=False,
                  vector_dtype=precision, calibration=calibration,
                  vector_format="safetensors" if precision in ("uint8", "binary") else "npy")  # fmt: skip
    vectors, same_ids = load_corpus(out)
    expected = quantize_embeddings(floats, precision, calibration_embeddings=calibration)
    assert same_ids == ids and vectors.dtype == expected.dtype and np.array_equal(vectors, expected)
    ranges = quantization_ranges(calibration) if calibration is not None else None
    assert read_manifest(out)["settings"].get("ranges") == (ranges.tolist() if ranges is not None else None)
    index = Index.open(out, block_rows=5)
    assert (index.precision, index.dim, len(index)) == (precision, 96, len(TEXTS))
    queries = torch.from_numpy(floats[[3, 30]])
    hits = index.search(queries, 5)
    in_memory = Index(vectors, ids, precision=precision, ranges=ranges).search(queries, 5)
    assert hits.positions.tolist() == in_memory.positions.tolist() and torch.equal(hits.scores, in_memory.scores)
    assert hits.positions[:, 0].tolist() == [3, 30] and hits.ids == in_memory.ids  # each query's own row first
    if precision.endswith("int8"):  # a coarser search of the int8 shards, rescored against them
        assert Index.open(out, precision="binary").search(queries, 5).positions[:, 0].tolist() == [3, 30]
        with pytest.raises(ValueError, match="quantized with the ranges in its manifest; ranges= applies to"):
            Index.open(out, ranges=ranges)


def test_quantized_and_stored_text_options_are_checked(tiny, embedder, folders, tmp_path):
    source = folders[0][0]
    floats, _ = load_corpus(source)
    corpus = source.parent / "corpus.txt"

    def encode(out="out", **options):
        return encode_corpus(tiny[0], corpus, tmp_path / out, embedder=embedder, show_progress=False, **options)

    for options, message in [
        ({"vector_dtype": "int8"}, "int8 vectors need calibration vectors .* with --calibration calibration.npy"),
        ({"vector_dtype": "uint8", "calibration": floats[:, :32]}, r"must be float \[n, 96\] .*not float32 \[45, 32\]"),
        ({"vector_dtype": "binary", "calibration": floats}, "set the ranges of int8 and uint8, not of binary"),
        ({"vector_dtype": "int4"}, "vector_dtype='int4' is not one of float32, float16, int8, uint8, binary, ubinary"),
    ]:
        with pytest.raises(ValueError, match=message):
            encode(**options)
    encode(vector_dtype="int8", calibration=floats[:20], chunk_size=20)
    with pytest.raises(ValueError, match=r"other settings.*\n  ranges: \[\[.*\.\.\. \(\d+ characters\) then"):
        encode(vector_dtype="int8", calibration=floats[:30], chunk_size=20)  # other ranges: not the same shards


def test_stored_texts_feed_the_reranker(tiny, embedder, reranker, folders, tmp_path):
    corpus = folders[0][0].parent / "corpus.txt"
    out = tmp_path / "with-text"
    encode_corpus(tiny[0], corpus, out, embedder=embedder, chunk_size=10, store_text=True, show_progress=False)
    index = Index.open(out, block_rows=4)
    assert [index.texts[p] for p in (0, 9, 10, 44)] == [TEXTS[p] for p in (0, 9, 10, 44)]
    assert read_manifest(out)["settings"]["store_text"] is True
    queries = ["capital of China", "gravity"]
    got = Retriever(embedder, index, reranker).search(queries, top_k=3, candidates=6)
    by_hand = Retriever(embedder, Index(load_corpus(out)[0]), reranker, texts=TEXTS).search(queries, 3, candidates=6)
    assert got == by_hand and all(hit.text == TEXTS[hit.id] for hits in got for hit in hits)
    (out / "shard-00001.texts.json").write_text("[]")
    with pytest.raises(ValueError, match="shard-00001: shard-00001.texts.json has 2 bytes, its record says"):
        Index.open(out)
