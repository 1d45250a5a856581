"""The GPU check script, run in its CPU smoke mode (tiny shapes, Triton's interpreter), so that it cannot rot
between the runs on a lent GPU."""

from __future__ import annotations

import json
import subprocess
import sys

from checkpoints import REPO


def test_gpu_check_smoke(tmp_path):
    no_tokenizer = str(tmp_path / "no-tokenizer")  # the script then trains a tiny one
    command = [sys.executable, "benchmarks/gpu_check.py", str(tmp_path / "out"), "--smoke",
               "--tokenizer", no_tokenizer, "--checkpoints", str(tmp_path / "checkpoints")]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert results["kernel_checks"] and all(c["ok"] for c in results["kernel_checks"])
    systems = {(r["shape"], r["corpus"], r["system"]) for r in results["end_to_end"]}
    assert len(systems) == 2 * 2 * 3  # two shapes, two corpora, three systems
    assert all(r["min_cosine_vs_ours"] > 0.999 for r in results["end_to_end"])
    for name in ("gpu_check.md", "kernels_rmsnorm.json", "kernels_attention.json"):
        assert (tmp_path / "out" / name).exists()
