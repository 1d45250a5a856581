"""The qwen3-embed command, run in-process on a tiny checkpoint."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from qwen3_embed.cli import CARD_DOCUMENTS, CARD_QUERIES, main
from qwen3_embed.pipeline import DEFAULT_INSTRUCTION


def test_similarity_prints_the_card_example_scores(tiny, embedder, capsys):
    main(["similarity", "--model", str(tiny[0]), "--device", "cpu"])
    out = capsys.readouterr().out
    assert CARD_QUERIES[0] in out and CARD_DOCUMENTS[1] in out
    rows = [line.split()[1:] for line in out.splitlines() if re.match(r"q\d +-?\d", line)]
    printed = torch.tensor([[float(x) for x in row] for row in rows])
    expected = embedder.similarity(
        embedder.encode(CARD_QUERIES, instruction=DEFAULT_INSTRUCTION), embedder.encode(CARD_DOCUMENTS)
    )
    assert printed.shape == (2, 2)
    torch.testing.assert_close(printed, expected, rtol=0, atol=6e-5)


def test_similarity_with_given_texts_and_dim(tiny, embedder, capsys):
    args = ["--query", "q one", "--document", "d one", "--document", "d two", "--instruction", "", "--dim", "8"]
    main(["similarity", "--model", str(tiny[0]), *args])
    rows = [line.split()[1:] for line in capsys.readouterr().out.splitlines() if re.match(r"q\d +-?\d", line)]
    expected = embedder.similarity(embedder.encode(["q one"], dim=8), embedder.encode(["d one", "d two"], dim=8))
    torch.testing.assert_close(torch.tensor([[float(x) for x in r] for r in rows]), expected, rtol=0, atol=6e-5)


@pytest.mark.parametrize("kind", ["txt", "jsonl"])
def test_encode_writes_one_row_per_text(tiny, embedder, tmp_path, kind):
    texts = ["first line", "", "third, with 中文"]
    source = tmp_path / f"in.{kind}"
    if kind == "txt":
        source.write_text("\n".join(texts) + "\n", encoding="utf-8")
    else:
        source.write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(texts)), encoding="utf-8")
    main(
        [
            "encode",
            "--model",
            str(tiny[0]),
            "--input",
            str(source),
            "--output",
            str(tmp_path / "out.npy"),
            "--dim",
            "16",
        ]
    )
    vectors = np.load(tmp_path / "out.npy")
    assert vectors.shape == (3, 16) and vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, embedder.encode(texts, dim=16).numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", r"in.jsonl:2: not valid JSON"),
        ('{"txt": "x"}', r'in.jsonl:2: expected an object with a "text" field'),
        ('{"text": 5}', r'in.jsonl:2: "text" is a int, not a string'),
        ("", r"in.jsonl:2: not valid JSON"),
    ],
)
def test_encode_names_the_bad_line(tiny, tmp_path, line, message, capsys):
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "ok"}\n' + line + '\n{"text": "ok"}\n')
    with pytest.raises(SystemExit) as exit:
        main(["encode", "--model", str(tiny[0]), "--input", str(source), "--output", str(tmp_path / "o.npy")])
    assert re.search(message, str(exit.value))


def test_bad_model_is_a_clean_error(tmp_path):
    with pytest.raises(SystemExit, match="qwen3-embed: error: .* is not a checkpoint folder"):
        main(["similarity", "--model", str(tmp_path / "missing")])
