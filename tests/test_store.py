"""The vector store, without a model: quantization bit for bit as sentence-transformers' and back to float, shard
folders written and read back (whole, by shard, memory-mapped), damage and foreign folders named, and Vectors' blocks,
gathers and quantized copies equal to plain tensor indexing."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qwen3_embed.store import DamagedShard, Vectors, load_corpus, read_manifest, read_shard, verify_corpus
from qwen3_embed.store.files import seal
from qwen3_embed.store.quantize import dequantize, quantization_ranges, quantize
from qwen3_embed.store.shards import FORMAT, MANIFEST, write_shard

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from sentence_transformers.quantization import quantize_embeddings

PRECISIONS = ["int8", "uint8", "binary", "ubinary"]


def unit(*shape, seed=0) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_quantize_is_bit_exact_with_sentence_transformers(precision):
    vectors = unit(300, 77, seed=5)  # 77 dims: binary pads its last byte
    calibration = unit(500, 77, seed=6)
    cases = [({}, {})]  # ranges from the vectors themselves
    if precision.endswith("int8"):
        ranges = quantization_ranges(calibration)
        cases += [
            ({"calibration": calibration}, {"calibration_embeddings": calibration.numpy()}),
            ({"ranges": ranges}, {"ranges": ranges}),
        ]
    for ours, theirs in cases:
        for given in (vectors, vectors.numpy(), vectors.bfloat16()):
            expected = quantize_embeddings(given, precision, **theirs)
            got = quantize(given, precision, **ours)
            assert got.dtype == expected.dtype and np.array_equal(got, expected), (ours.keys(), given.dtype)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_dequantize_gives_each_code_its_step_and_each_bit_0_or_1(precision):
    vectors = unit(40, 21, seed=8)
    ranges = quantization_ranges(vectors) if precision.endswith("int8") else None
    codes = quantize(vectors, precision, ranges=ranges)
    back = dequantize(torch.from_numpy(codes), precision, 21, ranges)
    assert back.dtype == torch.float32 and back.shape == (40, 21)
    if precision.endswith("int8"):  # the start of the step each value fell in: at most one step below it
        steps = torch.from_numpy((ranges[1] - ranges[0]) / 255)
        assert ((vectors - back) >= -1e-6).all() and ((vectors - back) <= steps * 1.0001).all()
    else:
        assert torch.equal(back, (vectors > 0).float())


def test_bad_quantization_arguments_are_named():
    vectors = unit(20, 16)
    for call, error, message in [
        (lambda: quantize(vectors, "int8", ranges=np.zeros((2, 3))), ValueError, r"ranges must be \[2, 16\]"),
        (lambda: quantize(quantize(vectors, "int8"), "binary"), TypeError, "look quantized already"),
        (lambda: quantization_ranges(vectors[:1]), ValueError, "at least 2 calibration vectors"),
        (lambda: quantization_ranges(vectors * torch.inf), ValueError, r"hold NaN or infinite values \(rows 0, 1, 2"),
        (lambda: quantize(vectors, "int8", ranges=np.full((2, 16), np.nan)), ValueError, "ranges hold NaN or inf"),
        (lambda: quantize(vectors, "int4"), ValueError, "precision='int4' is not one of"),
    ]:
        with pytest.raises(error, match=message):
            call()


def write_folder(folder, vectors: np.ndarray, rows: int, vector_format="npy", texts=None, **settings) -> dict:
    """A finished folder of shards of `rows` rows each of one input file, as an encode run leaves it (ids "d0", "d1",
    ...)."""
    folder.mkdir()
    run, entries = {"model_name": "m", "settings": settings}, []
    for k, s in enumerate(range(0, len(vectors), rows)):
        ids = [f"d{i}" for i in range(s, min(s + rows, len(vectors)))]
        kept = texts[s : s + rows] if texts is not None else None
        identity = {"input": {"file": "in.txt"}, "first": s, "records": len(ids), "skipped": [], "blank": 0, "cut": []}
        record = write_shard(folder, k, vectors[s : s + rows], ids, vector_format, kept, **identity, **run)
        entries.append({key: value for key, value in record.items() if key not in run})
    manifest = seal({
        "format": FORMAT, **run, "inputs": [{"file": "in.txt", "records": len(vectors)}], "rows": len(vectors),
        "dim": vectors.shape[1], "shards": entries,
    })  # fmt: skip
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return manifest


@pytest.mark.parametrize("vector_format", ["npy", "safetensors"])
def test_a_folder_reads_back_whole_by_shard_and_memory_mapped(tmp_path, vector_format):
    vectors = unit(23, 12, seed=1).half().numpy()
    texts = [f"text {i}" for i in range(23)]
    manifest = write_folder(tmp_path / "out", vectors, 5, vector_format, texts, vector_dtype="float16")
    loaded, ids = load_corpus(tmp_path / "out")
    assert np.array_equal(loaded, vectors) and ids == [f"d{i}" for i in range(23)]
    assert read_manifest(tmp_path / "out") == manifest and verify_corpus(tmp_path / "out") == []
    shard, shard_ids = read_shard(tmp_path / "out", manifest["shards"][4])
    assert np.array_equal(shard, vectors[20:]) and shard_ids == ["d20", "d21", "d22"]

    stored = Vectors.open(tmp_path / "out")
    assert (len(stored), stored.dim, stored.precision, stored.manifest) == (23, 12, "float16", manifest)
    assert [len(part) for part in stored.parts] == [5, 5, 5, 5, 3]
    mapped = Path("/proc/self/maps").read_text()
    assert all(f"shard-0000{k}.{vector_format}" in mapped for k in range(5))  # memory-mapped, not read
    assert [stored.ids[p] for p in (0, 4, 5, 22)] == ["d0", "d4", "d5", "d22"] and stored.texts[7] == "text 7"
    positions = torch.tensor([22, 0, 7, 7, 13])
    assert torch.equal(stored.gather(positions), torch.from_numpy(vectors)[positions])
    blocks = list(stored.blocks(3))  # never across shards: 2 blocks per shard of 5
    assert [start for start, _ in blocks] == [0, 3, 5, 8, 10, 13, 15, 18, 20]
    assert torch.equal(torch.cat([block for _, block in blocks]), torch.from_numpy(vectors))


def test_damaged_and_foreign_folders_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no manifest.json: .* rerun the same encode command to finish"):
        load_corpus(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format": "other/9"}')
    with pytest.raises(ValueError, match=f"in format 'other/9', not '{FORMAT}'"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": FORMAT, "settings": {}, "dim": 8}))
    with pytest.raises(ValueError, match="lacks shards, inputs, rows or holds another type there: it was edited"):
        read_manifest(tmp_path)
    write_folder(tmp_path / "out", unit(10, 8).numpy(), 4, vector_dtype="float32")
    (tmp_path / "out" / "shard-00001.ids.json").write_text('["x", "y", "z", "w"]')  # another size
    with pytest.raises(DamagedShard, match="shard-00001 of .*: shard-00001.ids.json has 20 bytes, not 24; rerun"):
        load_corpus(tmp_path / "out")
    assert verify_corpus(tmp_path / "out") == ["shard-00001: shard-00001.ids.json has 20 bytes, its record says 24"]
    with pytest.raises(DamagedShard, match=r"fails verification \(1 problem\(s\)\):\n  shard-00001: .*\nrerun"):
        Vectors.open(tmp_path / "out")


def test_vectors_of_arrays_and_their_quantized_copies():
    vectors = unit(30, 20, seed=3)
    array = vectors.numpy()
    stored = Vectors.from_array(array)
    assert (stored.precision, stored.dim, list(stored.ids), stored.folder) == ("float32", 20, list(range(30)), None)
    assert stored.parts[0].data_ptr() == array.ctypes.data and stored.manifest is None  # used in place
    ranges = stored.value_ranges(rows=7)  # block by block, as quantize takes them from all the vectors at once
    assert np.array_equal(ranges, quantization_ranges(vectors))
    for precision in PRECISIONS:
        copy = stored.quantized(precision, ranges if precision.endswith("int8") else None, rows=7)
        expected = quantize(vectors, precision, ranges=ranges if precision.endswith("int8") else None)
        assert copy.precision == precision and copy.dim == 20 and np.array_equal(copy.parts[0].numpy(), expected)
        again = Vectors.from_array(expected, list("abcdefghijklmnopqrstuvwxyz0123"), precision, ranges)
        assert again.dim == (24 if precision.endswith("binary") else 20) and again.ids[29] == "3"  # bytes x 8
        expected = dequantize(torch.from_numpy(expected), precision, again.dim, ranges)
        assert torch.equal(again.to_float(again.parts[0]), expected)
    for call, message in [
        (lambda: Vectors.from_array(vectors[None]), r"must be a matrix \[n, dim\]"),
        (lambda: Vectors.from_array(vectors, ["a"]), "1 ids for 30 vectors"),
        (lambda: Vectors.from_array(vectors * float("nan")), "NaN or infinite"),
        (lambda: Vectors.from_array(torch.zeros(4, 2, dtype=torch.int8)), "say which way with precision="),
        (lambda: Vectors.from_array(torch.zeros(4, 2, dtype=torch.int8), precision="uint8"), "are torch.uint8"),
        (lambda: Vectors.from_array(torch.zeros(4, 2, dtype=torch.uint8), precision="uint8"), "need the ranges"),
        (lambda: Vectors.from_array(vectors[:1]).value_ranges(), "ranges need at least 2 vectors"),
    ]:
        with pytest.raises(ValueError, match=message):
            call()
