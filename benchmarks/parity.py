"""How close the packed model comes to transformers' Qwen3Model in float32: the largest relative error (max |ours -
theirs| / max |theirs|) of the pooled last token and of every hidden state, over 7 texts each run alone by
transformers, on the test suite's random-weight shapes (three tiny ones: GQA 1, 2, 4; the real 0.6B layer shapes at
2 layers). The same comparison as tests/test_model.py::test_hidden_states_match_transformers, whose bound is 1e-5.

    python benchmarks/parity.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

from common import ROOT, machine, markdown_table, write_results

sys.path.insert(0, str(ROOT / "tests"))
from checkpoints import SHAPE_0_6B, TINY_SHAPES, make_checkpoint, texts_of_lengths  # noqa: E402
from qwen3_embed import Embedder  # noqa: E402
from qwen3_embed.tokenize import pack  # noqa: E402


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def errors(folder: Path, hf) -> dict:
    """The largest relative errors of the last token and of the hidden states, over the texts."""
    embedder = Embedder.from_pretrained(folder, device="cpu", dtype="float32")
    ids = embedder.tokenizer.encode(texts_of_lengths(5, seed=1) + ["", "x"], max_length=8192)
    batch = pack(ids, list(range(len(ids))))
    last, states = embedder.model(batch.input_ids, batch.cu_seqlens, batch.position_ids, output_hidden_states=True)
    bounds = batch.cu_seqlens.tolist()
    worst = {"last_token": 0.0, "hidden_states": 0.0}
    with torch.no_grad():
        for i, seq in enumerate(ids):
            ref = hf(torch.tensor([seq]), output_hidden_states=True)
            worst["last_token"] = max(worst["last_token"], relative_error(last[i], ref.last_hidden_state[0, -1]))
            for ours, theirs in zip(states, ref.hidden_states):
                error = relative_error(ours[bounds[i] : bounds[i + 1]], theirs[0])
                worst["hidden_states"] = max(worst["hidden_states"], error)
    return {"texts": len(ids), **worst}


def main() -> None:
    shapes = {**TINY_SHAPES, "0.6B layers": SHAPE_0_6B}
    results = {"machine": machine(), "runs": []}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, shape in shapes.items():
            folder = Path(tmp) / name
            run = {"shape": name, "dims": shape, **errors(folder, make_checkpoint(folder, shape))}
            results["runs"].append(run)
            vocab, hidden, layers, heads, kv_heads, head_dim, _ = shape
            rows.append(f"| {name} | {hidden} / {layers} / {heads}:{kv_heads} / {head_dim} / {vocab} | "
                        f"{run['last_token']:.1e} | {run['hidden_states']:.1e} |")  # fmt: skip
            print(rows[-1], flush=True)
    table = markdown_table(
        "Largest relative error against transformers' Qwen3Model in float32 (max |ours - theirs| / max |theirs|), "
        f"random weights, {results['runs'][0]['texts']} texts each run alone by transformers:",
        ["shape", "hidden / layers / q:kv heads / head dim / vocab", "last token", "every hidden state"],
        rows,
    )
    print("\n" + table)
    write_results("parity-cpu", results, table)


if __name__ == "__main__":
    main()
