"""Our scores on the model cards' examples beside the cards' printed numbers, for every real checkpoint found here.

Checkpoints are found as in tests/test_model_card.py: $QWEN3_MODELS_DIR/<name>, or the hub cache with
HF_HUB_OFFLINE=1. Nothing is downloaded.

    QWEN3_MODELS_DIR=~/models python benchmarks/model_card.py
"""

from __future__ import annotations

import sys

import torch

from common import ROOT, machine, markdown_table, write_results

sys.path.insert(0, str(ROOT / "tests"))
from test_model_card import EMBEDDING_CARD, RERANKER_CARD, embedding_scores, locate, reranker_logits  # noqa: E402


def fmt(values) -> str:
    return "[" + ", ".join(fmt(v) if isinstance(v, list) else f"{v:.4f}" for v in values) + "]"


def main() -> None:
    rows, results = [], {"machine": machine(), "runs": []}
    for repo, (card, _) in EMBEDDING_CARD.items():
        folder = locate(repo)
        if folder is None:
            print(f"{repo}: not found, skipped")
            continue
        for dtype in ("float32", "bfloat16"):
            ours = embedding_scores(folder, dtype)
            diff = (ours - torch.tensor(card)).abs().max().item()
            results["runs"].append(
                {"model": repo, "dtype": dtype, "ours": ours.tolist(), "card": card, "max_diff": diff}
            )
            rows.append(f"| {repo} | {dtype} | {fmt(ours.tolist())} | {fmt(card)} | {diff:.1e} |")
            print(rows[-1], flush=True)
    for repo, card in RERANKER_CARD.items():
        folder = locate(repo)
        if folder is None:
            print(f"{repo}: not found, skipped")
            continue
        ours = reranker_logits(folder)
        diff = (ours - torch.tensor(card)).abs().max().item()
        results["runs"].append(
            {"model": repo, "dtype": "bfloat16", "ours": ours.tolist(), "card": card, "max_diff": diff}
        )
        rows.append(f"| {repo} | bfloat16 (l_yes - l_no) | {fmt(ours.tolist())} | {fmt(card)} | {diff:.2f} |")
        print(rows[-1], flush=True)
    if not rows:
        sys.exit("no real checkpoint found: set QWEN3_MODELS_DIR, or HF_HUB_OFFLINE=1 with the models in the hub cache")
    m = results["machine"]
    table = markdown_table(
        f"The model cards' examples on the real weights, on {m.get('gpu', m['cpu'])}:",
        ["model", "dtype", "ours", "card", "max abs diff"],
        rows,
    )  # fmt: skip
    print("\n" + table)
    write_results("model_card", results, table)


if __name__ == "__main__":
    main()
