"""The command line of search: `encode --precision/--calibration/--store-text` writes what `search` reads, `search`
prints what the Retriever returns, and every bad option is named before a model loads."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
from test_cli import error_of, no_loading  # noqa: F401  (a fixture)

from checkpoints import REPO, TINY_SHAPES, make_reranker_checkpoint, texts_of_lengths
from qwen3_embed import Reranker
from qwen3_embed.cli import main
from qwen3_embed.corpus import load_corpus
from qwen3_embed.search import Index, Retriever, quantization_ranges

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from sentence_transformers.quantization import quantize_embeddings

TEXTS = list(dict.fromkeys(texts_of_lengths(40, seed=9, max_words=10)))[:30]
QUERIES = ["capital of China", "gravity attracts"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny):
    """A float32 index, an int8 index with texts, both written by the command line, and the calibration file."""
    root = tmp_path_factory.mktemp("search-cli")
    (root / "corpus.txt").write_text("\n".join(TEXTS) + "\n", "utf-8")
    model = ["--model", str(tiny[0])]
    main(["encode", *model, "--input", str(root / "corpus.txt"), "--output", str(root / "float"), "--chunk-size", "8"])
    np.save(root / "calibration.npy", load_corpus(root / "float")[0][:12])
    main(["encode", *model, "--input", str(root / "corpus.txt"), "--output", str(root / "int8"), "--chunk-size", "8",
          "--precision", "int8", "--calibration", str(root / "calibration.npy"), "--store-text"])  # fmt: skip
    return root


@pytest.fixture(scope="module")
def reranker_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("search-cli-reranker")
    make_reranker_checkpoint(folder, TINY_SHAPES["gqa2"], tied=True)
    return folder


def printed(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_encode_precision_and_search_print_what_the_retriever_finds(corpus, embedder, reranker_folder, capsys):
    floats, _ = load_corpus(corpus / "float")
    codes, ids = load_corpus(corpus / "int8")
    calibration = np.load(corpus / "calibration.npy")
    assert np.array_equal(codes, quantize_embeddings(floats, "int8", calibration_embeddings=calibration))
    index = Index.open(corpus / "int8")
    assert np.array_equal(index.ranges, quantization_ranges(calibration)) and index.texts[29] == TEXTS[29]

    args = ["search", "--index", str(corpus / "int8"), "--query", QUERIES[0], "--query", QUERIES[1], "--top-k", "4"]
    main([*args, "--json"])  # the model: the one the manifest names
    expected = Retriever(embedder, index).search(QUERIES, 4)
    assert printed(capsys) == [
        {"query": q, "rank": r, "id": hit.id, "score": hit.score, "text": hit.text}
        for q, hits in zip(QUERIES, expected) for r, hit in enumerate(hits, start=1)
    ]  # fmt: skip
    main([*args, "--reranker", str(reranker_folder), "--candidates", "9", "--precision", "binary", "--json"])
    reranker = Reranker.from_pretrained(reranker_folder, device="cpu")
    coarse = Index.open(corpus / "int8", precision="binary")
    expected = Retriever(embedder, coarse, reranker).search(QUERIES, 4, candidates=9)
    assert [(x["id"], x["score"]) for x in printed(capsys)] == [(h.id, h.score) for hits in expected for h in hits]
    main(["search", "--index", str(corpus / "float"), "--query", QUERIES[0], "--top-k", "2"])
    lines = capsys.readouterr().out.splitlines()  # rank, score, id (no texts kept)
    hits = Retriever(embedder, Index.open(corpus / "float")).search(QUERIES[0], 2)
    assert lines == [f"{r:>3}  {h.score:.4f}  {h.id}" for r, h in enumerate(hits, start=1)]


def test_one_file_outputs_take_binary_but_not_stored_texts(tiny, embedder, corpus, tmp_path):
    main(["encode", "--model", str(tiny[0]), "--input", str(corpus / "corpus.txt"), "--output",
          str(tmp_path / "bits.npy"), "--precision", "ubinary"])  # fmt: skip
    expected = quantize_embeddings(load_corpus(corpus / "float")[0], "ubinary")
    assert np.array_equal(np.load(tmp_path / "bits.npy"), expected)
    message = error_of(["encode", "--model", str(tiny[0]), "--input", str(corpus / "corpus.txt"), "--output",
                        str(tmp_path / "v.npy"), "--store-text"])  # fmt: skip
    assert "--store-text applies to a folder of shards" in message


def test_bad_search_options_are_named_before_any_model_loads(corpus, tiny, build_checkpoint, no_loading, tmp_path):  # noqa: F811
    index = ["search", "--index", str(corpus / "float"), "--query", "q"]
    narrower = build_checkpoint("gqa1", TINY_SHAPES["gqa1"])[0]  # 64 dimensions, where the index holds 96
    for argv, message in [
        ([*index, "--top-k", "0"], "--top-k=0 is outside 1..30, the 30 vectors of the index"),
        ([*index, "--top-k", "31"], "--top-k=31 is outside 1..30"),
        ([*index, "--reranker", "R"], "a reranker reads the documents' texts, and .* keeps none: encode the corpus "
         "again with `qwen3-embed encode --store-text`, or search it without --reranker$"),  # (was: pass texts=)
        (["search", "--index", str(corpus / "int8"), "--query", "q", "--reranker", "R", "--top-k", "5",
          "--candidates", "4"], "--candidates=4 must be at least 5"),
        (["search", "--index", str(corpus / "int8"), "--query", "q", "--precision", "float16"],
         "int8 vectors cannot be searched at precision 'float16': choose int8 or a coarser one"),
        (["search", "--index", str(tmp_path / "none"), "--query", "q"],
         "does not exist: give the folder an encode run wrote"),
        ([*index, "--device", "gpu"], "device 'gpu' is not a device name"),
        ([*index, "--rescore-multiplier", "4"], "--rescore-multiplier applies to a quantized search, and .* is "
         "searched in float32; drop it, or give --precision='int8' or 'binary'"),
        (["search", "--index", str(corpus / "int8"), "--query", "q", "--precision", "uint8"],
         "int8 vectors cannot be searched at precision 'uint8': choose int8 or a coarser one \\(binary, ubinary\\)"),
        ([*index, "--model", str(narrower)], "holds 96-dimensional vectors, more than .* makes \\(64\\): search it "
         "with .*, which embedded it"),
    ]:  # fmt: skip
        assert re.search(
            f"^qwen3-embed: error: .*{message}",
            error_of(argv if "--model" in argv else [*argv, "--model", str(tiny[0])]),
        ), argv


def test_a_default_top_k_is_capped_and_one_asked_for_is_checked(tiny, embedder, tmp_path, capsys):
    """A 5-document index: the default --top-k (10) prints all 5, as Retriever.search does; --top-k 6 is refused."""
    (tmp_path / "five.txt").write_text("\n".join(TEXTS[:5]) + "\n", "utf-8")
    main(["encode", "--model", str(tiny[0]), "--input", str(tmp_path / "five.txt"), "--output", str(tmp_path / "five")])
    main(["search", "--index", str(tmp_path / "five"), "--query", QUERIES[0], "--json"])
    index = Index.open(tmp_path / "five")
    hits = Retriever(embedder, index).search(QUERIES[0])
    assert [line["id"] for line in printed(capsys)] == [hit.id for hit in hits] and len(hits) == 5
    assert len(index.search(embedder.encode_query(QUERIES[0])).ids) == 5
    message = error_of(["search", "--index", str(tmp_path / "five"), "--query", "q", "--top-k", "6"])
    assert "--top-k=6 is outside 1..5, the 5 vectors of the index" in message


def test_searching_with_another_model_warns(corpus, build_checkpoint, capsys):
    wider = build_checkpoint("gqa4", TINY_SHAPES["gqa4"])[0]  # 128 dimensions: it can embed 96-dimensional queries
    main(["search", "--index", str(corpus / "float"), "--query", "q", "--top-k", "1", "--model", str(wider)])
    assert "is not the model that embedded" in capsys.readouterr().err


def test_a_query_of_bytes_that_are_not_utf8_is_named_at_its_place_in_the_query(corpus):
    """`search --query $'a\xffb'` in a process of its own: Python reads the byte as a lone surrogate, named at its
    character in the query typed (not in the prompt the query is formatted into), before any model loads."""
    argv = ["search", "--index", str(corpus / "float"), "--query", "fine", "--query", "a\udcffb"]  # sent as a\xffb
    done = subprocess.run([sys.executable, "-m", "qwen3_embed.cli", *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == ("qwen3-embed: error: --query 'a\\udcffb' is not valid Unicode: it holds the lone surrogate "
                           "U+DCFF at character 1 (bytes that are not UTF-8?)\n")  # fmt: skip
