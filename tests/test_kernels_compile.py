"""The compile gate: every launch the kernel wrappers can make, compiled ahead of time on this CPU for each NVIDIA
architecture the installed Triton targets (sm_80, sm_86, sm_89, sm_90 and newer), must compile, fit the
architecture's shared memory and not spill. About 7 minutes of CPU in a pool of 2 processes with a cold Triton cache,
the backward's launches included (benchmarks/results/kernels-aot.md; marked slow: CI runs it, `-m "not slow"` leaves
it out)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from checkpoints import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    """`python -m qwen3_embed.kernels.aot`'s report, run without the interpreter (its JIT functions do not compile)."""
    out = tmp_path_factory.mktemp("aot") / "aot.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", "qwen3_embed.kernels.aot", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1800)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def test_the_required_architectures_are_targets(report):
    assert {80, 86, 89, 90} <= set(report["archs"])
    assert {r["arch"] for r in report["launches"] if r["op"] == "attention"} == set(report["archs"])


def test_every_launch_compiles_fits_and_no_16_bit_one_spills(report):
    failed = [
        f"sm_{r['arch']} {r['op']} {r['dtype']} {r.get('head_dim', r.get('BLOCK'))} {r.get('variant', '')}: "
        + (r["error"] if "error" in r else f"{r['shared']} B shared of {r['shared_limit']}, {r['spill']} B spilled")
        for r in report["launches"]
        if "error" in r or r["shared"] > r["shared_limit"] or (r["spill"] and r["dtype"] != "fp32")
    ]
    assert not failed, "\n".join(failed)


def test_every_head_dim_dtype_and_group_of_attention_is_covered(report):
    """Each architecture compiles attention at head dims 64/128/256 in fp16 and bf16 (float32 goes to SDPA), and
    each launch serves GQA groups 1 to 8."""
    attention = [r for r in report["launches"] if r["op"] == "attention"]
    for arch in report["archs"]:
        covered = {(r["head_dim"], r["dtype"]) for r in attention if r["arch"] == arch}
        assert covered == {(d, t) for d in (64, 128, 256) for t in ("fp16", "bf16")}, arch
    assert all(r["groups"] == [1, 2, 4, 8] for r in attention)


def test_the_instructions_are_the_architectures(report):
    """The inspector reads what each architecture compiles to: mma.sync before sm_90, wgmma on sm_90, tcgen05 on
    sm_100; the TMA variant loads through tensor descriptors, the others with cp.async."""
    expected = {80: "mma", 86: "mma", 89: "mma", 90: "wgmma", 100: "tcgen05", 120: "mma"}
    for r in report["launches"]:
        if r["op"] == "attention":
            assert r["mma"] == expected[r["arch"]], r
            assert r["loads"] == ("TMA" if r["variant"] == "tma" else "cp.async"), r
    timed = {
        r["variant"] for r in report["launches"] if r["op"] == "attention" and r["arch"] == 90 and r["dtype"] == "bf16"
    }
    assert timed == {"base", "diag32", "tma"}
