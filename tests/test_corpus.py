"""Encoding a corpus into shards: equal to Embedder.encode, every kind of damage found on resume and by
load_corpus/verify, settings identified by content, bad records named, Ctrl-C and a full disk said plainly."""

from __future__ import annotations

import json
import os
import random
import re
import resource
import subprocess
import sys
import time

import numpy as np
import pytest

from checkpoints import REPO, SHARED_TOKENIZER, TINY_SHAPES, encode_peak, texts_of_lengths
from qwen3_embed.cli import main
from qwen3_embed.corpus import encode_corpus, load_corpus, read_shard, verify_corpus
from qwen3_embed.corpus.job import Job
from qwen3_embed.store import Vectors
from qwen3_embed.store.files import seal
from qwen3_embed.store.shards import FORMAT, DamagedShard

TEXTS = texts_of_lengths(57, seed=11, max_words=40) + ["", "中文 🙂"]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": t, "doc": f"d{i}"}) + "\n" for i, t in enumerate(TEXTS)), "utf-8")
    return path


@pytest.fixture(scope="module")
def expected(embedder):
    return embedder.encode(TEXTS).numpy()


def encode(tiny, embedder, inputs, out, **options):
    return encode_corpus(tiny[0], inputs, out, embedder=embedder, show_progress=False, **options)


def files_of(folder) -> dict[str, bytes]:
    """The shards' files (the manifest names the model as the last run was told it; the lock names the last run)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name not in ("manifest.json", ".lock")}


def test_shards_equal_encode_and_records_describe_them(tiny, embedder, corpus, tmp_path, expected):
    summary = encode(tiny, embedder, corpus, tmp_path / "out", chunk_size=10, id_field="doc")
    manifest = summary.manifest
    assert summary.embedded == 6 and manifest["rows"] == len(TEXTS) and manifest["skipped"] == []
    assert manifest["format"] == FORMAT and [s["rows"] for s in manifest["shards"]] == [10] * 5 + [9]
    record = json.loads((tmp_path / "out" / "shard-00005.json").read_text())
    assert record["files"]["vectors"]["dtype"] == "float32" and record["files"]["vectors"]["shape"] == [9, 96]
    assert (record["input"]["file"], record["first"], record["records"]) == ("corpus.jsonl", 50, 9)
    vectors, ids = load_corpus(str(tmp_path / "out"))  # a str path works as well as a Path
    assert ids == [f"d{i}" for i in range(len(TEXTS))]
    np.testing.assert_allclose(vectors, expected, rtol=0, atol=1e-5)
    assert verify_corpus(tmp_path / "out") == []


def test_text_lines_safetensors_float16(tiny, embedder, tmp_path, expected):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(TEXTS) + "\n", "utf-8")
    encode(tiny, embedder, path, tmp_path / "out", chunk_size=25, vector_format="safetensors", vector_dtype="float16")
    vectors, ids = load_corpus(tmp_path / "out")
    assert vectors.dtype == np.float16 and ids == list(range(len(TEXTS)))
    np.testing.assert_allclose(vectors.astype(np.float32), expected, rtol=0, atol=2e-3)


def test_parquet_shards_cross_row_groups(tiny, embedder, tmp_path, expected):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"body": TEXTS, "key": list(range(100, 100 + len(TEXTS)))}), path, row_group_size=7)
    encode(tiny, embedder, path, tmp_path / "out", chunk_size=16, text_field="body", id_field="key")
    vectors, ids = load_corpus(tmp_path / "out")
    assert ids == list(range(100, 100 + len(TEXTS)))
    np.testing.assert_allclose(vectors, expected, rtol=0, atol=1e-5)


def test_a_folder_of_mixed_files_and_a_glob(tiny, embedder, tmp_path, expected):
    """Shards never span files; ids default to name:line; gzip, zstd, .ndjson, .JSONL and text lines all read."""
    import gzip

    import zstandard

    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    parts = [TEXTS[:20], TEXTS[20:35], TEXTS[35:50], TEXTS[50:]]
    lines = ["".join(json.dumps({"text": t}) + "\n" for t in part).encode() for part in parts]
    (folder / "a.jsonl").write_bytes(lines[0])
    (folder / "b.ndjson.gz").write_bytes(gzip.compress(lines[1]))
    (folder / "sub" / "c.JSONL.zst").write_bytes(zstandard.ZstdCompressor().compress(lines[2]))
    (folder / "sub" / "d.txt").write_text("\n".join(parts[3]), "utf-8")  # no final newline
    (folder / ".hidden.jsonl").write_text("not a record\n")
    summary = encode(tiny, embedder, folder, tmp_path / "out", chunk_size=8)
    assert [(s["input"]["file"], s["first"], s["records"]) for s in summary.manifest["shards"]] == [
        ("a.jsonl", 0, 8), ("a.jsonl", 8, 8), ("a.jsonl", 16, 4), ("b.ndjson.gz", 0, 8), ("b.ndjson.gz", 8, 7),
        ("sub/c.JSONL.zst", 0, 8), ("sub/c.JSONL.zst", 8, 7), ("sub/d.txt", 0, 8), ("sub/d.txt", 8, 1),
    ]  # fmt: skip
    vectors, ids = load_corpus(tmp_path / "out")
    names = ["a.jsonl"] * 20 + ["b.ndjson.gz"] * 15 + ["sub/c.JSONL.zst"] * 15 + ["sub/d.txt"] * 9
    lines = list(range(1, 21)) + list(range(1, 16)) * 2 + list(range(1, 10))
    assert ids == [f"{n}:{i}" for n, i in zip(names, lines)]
    np.testing.assert_allclose(vectors, expected, rtol=0, atol=1e-5)

    encode(tiny, embedder, str(folder / "**" / "*.*z*"), tmp_path / "glob", chunk_size=8)  # the compressed ones
    _, ids = load_corpus(tmp_path / "glob")
    assert ids[0] == "b.ndjson.gz:1" and ids[-1] == "sub/c.JSONL.zst:15" and len(ids) == 30


@pytest.mark.parametrize(
    "content, message",
    [
        (b'{"text": "ok"}\n{"text": "caf\xe9"}\n', r"corpus.jsonl:2: not valid UTF-8 \(byte 0xe9"),
        (b'{"text": "ok"}\n{"text": "\\ud800 alone"}\n', r'corpus.jsonl:2: "text" holds a lone surrogate'),
        (b'{"text": "ok"}\n{"text": 7}\n', r'corpus.jsonl:2: "text" is the number 7, not a string'),
        (b'{"text": "ok"}\n{broken\n', r"corpus.jsonl:2: not valid JSON"),
        (b'{"text": "ok"}\n{"txt": "x"}\n', r'corpus.jsonl:2: no "text" field \(its fields: txt\)'),
        (
            b'{"text": "ok"}\n{"text": "' + b"word " * 40 + b'"}\n',
            r"corpus.jsonl:2: its text is longer than max_length=16 tokens \(at least \d+ tokens\)",
        ),
    ],
)
def test_bad_records_are_named_and_can_be_skipped(tiny, embedder, tmp_path, content, message):
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + content + b'{"text": "last"}\n')  # a BOM before line 1 is no bad record
    options = dict(max_length=16, truncate=False)
    with pytest.raises(ValueError, match=message + r".*; fix it, or skip such records .* with --skip-bad"):
        encode(tiny, embedder, path, tmp_path / "out", **options)
    assert not list((tmp_path / "out").glob("shard-*"))
    summary = encode(tiny, embedder, path, tmp_path / "out", skip_bad=True, **options)  # the same folder: resumes
    assert summary.manifest["rows"] == 2 and len(summary.manifest["skipped"]) == 1
    assert load_corpus(tmp_path / "out")[1] == [0, 2]  # ids are positions: which records the rows are


def test_a_failed_first_run_leaves_nothing_that_refuses_the_corrected_one(tiny, embedder, corpus, tmp_path):
    with pytest.raises(ValueError, match=r'corpus.jsonl:1: no "body" field \(its fields: text, doc\)'):
        encode(tiny, embedder, corpus, tmp_path / "out", text_field="body")
    assert not (tmp_path / "out").exists()  # found before anything was written
    lines = corpus.read_text().splitlines()
    corpus.write_text("\n".join(lines[:3] + ["{broken"] + lines[3:]) + "\n")
    with pytest.raises(ValueError, match="corpus.jsonl:4: not valid JSON"):
        encode(tiny, embedder, corpus, tmp_path / "out", chunk_size=30)
    summary = encode(tiny, embedder, corpus, tmp_path / "out", chunk_size=20, skip_bad=True)
    assert summary.embedded == 3 and summary.manifest["rows"] == len(TEXTS)


def test_other_settings_are_refused_naming_each_old_and_new_value(build_checkpoint, tiny, embedder, corpus, tmp_path):
    encode(tiny, embedder, corpus, tmp_path / "out", chunk_size=30)
    other = build_checkpoint("gqa2-seed1", TINY_SHAPES["gqa2"], seed=1)  # the same shapes, other weights
    with pytest.raises(ValueError) as error:
        encode_corpus(other[0], corpus, tmp_path / "out", chunk_size=20, dim=8, show_progress=False)
    message = str(error.value)
    assert "use another output folder, or delete this one to start over" in message
    assert "chunk_size: 30 then, 20 now" in message and "dim: 96 then, 8 now" in message
    assert f"model: {tiny[0]} (content " in message and f"then, {other[0]} (content " in message


def test_the_model_and_the_input_are_identified_by_content(tiny, embedder, corpus, tmp_path, monkeypatch):
    encode(tiny, embedder, corpus, tmp_path / "out", chunk_size=20)
    before = files_of(tmp_path / "out")
    monkeypatch.chdir(tiny[0].parent)
    os.utime(corpus)  # touched, not changed
    again = encode_corpus(tiny[0].name, corpus, tmp_path / "out", chunk_size=20, show_progress=False)  # relative
    assert (again.embedded, again.verified) == (0, 3) and files_of(tmp_path / "out") == before

    with pytest.raises(
        ValueError, match=r"input corpus.jsonl: (\d+) bytes of jsonl, sha256 \w{12} then; \1 bytes of text"
    ):
        encode(tiny, embedder, corpus, tmp_path / "out", chunk_size=20, input_format="text")  # another reading
    stat = corpus.stat()
    corpus.write_text(corpus.read_text().replace('"d1"', '"D1"'))  # the same size, and the old mtime
    os.utime(corpus, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(ValueError, match=r"input corpus.jsonl: (\d+) bytes of jsonl, sha256 (\w{12}) then; \1 bytes"):
        encode(tiny, embedder, corpus, tmp_path / "out", chunk_size=20)


def damage_ids(path):
    path.write_text("[1,2,3]")


def transpose_header(path):
    """The same bytes but a header that says [96, 10]: a wrong shape that only the count check finds."""
    data = path.read_bytes()
    path.write_bytes(data.replace(b"(10, 96)", b"(96, 10)", 1))


def truncate(path):
    path.write_bytes(path.read_bytes()[:-100])


def flip_a_bit(path):
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "file, damage, verify, reason",
    [
        ("shard-00001.ids.json", damage_ids, True, r"shard-00001.ids.json has 7 bytes, its record says \d+"),
        ("shard-00001.npy", truncate, True, r"shard-00001.npy has \d+ bytes, its record says \d+"),
        ("shard-00001.npy", flip_a_bit, True, r"shard-00001.npy does not match its sha256 checksum"),
        ("shard-00001.npy", transpose_header, False, r"shard-00001.npy holds float32 \[96, 10\], its record says .*"),
        ("shard-00001.json", lambda p: p.write_text("{"), True, r"its record cannot be read \(JSONDecodeError: .*\)"),
    ],
)
def test_damaged_shards_are_found_and_embedded_again(tiny, embedder, corpus, tmp_path, file, damage, verify, reason):
    out = tmp_path / "out"
    encode(tiny, embedder, corpus, out, chunk_size=10)
    intact = files_of(out)
    damage(out / file)
    if file != "shard-00001.json":  # the manifest keeps its own copy of the record: loading needs only that one
        with pytest.raises(DamagedShard, match=r"shard-00001 of .*; rerun the encode command that wrote it"):
            load_corpus(out, verify=verify)
    assert verify_corpus(out, checksums=verify)[0].startswith("shard-00001: ")  # what a resumed run would redo
    with pytest.warns(UserWarning, match=f"shard-00001 of {re.escape(str(out))}: {reason}; embedding it again"):
        summary = encode(tiny, embedder, corpus, out, chunk_size=10, verify=verify)
    assert (summary.embedded, summary.verified) == (1, 5)
    assert files_of(out) == intact  # bit for bit what the uninterrupted run wrote


def test_a_missing_record_means_the_shard_is_redone_and_orphans_are_removed(tiny, embedder, corpus, tmp_path):
    out = tmp_path / "out"
    encode(tiny, embedder, corpus, out, chunk_size=10)
    intact = files_of(out)
    (out / "shard-00002.json").unlink()  # killed between the vectors and the record
    (out / "shard-00002.npy").write_bytes(b"partial")
    (out / ".shard-00003.npy.4242.deadbeef.tmp").write_bytes(b"left by a killed run")
    summary = encode(tiny, embedder, corpus, out, chunk_size=10)
    assert (summary.embedded, summary.verified, summary.redone) == (1, 5, [])
    assert files_of(out) == intact


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(dim=500), r"dim=500 is outside 1..96"),
        (dict(batch_tokens=0), r"batch_tokens=0 must be at least 1"),
        (dict(max_length=1), r"max_length=1 is outside 2..32768"),
        (dict(prompt_name="nope"), r"prompt_name='nope' is not among the checkpoint's prompts"),
        (dict(chunk_size=0), r"chunk_size=0 must be at least 1"),
    ],
)
def test_options_are_checked_before_the_model_loads(tiny, corpus, tmp_path, monkeypatch, options, message):
    monkeypatch.setattr("qwen3_embed.Embedder.from_pretrained", None)  # reaching it would be a TypeError
    with pytest.raises(ValueError, match=message):
        encode_corpus(tiny[0], corpus, tmp_path / "out", show_progress=False, **options)
    assert not (tmp_path / "out").exists()


def test_options_check_what_needs_no_model_when_made_and_the_rest_against_the_config(tiny):
    """Options are checked once: what needs no model as they are made, dim and max_length against a checkpoint's
    config (naming the command line's flags for the commands), before any of its files but config.json is read."""
    from qwen3_embed.config import Qwen3Config
    from qwen3_embed.corpus import Options, ShardOptions

    for make, message in [
        (lambda: Options(batch_tokens=0), "batch_tokens=0 must be at least 1"),
        (lambda: Options(vector_dtype="int4"), "vector_dtype='int4' is not one of float32, float16, int8"),
        (lambda: Options(vector_dtype="uint8"), "uint8 vectors need calibration vectors"),
        (lambda: Options(calibration=np.zeros((4, 8))), "calibration vectors set the ranges of int8 and uint8, not"),
        (lambda: ShardOptions(chunk_size=0), "chunk_size=0 must be at least 1"),
        (lambda: Options(unique_ids=True), r"unique_ids \(--unique-ids\) checks the ids of an id field"),
        (lambda: ShardOptions(vector_format="csv"), "vector_format='csv' is not one of npy, safetensors"),
    ]:
        with pytest.raises(ValueError, match=message):
            make()
    config = Qwen3Config.from_json(tiny[0] / "config.json")
    assert Options().check_model(config) == (96, 8192)
    assert Options(dim=8, max_length=100).check_model(config) == (8, 100)
    with pytest.raises(ValueError, match="^dim=97 is outside 1..96, the model's hidden size"):
        Options(dim=97).check_model(config)
    with pytest.raises(ValueError, match="^--max-length=40000 is outside 2..32768, the model's maximum sequence"):
        Options(max_length=40000).check_model(config, flags=True)


def test_encode_file_takes_the_options_but_not_those_of_a_folder(tiny, embedder, corpus, tmp_path):
    from qwen3_embed.corpus import encode_file

    for option in ("chunk_size", "vector_format", "verify", "store_text"):
        with pytest.raises(TypeError, match=option):
            encode_file(tiny[0], corpus, tmp_path / "v.npy", embedder=embedder, **{option: 5})
    result = encode_file(tiny[0], corpus, tmp_path / "v.npy", embedder=embedder, dim=8, text_field="text",
                         id_field="doc", show_progress=False)  # fmt: skip
    assert result["rows"] == len(TEXTS) and np.load(tmp_path / "v.npy").shape == (len(TEXTS), 8)
    assert json.loads((tmp_path / "v.ids.json").read_text())[:2] == ["d0", "d1"]


def test_the_ray_engine_checks_its_input_and_workers_before_it_starts_ray(tiny, corpus, tmp_path, monkeypatch):
    from qwen3_embed.corpus import ray_data

    monkeypatch.setattr(ray_data, "_ray", None)  # reaching it would be a TypeError
    for inputs, options, message in [
        ("-", {}, r"--input - \(standard input\) can be encoded only into one file"),
        (corpus, {"workers": 0}, "workers=0 must be at least 1"),
        (corpus, {"chunk_size": 0}, "chunk_size=0 must be at least 1"),
    ]:
        with pytest.raises(ValueError, match=message):
            ray_data.encode_corpus_ray(tiny[0], inputs, tmp_path / "out", **options)


def test_torchrun_ranks_exchange_objects_on_gloo_even_on_gpus(tmp_path, monkeypatch):
    """The ranks exchange only Python objects, which under NCCL would wait on its timeout while other ranks index
    their files: the group is gloo on every device, here a rank given a GPU (one rank, in this process)."""
    import torch
    import torch.distributed as dist

    from qwen3_embed.corpus import torchrun

    devices = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", devices.append)
    for name, value in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1").items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    group = torchrun.Group()
    try:
        assert (group.device, devices) == ("cuda:0", ["cuda:0"]) and dist.get_backend() == "gloo"
        assert group.map(lambda x: x * 2, [1, 2, 3]) == [2, 4, 6]
        assert group.broadcast(("no problem", {4, 5})) == ("no problem", {4, 5})
        assert list(group.claims(3)) == [0, 1, 2] and group.wait_for_all({"embedded": 3}) == {"embedded": 3}
    finally:
        group.close()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ctrl_c_says_how_many_shards_are_done_and_how_to_resume(tiny, corpus, tmp_path, monkeypatch, capsys):
    embed, calls = Job.embed, []

    def interrupted_on_the_third(self, *args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return embed(self, *args)

    monkeypatch.setattr(Job, "embed", interrupted_on_the_third)
    args = ["encode", "--model", str(tiny[0]), "--input", str(corpus), "--output", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit:
        main([*args, "--chunk-size", "10"])
    err = capsys.readouterr().err
    assert exit.value.code == 130 and "Traceback" not in err
    assert "qwen3-embed: interrupted after 2 of 6 shards; rerun the same command to resume" in err
    main([*args, "--chunk-size", "10"])
    assert "(4 embedded now; 2 verified from an earlier run)" in capsys.readouterr().err


def test_progress_advances_per_batch_with_tokens_per_second(tiny, embedder, corpus, tmp_path, monkeypatch):
    from qwen3_embed.pipeline import Progress

    update, calls = Progress.update, []
    monkeypatch.setattr(
        Progress, "update", lambda self, n, tokens: calls.append((n, tokens)) or update(self, n, tokens)
    )  # noqa: E501
    encode_corpus(tiny[0], corpus, tmp_path / "out", embedder=embedder, chunk_size=30, batch_tokens=64)
    batches = [c for c in calls if c[1]]
    assert len(batches) > 2 * 2 and sum(n for n, _ in batches) == len(TEXTS)  # several batches per shard
    assert all(tokens <= 64 or n == 1 for n, tokens in batches)


def test_a_full_disk_is_said_plainly_and_leaves_no_temporary_file(tiny, corpus, tmp_path):
    out = tmp_path / "out"
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))  # noqa: E731
    done = subprocess.run(
        [sys.executable, "-m", "qwen3_embed.cli", "encode", "--model", str(tiny[0]), "--input", str(corpus),
         "--output", str(out), "--chunk-size", "60"],
        cwd=REPO, capture_output=True, text=True, timeout=300, preexec_fn=limit,
    )  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "could not write" in done.stderr
    assert "shard-00000.npy: the disk is full, or a quota or file-size limit was reached" in done.stderr
    assert "make room and rerun the same command to resume" in done.stderr
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_the_ray_stages_without_a_cluster(tiny, tmp_path):
    """The Ray engine's two stages, called in this process: a bad record travels to the driver as data (raised in a
    worker, only its traceback's text would arrive), and a shard goes through both stages into the folder."""
    import torch

    from qwen3_embed.corpus import ShardOptions
    from qwen3_embed.corpus.ray_data import Embed, Tokenize

    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "a"}\n{broken\n{"text": "b"}\n')
    job = Job(tiny[0], path, tmp_path / "out", ShardOptions(chunk_size=2), torch.float32)
    assert Tokenize(job)({"index": 0})["error"].startswith("ValueError\nin.jsonl:2: not valid JSON")
    job.close()  # the next one takes the folder
    job = Job(tiny[0], path, tmp_path / "out", ShardOptions(chunk_size=2, skip_bad=True), torch.float32)
    embed = Embed(job, "cpu", torch.float32, 1)
    rows = [embed(Tokenize(job)({"index": k})) for k in range(2)]
    assert [(r["problem"], r["error"], r["records"]) for r in rows] == [("missing", "", 2), ("missing", "", 1)]
    assert [Tokenize(job)({"index": k})["problem"] for k in range(2)] == ["", ""]  # sound now: no work
    assert json.loads((tmp_path / "out" / "shard-00000.json").read_text())["skipped"][0].startswith("in.jsonl:2")
    assert json.loads((tmp_path / "out" / "shard-00001.ids.json").read_text()) == [2]


def test_an_edited_record_is_found_by_verify_and_only_its_shard_is_embedded_again(tiny, embedder, corpus, tmp_path):
    """`"dim": 96` -> 97 in a shard's record: verify said sound, and a rerun refused the whole folder as one of other
    settings. Records are sealed by a checksum of their content: one that fails it is damaged, not another run's."""
    out = tmp_path / "out"
    encode(tiny, embedder, corpus, out, chunk_size=10)
    intact = files_of(out)
    path = out / "shard-00002.json"
    path.write_text(path.read_text().replace('"dim": 96', '"dim": 97'))
    assert verify_corpus(out) == [
        "shard-00002: shard-00002.json, its record, fails its checksum (the manifest's is sound)"
    ]
    with pytest.raises(SystemExit, match="1 problem"):
        main(["verify", str(out)])
    with pytest.warns(
        UserWarning, match=r"shard-00002 of .*: its record fails its checksum \(damaged, or edited\); emb"
    ):
        summary = encode(tiny, embedder, corpus, out, chunk_size=10)
    assert (summary.embedded, summary.verified) == (1, 5) and files_of(out) == intact


def test_the_manifest_is_sealed_and_accounts_for_every_record_and_shard_file(tiny, embedder, corpus, tmp_path):
    """A shard's entry taken out of manifest.json and its rows lowered to match: verify said sound and load_corpus
    returned the other rows, though the inputs counted every record and the shard's files were still there."""
    out = tmp_path / "out"
    encode(tiny, embedder, corpus, out, chunk_size=10)  # 59 records: 6 shards
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["shards"][3]
    manifest["rows"] -= 10

    def refused(edited: dict, *problems: str) -> None:
        (out / "manifest.json").write_text(json.dumps(edited))
        found = verify_corpus(out)
        assert all(any(re.search(p, line) for line in found) for p in problems), found
        for read in (load_corpus, Vectors.open):
            with pytest.raises(ValueError, match=problems[0]):
                read(out)

    unlisted = r"manifest.json does not list shard-00003.ids.json, shard-00003.json, shard-00003.npy, which are in"
    refused(manifest, r"manifest.json fails its checksum: it was edited or damaged since written", unlisted)
    refused(seal(manifest), r"its shards are not numbered in order from 0 \(its shard 3 is shard-00004\)",
            r"shard-00004 starts at record 41 of corpus.jsonl, where record 31 is next", unlisted)  # fmt: skip
    manifest["inputs"][0]["records"] -= 10
    for shard in manifest["shards"][3:]:
        shard["first"] -= 10
    refused(seal(manifest), r"its shards are not numbered", unlisted)  # every count agrees: the files still tell
    summary = encode(tiny, embedder, corpus, out, chunk_size=10)  # a rerun writes the manifest again
    assert summary.verified == 6 and len(load_corpus(out)[1]) == len(TEXTS) and verify_corpus(out) == []


@pytest.mark.parametrize("name", ["../outside.npy", "{tmp}/outside.npy", "sub/shard-00000.npy", "shard-00001.npy"])
def test_a_manifest_cannot_name_a_file_outside_its_shard(tiny, embedder, corpus, tmp_path, name):
    out = tmp_path / "out"
    encode(tiny, embedder, corpus, out, chunk_size=30)
    (tmp_path / "outside.npy").write_bytes((out / "shard-00000.npy").read_bytes())  # passes every other check
    manifest = json.loads((out / "manifest.json").read_text())
    name = name.format(tmp=tmp_path)
    manifest["shards"][0]["files"]["vectors"]["name"] = name
    (out / "manifest.json").write_text(json.dumps(seal(manifest)))
    message = f"its vectors file is named {name!r}, where a shard's can only be shard-00000.npy or shard-00000.safet"
    assert f"shard-00000: {message}ensors" in verify_corpus(out)
    with pytest.raises(DamagedShard, match=re.escape(message)):
        read_shard(out, manifest["shards"][0])


@pytest.mark.slow  # 40 s on 2 cores
@pytest.mark.skipif(
    not (SHARED_TOKENIZER / "tokenizer.json").exists(), reason=f"no Qwen3 tokenizer at {SHARED_TOKENIZER}"
)
def test_a_50_mb_line_costs_under_1_gb_and_is_cut_or_refused_by_file_and_line(build_checkpoint, tmp_path):
    """The encoder had no character cap and tokenized a text at the limit twice: one 20 MB line peaked at 4.8 GB. With
    the real vocabulary (its longest token has 128 characters, so max_length 8192 caps a text at 4.2M characters);
    a line of words, and one of a token a character ("7 7 7 ...": under the cap, it was tokenized whole: an attacker
    trial reported +1.5 GB)."""
    folder, _ = build_checkpoint("real-vocab", (151669, 32, 2, 4, 2, 8, 64), tokenizer=SHARED_TOKENIZER)
    rng = random.Random(0)
    words = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(1, 10))) for _ in range(10_000)]
    block = " ".join(rng.choices(words, k=200_000)) + " "
    words_line = (block * (50_000_000 // len(block) + 1))[:50_000_000]
    (tmp_path / "long.txt").write_text("short one\n" + words_line + "\n" + "7 " * 25_000_000 + "\n")
    (tmp_path / "small.txt").write_text("short one\nshort two\n")
    code, err, baseline = encode_peak("--model", str(folder), "--input", str(tmp_path / "small.txt"),
                                      "--output", str(tmp_path / "small"))  # fmt: skip
    assert code == 0, err
    args = ["--model", str(folder), "--input", str(tmp_path / "long.txt")]
    code, err, peak = encode_peak(*args, "--output", str(tmp_path / "long"))
    cut = "2 text(s) were longer than --max-length=8192 tokens and were cut to fit (long.txt:2, long.txt:3)"
    assert code == 0 and cut in err, err
    assert peak - baseline < 1024, (peak, baseline)
    code, err, _ = encode_peak(*args, "--output", str(tmp_path / "refused"), "--no-truncate")
    assert code == 1 and "Traceback" not in err
    assert re.search(r"error: long.txt:2: its text is longer than --max-length=8192 tokens \(more than \d+ characters,"
                     r" more than that many tokens can hold\); .*; fix it, or skip such records", err)  # fmt: skip


def test_an_output_the_input_reads_is_refused(tiny, embedder, tmp_path):
    """`encode --input 'gl/**' --output gl/out` twice: the rerun read out/shard-00000.json as input (with --skip-bad
    it ended with 207 rows instead of 200). An output folder is never an input."""
    gl = tmp_path / "gl"
    gl.mkdir()
    (gl / "a.txt").write_text("one\ntwo\n")
    with pytest.raises(ValueError, match=r"output .*gl/out is where the input pattern '.*gl/\*\*' matches files: a re"):
        encode(tiny, embedder, str(gl / "**"), gl / "out")
    assert not (gl / "out").exists()
    encode(tiny, embedder, str(gl / "*.txt"), gl / "out")  # a pattern that cannot reach the output
    again = encode(tiny, embedder, str(gl / "*.txt"), gl / "out")
    assert (again.verified, again.manifest["rows"]) == (1, 2)
    for spec, message in [
        (str(gl / "out" / "*.json"), r"output .*gl/out is where the input pattern"),
        (gl / "out" / "shard-00000.ids.json", r"input shard-00000.ids.json is inside the output folder .*, which is"),
        (gl, r"output .*gl/out is inside the input folder"),
    ]:
        with pytest.raises(ValueError, match=message):
            encode(tiny, embedder, spec, gl / "out")


def test_an_output_the_input_pattern_reaches_through_a_symbolic_link_is_refused(tiny, embedder, tmp_path):
    """`--input 'alias/**' --output real/out` with alias -> real (or the other way round) wrote the shards, and
    its rerun was refused: the pattern was matched against the output as written, not as the files are reached."""
    real = tmp_path / "real"
    real.mkdir()
    (real / "a.txt").write_text("one\ntwo\n")
    (tmp_path / "alias").symlink_to(real)
    for pattern, output in [(tmp_path / "alias" / "**", real / "out"), (real / "**", tmp_path / "alias" / "out")]:
        with pytest.raises(ValueError, match=r"output .*/out is where the input pattern '.*/\*\*' matches files"):
            encode(tiny, embedder, str(pattern), output)
        assert not (real / "out").exists()


def test_a_one_file_output_the_input_reads_is_refused(tiny, tmp_path, monkeypatch):
    """`encode --input gl --output gl/v2.npy --skip-bad` three times gave 80, then 83, then 83 vectors, exit 0 (it
    embedded its own v2.ids.json and skipped v2.npy as bad); without --skip-bad the rerun failed with `v2.npy:1: not
    valid UTF-8`. A one-file output (its vectors and the ids file beside it) is never an input either: refused before
    the model loads, naming it."""
    gl = tmp_path / "gl"
    gl.mkdir()
    (gl / "a.jsonl").write_text("".join(json.dumps({"text": f"text {i}", "id": f"k{i}"}) + "\n" for i in range(80)))
    model = ["encode", "--model", str(tiny[0]), "--id-field", "id"]
    main([*model, "--input", str(gl / "*.jsonl"), "--output", str(gl / "w.npy")])  # a pattern that reaches neither
    main([*model, "--input", str(gl / "*.jsonl"), "--output", str(gl / "w.npy")])
    assert len(np.load(gl / "w.npy")) == 80 and len(json.loads((gl / "w.ids.json").read_text())) == 80
    monkeypatch.setattr("qwen3_embed.Embedder.from_pretrained", None)  # reaching it would be a TypeError
    folder = rf"output {re.escape(str(gl))}/v2.npy is inside the input folder {re.escape(str(gl))}, whose every file"
    pattern = r"output .*/gl/w.npy is where the input pattern '.*/gl/\*(.json)?' matches files: a rerun would read it"
    for spec, output, message in [
        (gl, gl / "v2.npy", folder),
        (str(gl / "*"), gl / "w.npy", pattern),
        (str(gl / "*.json"), gl / "w.npy", pattern),  # its ids file
        (gl / "w.ids.json", gl / "w.npy", r"input w.ids.json is a file the output .*/gl/w.npy writes, which is never"),
        (gl / "w.npy", gl / "w.npy", r"input w.npy is a file the output .*/gl/w.npy writes, which is never an input"),
    ]:
        with pytest.raises(SystemExit) as exit:
            main([*model, "--input", str(spec), "--output", str(output), "--skip-bad"])
        assert re.fullmatch(f"qwen3-embed: error: {message}.*", str(exit.value.code)), exit.value.code
    assert sorted(p.name for p in gl.iterdir()) == ["a.jsonl", "w.ids.json", "w.npy"]


def test_a_stray_shard_file_is_removed_by_the_rerun_so_the_folder_verifies(tiny, embedder, corpus, tmp_path):
    """A shard's .npy copied to shard-00009.npy: verify said `manifest.json does not list shard-00009.npy ... rerun
    the encode command`, and the rerun said `0 embedded now; 5 verified` with exit 0, leaving the folder as it was.
    The rerun removes the shard-named files no shard of it accounts for, and names them; a folder of such a name it
    refuses, removing nothing."""
    out = tmp_path / "out"
    encode(tiny, embedder, corpus, out, chunk_size=10)  # 59 records: 6 shards
    intact = files_of(out)
    (out / "shard-00009.npy").write_bytes((out / "shard-00001.npy").read_bytes())
    (out / "shard-00002.safetensors").write_bytes(b"another vector format's")
    assert re.search(r"does not list shard-00002.safetensors, shard-00009.npy, which", " ".join(verify_corpus(out)))
    removed = rf"removed 2 file\(s\) of {re.escape(str(out))} that no shard of this run accounts for: shard-00002.safe"
    with pytest.warns(UserWarning, match=removed + "tensors, shard-00009.npy"):
        summary = encode(tiny, embedder, corpus, out, chunk_size=10)
    assert (summary.embedded, summary.verified) == (0, 6)
    assert verify_corpus(out) == [] and files_of(out) == intact and len(load_corpus(out)[1]) == len(TEXTS)
    (out / "shard-00007").mkdir()
    (out / "shard-00008.npy").write_bytes(b"")
    with pytest.raises(ValueError, match=r"out/shard-00007 is a folder with a shard's name, which no shard of this "
                       r"run accounts for; remove it, and rerun the same command"):  # fmt: skip
        encode(tiny, embedder, corpus, out, chunk_size=10)
    assert (out / "shard-00008.npy").exists()  # nothing removed while refused


def test_a_second_encoder_on_a_held_folder_names_the_process_that_holds_it(tiny, tmp_path):
    """Two encoders of other settings on one folder both died with 'RuntimeError ... this looks like a bug', and the
    rerun they suggested was refused. The first holds the folder (a flocked .lock); the second is refused at once."""
    path, out = tmp_path / "in.txt", tmp_path / "out"
    path.write_text("".join(f"record number {i}\n" for i in range(300)))
    first = subprocess.Popen([sys.executable, "-m", "qwen3_embed.cli", "encode", "--model", str(tiny[0]), "--input",
                              str(path), "--output", str(out), "--chunk-size", "100"], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while not ((out / ".lock").exists() and (out / ".lock").read_text()):
        assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()
        time.sleep(0.01)
    with pytest.raises(FileNotFoundError, match=rf"has no manifest.json yet: an encode run is writing it now \(process "
                       rf"{first.pid} on "):  # fmt: skip
        verify_corpus(out)  # it said "an interrupted run has shards but no manifest"
    with pytest.raises(SystemExit) as exit:
        main(["encode", "--model", str(tiny[0]), "--input", str(path), "--output", str(out), "--chunk-size", "50"])
    assert first.poll() is None  # the first still runs: it held the folder all along
    assert str(exit.value.code).startswith(
        f"qwen3-embed: error: another encode run holds the output folder {out} (process {first.pid} on "
    )
    assert first.wait(timeout=300) == 0, first.stderr.read()
    assert verify_corpus(out) == [] and len(load_corpus(out)[1]) == 300


def test_repeated_ids_are_named_in_a_warning_or_refused(tiny, embedder, tmp_path):
    from qwen3_embed.corpus import encode_file
    from qwen3_embed.corpus.job import repeated_ids

    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"text": f"t{i}", "id": k}) + "\n" for i, k in enumerate("abacba")))
    repeated = r"3 record\(s\) have the id of an earlier record \(2 id\(s\) repeated: 'a', 'b'\)"
    with pytest.warns(UserWarning, match=repeated + ": a search names such rows alike"):
        summary = encode(tiny, embedder, path, tmp_path / "out", id_field="id", chunk_size=2)
    assert summary.manifest["rows"] == 6
    with pytest.raises(ValueError, match=repeated + ", which --unique-ids refuses"):
        encode(tiny, embedder, path, tmp_path / "strict", id_field="id", chunk_size=2, unique_ids=True)
    assert not (tmp_path / "strict" / "manifest.json").exists()
    with pytest.warns(UserWarning, match=repeated):
        encode_file(tiny[0], path, tmp_path / "v.npy", embedder=embedder, id_field="id", show_progress=False)
    with pytest.raises(ValueError, match=repeated + ", which --unique-ids refuses"):
        encode_file(tiny[0], path, tmp_path / "w.npy", embedder=embedder, id_field="id", unique_ids=True)
    assert not (tmp_path / "w.npy").exists()
    assert repeated_ids(lambda: [[-1, -2, "x"], ["x", -1]]) == (2, ["x", -1])  # hash(-1) == hash(-2): not alike


def test_an_embedder_of_another_checkpoint_is_refused(build_checkpoint, tiny, corpus, tmp_path):
    """encode_corpus(model, embedder=other) recorded model's fingerprint for the vectors of other."""
    from qwen3_embed import Embedder

    other = build_checkpoint("gqa2-seed1", TINY_SHAPES["gqa2"], seed=1)[0]  # the same shapes, other weights
    with pytest.raises(ValueError, match=f"embedder= was loaded from {other}, whose config, tokenizer or weights diff"):
        encode_corpus(tiny[0], corpus, tmp_path / "out", embedder=Embedder.from_pretrained(other, device="cpu"))
    assert not (tmp_path / "out").exists()


def test_non_finite_calibration_is_refused_before_anything_is_written(tiny, embedder, corpus, tmp_path, expected):
    """NaN ranges were recorded, and a rerun refused the folder: NaN != NaN in the settings' comparison."""
    calibration = expected.copy()
    calibration[3, 5] = np.nan
    with pytest.raises(ValueError, match=r"calibration vectors hold NaN or infinite values \(rows 3\)"):
        encode(tiny, embedder, corpus, tmp_path / "out", vector_dtype="int8", calibration=calibration)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("output", ["out", "out.npy"])
def test_a_json_line_too_long_for_any_record_that_fits_is_refused_or_skipped_by_file_and_line(
    tiny, embedder, tmp_path, capsys, output
):
    """Both paths (shards, one file) read a corpus line by line with the cap of `max_length`: a JSON line longer than
    any record that fits is never read whole; it is an error, or skipped and reported with --skip-bad."""
    max_chars = embedder.tokenizer.max_chars(64)
    path = tmp_path / "in.jsonl"
    long_text = "w" * (12 * max_chars + (1 << 20) + 1)  # with its key and quotes: 1 byte over the limit
    path.write_text(json.dumps({"text": "a"}) + "\n" + json.dumps({"text": long_text}) + "\n" + '{"text": "b"}\n')
    args = ["encode", "--model", str(tiny[0]), "--input", str(path), "--output", str(tmp_path / output)]
    with pytest.raises(SystemExit) as exit:
        main([*args, "--max-length", "64"])
    assert re.fullmatch(r"qwen3-embed: error: in\.jsonl:2: a JSON line of more than [\d,]+ bytes, longer than any "
                        r"record whose text can fit .*; it was not read; fix it, or skip such records \(and have "
                        r"them reported\) with --skip-bad", str(exit.value.code))  # fmt: skip
    main([*args, "--max-length", "64", "--skip-bad"])
    vectors = np.load(tmp_path / output) if output.endswith(".npy") else load_corpus(tmp_path / output)[1]
    assert len(vectors) == 2
    longer = tmp_path / f"longer-{output}"
    capsys.readouterr()
    main([*args[:-1], str(longer), "--max-length", "128"])  # the cap of 128 tokens holds the record: it is read
    cut = "1 text(s) were longer than --max-length=128 tokens and were cut to fit (in.jsonl:2)"
    assert cut in capsys.readouterr().err
    assert len(np.load(longer) if output.endswith(".npy") else load_corpus(longer)[1]) == 3
