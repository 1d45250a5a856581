"""The engines end to end, in their own processes: a run killed with SIGKILL at random points resumes to the
uninterrupted output bit for bit; two torchrun ranks and a Ray Data pipeline (one of its actors killed mid-run)
write the same shards as one process."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from checkpoints import REPO, texts_of_lengths
from qwen3_embed.corpus import load_corpus

TEXTS = texts_of_lengths(59, seed=11, max_words=40)
pytestmark = pytest.mark.slow


def run_cli(*args: str, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    command = (launcher or [sys.executable, "-m"]) + ["qwen3_embed.cli", "encode", *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)


def start_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "qwen3_embed.cli", "encode", *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip


def shards_written(folder: Path) -> int:
    return len(list(folder.glob("shard-*[0-9].json")))


def contents(folder: Path) -> dict[str, bytes]:
    """Every file but the lock, which names the last run's process."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != ".lock"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A folder of three JSON lines files of unequal sizes."""
    folder = tmp_path_factory.mktemp("inputs")
    for name, part in (("a.jsonl", TEXTS[:31]), ("b.jsonl", TEXTS[31:35]), ("c.jsonl", TEXTS[35:])):
        (folder / name).write_text("".join(json.dumps({"text": t}) + "\n" for t in part), "utf-8")
    return folder


CHUNK, SHARDS = "2", 30  # 16 + 2 + 12 shards of the three files


@pytest.fixture(scope="module")
def uninterrupted(tiny, inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted") / "out"
    done = run_cli("--model", str(tiny[0]), "--input", str(inputs), "--output", str(out), "--chunk-size", CHUNK)
    assert done.returncode == 0, done.stderr
    assert len(json.loads((out / "manifest.json").read_text())["shards"]) == SHARDS
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_killed_at_a_random_point_the_rerun_equals_an_uninterrupted_run_bit_for_bit(
    tiny, inputs, uninterrupted, tmp_path, seed
):
    rng = random.Random(seed)
    out = tmp_path / "out"
    args = ["--model", str(tiny[0]), "--input", str(inputs), "--output", str(out), "--chunk-size", CHUNK]
    shards = rng.randint(1, 2 * SHARDS // 3)  # leaves the run at least 10 shards to write when it is killed
    process = start_cli(*args)
    deadline = time.monotonic() + 300
    while not out.exists() or shards_written(out) < shards:
        assert process.poll() is None and time.monotonic() < deadline, f"ended before it could be killed: {shards}"
        time.sleep(0.001)
    time.sleep(rng.uniform(0, 0.003))  # anywhere in the writing of the next shard
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "manifest.json").exists()
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr
    assert contents(out) == contents(uninterrupted)  # every shard, record and the manifest; no temporary file left


def test_two_torchrun_ranks_equal_one_process(tiny, inputs, uninterrupted, tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m"]
    args = ["--model", str(tiny[0]), "--input", str(inputs), "--chunk-size", CHUNK]
    two = run_cli(*args, "--output", str(tmp_path / "two"), launcher=torchrun)
    assert two.returncode == 0, two.stderr[-3000:]
    one_vectors, one_ids = load_corpus(uninterrupted)
    two_vectors, two_ids = load_corpus(tmp_path / "two")
    assert two_ids == one_ids and len(one_ids) == len(TEXTS)  # each record once, in input order
    np.testing.assert_allclose(two_vectors, one_vectors, rtol=0, atol=1e-6)
    shards = [json.loads((tmp_path / "two" / f"shard-{k:05d}.json").read_text()) for k in range(SHARDS)]
    assert [s["files"]["ids"]["sha256"] for s in shards] == [
        json.loads((uninterrupted / f"shard-{k:05d}.json").read_text())["files"]["ids"]["sha256"] for k in range(SHARDS)
    ]


def descendants(root: int) -> dict[int, str]:
    """The processes under `root`: pid -> command line."""
    parents, commands = {}, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                commands[int(entry)] = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = {}, [root]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in found:
                found[child] = commands[child]
                frontier.append(child)
    return found


def test_ray_equals_one_process_even_after_an_actor_is_killed(tiny, inputs, uninterrupted, tmp_path):
    pytest.importorskip("ray.data")
    out = tmp_path / "out"
    args = ["--model", str(tiny[0]), "--input", str(inputs), "--output", str(out), "--chunk-size", CHUNK]
    process = start_cli(*args, "--engine", "ray", "--workers", "1")
    deadline = time.monotonic() + 300
    while not out.exists() or shards_written(out) < 5:
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()[-3000:]
        time.sleep(0.01)
    actors = [
        pid for pid, command in descendants(process.pid).items() if command.startswith("ray::MapWorker(Map(Embed")
    ]
    assert len(actors) == 1
    os.kill(actors[0], signal.SIGKILL)
    killed_at = shards_written(out)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    assert killed_at < SHARDS and f"wrote 59 vectors of 96 dimensions in {SHARDS} shard(s)" in err
    vectors, ids = load_corpus(out)
    one_vectors, one_ids = load_corpus(uninterrupted)
    assert ids == one_ids  # no record dropped or duplicated
    np.testing.assert_allclose(vectors, one_vectors, rtol=0, atol=1e-6)
