"""Streaming a corpus into shards: equal to Embedder.encode, resumable after a kill, and split over torchrun ranks."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from checkpoints import REPO, texts_of_lengths
from qwen3_embed.cli import main
from qwen3_embed.corpus import count_records, encode_corpus, load_corpus

TEXTS = texts_of_lengths(57, seed=11, max_words=40) + ["", "中文 🙂"]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": t, "doc": f"d{i}"}) + "\n" for i, t in enumerate(TEXTS)), "utf-8")
    return path


@pytest.fixture(scope="module")
def expected(embedder):
    return embedder.encode(TEXTS).numpy()


def run_cli(*args: str, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    command = (launcher or [sys.executable, "-m"]) + ["qwen3_embed.cli", "encode", *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_shards_equal_encode(embedder, corpus, tmp_path, expected):
    manifest = encode_corpus(embedder, corpus, tmp_path / "out", model="tiny", chunk_size=10, id_field="doc")
    assert manifest["texts"] == len(TEXTS) and len(manifest["shards"]) == 6 and manifest["skipped"] == []
    vectors, ids = load_corpus(tmp_path / "out")
    assert ids == [f"d{i}" for i in range(len(TEXTS))]
    np.testing.assert_allclose(vectors, expected, rtol=0, atol=1e-5)


def test_text_lines_safetensors_float16(embedder, tmp_path, expected):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(TEXTS) + "\n", "utf-8")
    assert count_records(path) == len(TEXTS)
    encode_corpus(embedder, path, tmp_path / "out", model="tiny", chunk_size=25, fmt="safetensors",
                  vector_dtype="float16")  # fmt: skip
    vectors, ids = load_corpus(tmp_path / "out")
    assert vectors.dtype == np.float16 and ids == list(range(len(TEXTS)))
    np.testing.assert_allclose(vectors.astype(np.float32), expected, rtol=0, atol=2e-3)


def test_parquet(embedder, tmp_path, expected):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"body": TEXTS, "key": list(range(100, 100 + len(TEXTS)))}), path)
    assert count_records(path) == len(TEXTS)
    encode_corpus(embedder, path, tmp_path / "out", model="tiny", chunk_size=16, text_field="body", id_field="key")
    vectors, ids = load_corpus(tmp_path / "out")
    assert ids == list(range(100, 100 + len(TEXTS)))
    np.testing.assert_allclose(vectors, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "line, message",
    [
        ("{broken", r"corpus.jsonl:3: not valid JSON"),
        ('{"txt": "x"}', r'corpus.jsonl:3: expected an object with a "text" field'),
        ('{"text": 7}', r'corpus.jsonl:3: "text" is a int, not a string'),
    ],
)
def test_malformed_record_is_an_error_naming_its_line(embedder, tmp_path, line, message):
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b"}\n' + line + '\n{"text": "c"}\n')
    with pytest.raises(ValueError, match=message):
        encode_corpus(embedder, path, tmp_path / "out", model="tiny")


def test_malformed_records_can_be_skipped_and_are_reported(tiny, embedder, tmp_path, capsys):
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"text": "a"}\n{broken\n{"text": "b"}\n{"text": null}\n')
    manifest = encode_corpus(embedder, path, tmp_path / "out", model="tiny", skip_bad=True)
    assert manifest["texts"] == 2 and len(manifest["skipped"]) == 2
    assert "corpus.jsonl:2" in manifest["skipped"][0] and "corpus.jsonl:4" in manifest["skipped"][1]
    assert load_corpus(tmp_path / "out")[1] == [0, 2]  # ids are input positions
    main(["encode", "--model", str(tiny[0]), "--input", str(path), "--output", str(tmp_path / "o2"), "--skip-bad"])
    assert "skipped 2 malformed record(s)" in capsys.readouterr().err


def test_other_settings_in_the_same_folder_are_refused(embedder, corpus, tmp_path):
    encode_corpus(embedder, corpus, tmp_path / "out", model="tiny", chunk_size=30)
    with pytest.raises(ValueError, match=r"other settings \(chunk_size\)"):
        encode_corpus(embedder, corpus, tmp_path / "out", model="tiny", chunk_size=20)


def test_resume_after_a_kill(tiny, corpus, tmp_path, expected):
    """Kill the run once some shards exist; the rerun finishes it, and the output equals an uninterrupted run."""
    args = ["--model", str(tiny[0]), "--input", str(corpus), "--output", str(tmp_path / "out"), "--chunk-size", "3"]
    process = subprocess.Popen([sys.executable, "-m", "qwen3_embed.cli", "encode", *args], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    while len(list((tmp_path / "out").glob("shard-*.ids.json"))) < 3:
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    written = len(list((tmp_path / "out").glob("shard-*.ids.json")))
    assert 3 <= written < 20 and not (tmp_path / "out" / "manifest.json").exists()

    done = run_cli(*args)
    assert done.returncode == 0, done.stderr
    vectors, ids = load_corpus(tmp_path / "out")
    assert ids == list(range(len(TEXTS)))
    np.testing.assert_allclose(vectors, expected, rtol=0, atol=1e-5)


def test_torchrun_two_ranks_equal_one_process(tiny, corpus, tmp_path):
    args = ["--model", str(tiny[0]), "--input", str(corpus), "--chunk-size", "7", "--id-field", "doc"]
    single = run_cli(*args, "--output", str(tmp_path / "single"))
    assert single.returncode == 0, single.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m"]
    two = run_cli(*args, "--output", str(tmp_path / "two"), launcher=torchrun)
    assert two.returncode == 0, two.stderr[-3000:]
    assert len(json.loads((tmp_path / "two" / "manifest.json").read_text())["shards"]) == 9
    one_vectors, one_ids = load_corpus(tmp_path / "single")
    two_vectors, two_ids = load_corpus(tmp_path / "two")
    assert two_ids == one_ids == [f"d{i}" for i in range(len(TEXTS))]  # each text once, in input order
    np.testing.assert_allclose(two_vectors, one_vectors, rtol=0, atol=1e-6)
