"""The GPU check script: its plan fits the 4-minute budget by design, and its CPU smoke mode (tiny shapes, Triton's
interpreter) runs every section, with the real tokenizer when it is there, so the script cannot rot between the runs
on a lent GPU."""

from __future__ import annotations

import json
import subprocess
import sys

from checkpoints import REPO, SHARED_TOKENIZER


def run_gpu_check(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_gpu_check_plan_fits_four_minutes(tmp_path):
    plan = json.loads(run_gpu_check(str(tmp_path), "--plan").stdout)
    sections = {s["section"]: s for s in plan["sections"]}
    assert list(sections) == ["kernel checks", "attention", "rmsnorm", "end to end 0.6B", "end to end 8B"]
    assert sections["end to end 8B"]["layers"] == 8 and sections["end to end 8B"]["systems"] == 2
    assert sections["end to end 8B"]["checkpoint_gb"] < 6  # built once, on the GPU, read once per system
    assert set(sections["end to end 0.6B"]["tokens"]) == {"mixed 8-2048", "long ~8k"}
    assert set(sections["end to end 8B"]["tokens"]) == {"long ~8k"}
    assert plan["estimated_total_s"] == round(sum(plan["estimated_seconds"].values()), 1)
    assert plan["estimated_total_s"] <= plan["budget_s"] == 240
    assert not list(tmp_path.iterdir())  # planning runs nothing


def test_gpu_check_smoke(tmp_path):
    """Every section on CPU; the real tokenizer's ids (up to 151k) meet the tiny model's full-size vocabulary."""
    tokenizer = SHARED_TOKENIZER if (SHARED_TOKENIZER / "tokenizer.json").exists() else tmp_path / "no-tokenizer"
    out = tmp_path / "out"
    run_gpu_check(str(out), "--smoke", "--tokenizer", str(tokenizer), "--checkpoints", str(tmp_path / "checkpoints"))
    assert sorted(p.name for p in out.iterdir()) == ["gpu-smoke.json", "gpu-smoke.md"]  # flat, rewritten per section
    results = json.loads((out / "gpu-smoke.json").read_text())
    assert "failures" not in results
    sections = results["sections"]
    assert list(results["finished_at_s"]) == ["environment", "kernel checks", "attention", "rmsnorm",
                                              "matmul peak GFLOP/s", "end to end", "autotune", "targets"]  # fmt: skip
    assert sections["kernel checks"] and all(c["ok"] for c in sections["kernel checks"])
    assert {"opcheck qwen3_embed.varlen_attention.default"} <= {c["check"] for c in sections["kernel checks"]}
    assert {tuple(r["chosen_config"]) for r in sections["attention"]["runs"]} == {("base", "diag32", "tma")}
    assert sections["autotune"] and sections["environment"]["triton"]
    runs = {(r["shape"], r["corpus"], r["system"]) for r in results["end_to_end"]}
    assert runs == {(shape, corpus, system) for shape, corpora in (("0.6B", ("mixed 8-2048", "long ~8k")),
                                                                   ("8B", ("long ~8k",)))
                    for corpus in corpora for system in ("qwen3-embed", "sentence-transformers")}  # fmt: skip
    assert all(r["min_cosine_vs_qwen3_embed"] > 0.999 for r in results["end_to_end"])
    assert [t["target"] for t in sections["targets"]][0].startswith("attention")
