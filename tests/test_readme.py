"""Every Python and shell snippet of the README runs as pasted: the tests' random-weight checkpoints sit in a
Hugging Face cache of their own under the real hub ids, with the hub switched off, so the README's commands and
code resolve them as a user's machine would resolve the downloaded models.

A snippet is run unless the line before its fence says `<!-- not run: REASON -->`. In shell snippets, `pip install`
steps are left out (the test runs in the installed environment), and a `qwen3-embed serve` line is started in the
background; the rest of its snippet runs once the server answers `/health`.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from checkpoints import REPO, SHAPE_0_6B, make_reranker_checkpoint

SNIPPET = re.compile(r"(?:<!-- not run: (?P<reason>[^>]*?) -->\n)?```(?P<language>python|bash)\n(?P<code>.*?)```", re.S)
COMMIT = "0123456789abcdef0123456789abcdef01234567"
# Input files the snippets name, written into the folder they run in.
DOCUMENTS = ["The capital of China is Beijing.", "Gravity is a force.", "Paris is in France."]
JSONL = "".join(json.dumps({"id": f"doc-{i}", "text": text}) + "\n" for i, text in enumerate(DOCUMENTS))
FILES = {
    "texts.txt": b"What is the capital of China?\nExplain gravity\nThe capital of China is Beijing.\n",
    "corpus.jsonl": JSONL.encode(),
    "data/part-1.jsonl": JSONL.encode(),
    "data/more/part-2.jsonl.gz": gzip.compress(JSONL.encode()),
    "train.jsonl": b'{"query": "What is the capital of China?", "positive": "The capital of China is Beijing."}\n'
    b'{"query": "Explain gravity", "positive": "Gravity is a force."}\n',
    "eval.jsonl": b'{"query": "Where is Paris?", "positive": "Paris is in France."}\n',
}


def snippets() -> list:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    found = []
    for match in SNIPPET.finditer(text):
        line = text.count("\n", 0, match.start("code"))
        marks = [pytest.mark.skip(reason=match["reason"])] if match["reason"] is not None else []
        found.append(pytest.param(match["language"], match["code"], id=f"README.md:{line}", marks=marks))
    return found


def test_every_snippet_is_run_or_says_why_not():
    reasons = [p.marks[0].kwargs["reason"] for p in snippets() if p.marks]
    assert snippets() and all(reason.strip() for reason in reasons)


@pytest.fixture(scope="module")
def hub(tmp_path_factory, build_checkpoint):
    """The environment of a Hugging Face cache holding the default embedding and reranker ids (random weights of the
    0.6B layer shapes at reduced depth), with the hub switched off."""
    cache = tmp_path_factory.mktemp("hub")
    reranker = tmp_path_factory.mktemp("reranker")
    make_reranker_checkpoint(reranker, SHAPE_0_6B, tied=True)
    for repo_id, folder in [
        ("Qwen/Qwen3-Embedding-0.6B", build_checkpoint("0.6B-layers", SHAPE_0_6B)[0]),
        ("Qwen/Qwen3-Reranker-0.6B", reranker),
    ]:
        repo = cache / f"models--{repo_id.replace('/', '--')}"
        shutil.copytree(folder, repo / "snapshots" / COMMIT)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(COMMIT)
    env = {
        **os.environ,
        "HF_HUB_CACHE": str(cache),
        "HF_HUB_OFFLINE": "1",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    return env


def shell_script(code: str) -> str:
    """The snippet without its pip installs, with a `qwen3-embed serve` line run in the background until the end."""
    lines = ["set -euo pipefail"]
    for line in code.splitlines():
        line = re.sub(r"^pip install [^&]*(&&\s*|$)", "", line.strip())
        if not line:
            continue
        if line.startswith("qwen3-embed serve"):
            port = re.search(r"--port (\d+)", line)
            url = f"http://127.0.0.1:{port[1] if port else 8080}/health"
            lines += [
                f"{line.split('#')[0].strip().removesuffix('&')} & server=$!",
                "trap 'kill $server' EXIT",
                f"for i in $(seq 300); do curl -sf {url} >/dev/null && break; sleep 0.2; done",
            ]
        else:
            lines.append(line)
    return "\n".join(lines)


@pytest.mark.slow
@pytest.mark.parametrize("language, code", snippets())
def test_snippet_runs_as_pasted(hub, tmp_path, language, code):
    """Each snippet runs in a folder of its own, holding the input files the snippets name."""
    for name, content in FILES.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(content)
    command = [sys.executable, "-c", code] if language == "python" else ["bash", "-c", shell_script(code)]
    done = subprocess.run(command, cwd=tmp_path, env=hub, capture_output=True, text=True, timeout=300)
    report = f"exit {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    assert done.returncode == 0 and '"error"' not in done.stdout, report  # curl prints an HTTP error's body
