"""The model cards' own examples and numbers, on the real weights when they are available; skipped otherwise.

A checkpoint is found in $QWEN3_MODELS_DIR/<name> (for example $QWEN3_MODELS_DIR/Qwen3-Embedding-0.6B), or in the
Hugging Face cache when HF_HUB_OFFLINE=1. Nothing is downloaded. benchmarks/model_card.py prints the same
comparisons as tables.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from qwen3_embed import Embedder
from qwen3_embed.checkpoint import resolve
from qwen3_embed.reranker import Reranker

TASK = "Given a web search query, retrieve relevant passages that answer the query"
QUERIES = ["What is the capital of China?", "Explain gravity"]
DOCUMENTS = [
    "The capital of China is Beijing.",
    "Gravity is a force that attracts two bodies towards each other. It gives weight to physical objects and is "
    "responsible for the movement of planets around the sun.",
]

# The cards' printed query x document scores: transformers' float32 print where the card has one (compared to
# 2e-4), else the 4-decimal sentence-transformers print (to 1e-3). bf16 runs are compared to 1e-2.
EMBEDDING_CARD = {
    "Qwen/Qwen3-Embedding-0.6B": (
        [[0.7645568251609802, 0.14142508804798126], [0.13549736142158508, 0.5999549627304077]],
        2e-4,
    ),
    "Qwen/Qwen3-Embedding-4B": ([[0.7534, 0.1147], [0.0320, 0.6258]], 1e-3),
    "Qwen/Qwen3-Embedding-8B": (
        [[0.7493016123771667, 0.0750647559762001], [0.08795969933271408, 0.6318399906158447]],
        2e-4,
    ),
}
# The cards' bf16 raw logit differences l_yes - l_no for QUERIES[0] against both documents (compared to 0.25).
RERANKER_CARD = {
    "Qwen/Qwen3-Reranker-0.6B": [7.625, -11.375],
    "Qwen/Qwen3-Reranker-4B": [6.4375, -14.375],
}


def locate(repo: str) -> Path | None:
    """The folder of a real checkpoint on this machine, or None."""
    models = os.environ.get("QWEN3_MODELS_DIR")
    if models and (Path(models) / repo.split("/")[1] / "config.json").exists():
        return Path(models) / repo.split("/")[1]
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        try:
            return resolve(repo)
        except (FileNotFoundError, ValueError):
            return None
    return None


def require(repo: str) -> Path:
    folder = locate(repo)
    if folder is None:
        pytest.skip(
            f"{repo} is not on this machine: put it in $QWEN3_MODELS_DIR/{repo.split('/')[1]} or in the hub cache "
            "with HF_HUB_OFFLINE=1 (these tests never download)"
        )
    return folder


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def embedding_scores(folder: Path, dtype: str) -> torch.Tensor:
    embedder = Embedder.from_pretrained(folder, device=device(), dtype=dtype)
    return embedder.similarity(embedder.encode(QUERIES, instruction=TASK), embedder.encode(DOCUMENTS))


def reranker_logits(folder: Path) -> torch.Tensor:
    reranker = Reranker.from_pretrained(folder, device=device(), dtype="bfloat16")
    return reranker.score(QUERIES[0], DOCUMENTS, raw=True)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("repo", list(EMBEDDING_CARD))
def test_embedding_card(repo, dtype):
    expected, tolerance = EMBEDDING_CARD[repo]
    scores = embedding_scores(require(repo), dtype)
    tolerance = tolerance if dtype == "float32" else 1e-2
    torch.testing.assert_close(scores, torch.tensor(expected), rtol=0, atol=tolerance)


@pytest.mark.parametrize("repo", list(RERANKER_CARD))
def test_reranker_card(repo):
    logits = reranker_logits(require(repo))
    torch.testing.assert_close(logits, torch.tensor(RERANKER_CARD[repo]), rtol=0, atol=0.25)
