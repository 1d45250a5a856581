"""Every Python and shell snippet of the README runs as pasted: the tests' random-weight checkpoints sit in a
Hugging Face cache of their own under the real hub ids, with the hub switched off, so the README's commands and
code resolve them as a user's machine would resolve the downloaded models.

A snippet is run unless the line before its fence says `<!-- not run: REASON -->`. In shell snippets, `pip install`
steps are left out (the test runs in the installed environment), and a `qwen3-embed serve` line is started in the
background; the rest of its snippet runs once the server answers `/health`. A command whose trailing comment shows
what it prints is checked: an HTTP status (`# 401 without the key`) must be all it prints, a quoted part of an answer
(`# "model_id":"my-embedder"`) must be in it; and every command that prints an HTTP status shows which.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from checkpoints import REPO, SHAPE_0_6B, make_reranker_checkpoint

# A trailing comment that shows what the command prints: a status code, or a quoted part of the answer.
SHOWN = re.compile(r"^(?P<command>[^#\s][^#]*?)\s+#\s+(?:(?P<status>\d{3})\b.*|(?P<part>\".*?))\s*$")
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


def test_every_http_status_a_snippet_prints_is_checked():
    """A command printing `%{http_code}` shows the status it expects in its comment, or pipes into a `grep -q`."""
    commands = [line for p in snippets() if p.values[0] == "bash" for line in shell_lines(p.values[1])]
    printing = [line for line in commands if "%{http_code}" in line]
    assert printing and all(SHOWN.match(line) or "grep -q" in line for line in printing), printing
    statuses = [SHOWN.match(line)["status"] for line in printing if SHOWN.match(line)]
    assert statuses == ["413", "401"], statuses


def test_a_shown_status_or_answer_part_is_checked(tmp_path):
    script = shell_script("""echo 401   # 401 without the key
echo '{"model_id":"my-embedder"}'   # "model_id":"my-embedder"
echo 200 \\
   # 413 refused
""")
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and "README: expected 413 from: echo 200" in done.stderr, done.stderr
    assert done.stdout.splitlines() == ["401", '{"model_id":"my-embedder"}', "200"]


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


def checked(line: str) -> str:
    """The line, made to fail unless it prints what its trailing comment shows (see the module's docstring)."""
    shown = SHOWN.match(line)
    if shown is None:
        return line
    command, status, part = shown["command"], shown["status"], shown["part"]
    test = f'"$out" == {status}' if status else f'"$out" == *{shlex.quote(part)}*'
    expected = shlex.quote(f"README: expected {status or part} from: {command}")
    return f'out=$({command}); printf "%s\\n" "$out"; [[ {test} ]] || {{ echo {expected} >&2; exit 1; }}'


def shell_lines(code: str) -> list[str]:
    """A shell snippet's lines, each continued line (`\\` at its end) joined with the next."""
    return re.sub(r"\\\n\s*", " ", code).splitlines()


def shell_script(code: str) -> str:
    """The snippet without its pip installs, with a `qwen3-embed serve` line run in the background until the end,
    and each command whose comment shows what it prints checked."""
    lines = ["set -euo pipefail"]
    for line in shell_lines(code):
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
            lines.append(checked(line))
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
