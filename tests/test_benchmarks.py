"""The GPU check script: its plan fits its budget by design, with the compile cost measured on a CPU; its CPU smoke
mode (tiny shapes, Triton's interpreter) runs every section, with the real tokenizer when it is there, and the same
comparison code as the GPU run, so the script cannot rot between the runs on a lent GPU; a section that would pass
the budget is skipped with a note."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from checkpoints import REPO, SHARED_TOKENIZER

sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_check  # noqa: E402

needs_the_interpreter = pytest.mark.skipif(
    gpu_check.interpreter_problem() is not None, reason=f"{gpu_check.interpreter_problem()} (the smoke run needs it)"
)


def run_gpu_check(*args: str, returncode: int = 0) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == returncode, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_gpu_check_plan_fits_its_budget_with_the_measured_compiles(tmp_path):
    plan = json.loads(run_gpu_check(str(tmp_path), "--plan").stdout)
    sections = {s["section"]: s for s in plan["sections"]}
    assert list(sections) == ["kernel checks", "attention", "attention backward", "rmsnorm", "end to end 0.6B",
                              "end to end 8B", "end to end 0.6B, CUDA graphs"]  # fmt: skip
    assert sections["end to end 8B"]["layers"] == 8
    assert sections["end to end 8B"]["systems"] == ["qwen3-embed", "sentence-transformers"]
    assert sections["end to end 0.6B, CUDA graphs"]["systems"] == ["qwen3-embed, CUDA graphs"]  # last: may spoil it
    assert sections["end to end 8B"]["checkpoint_gb"] < 6  # built once, on the GPU, read once per system
    assert set(sections["end to end 0.6B"]["tokens"]) == {"mixed 8-2048", "long ~8k"}
    assert set(sections["end to end 8B"]["tokens"]) == {"long ~8k"}
    measured = json.loads(gpu_check.COMPILES.read_text())
    assert measured["binaries"] == len(gpu_check.run_launches()) and not any(c["error"] for c in measured["compiles"])
    assert sections["kernel checks"]["compile_s"] == measured["total_s"]
    assert sections["kernel checks"]["compile_s_from"].startswith("measured")
    assert plan["estimated_total_s"] == round(sum(plan["estimated_seconds"].values()), 1)
    assert plan["estimated_total_s"] <= plan["budget_s"] == gpu_check.BUDGET_S
    assert not list(tmp_path.iterdir())  # planning runs nothing


def test_every_system_is_compared_on_one_device_whatever_it_returns():
    """The GPU run's sentence-transformers gives CUDA tensors, ours CPU ones: each is brought to the CPU in float32."""
    rows = [[1.0, 2.0], [3.0, 4.0]]
    for vectors in (
        torch.tensor(rows, dtype=torch.bfloat16),
        np.array(rows),
        rows,
        torch.tensor(rows).requires_grad_(),
    ):
        host = gpu_check.on_host(vectors)
        assert host.device.type == "cpu" and host.dtype == torch.float32 and not host.requires_grad
        torch.testing.assert_close(host, torch.tensor(rows))


def test_a_missing_tokenizer_is_one_line_that_says_what_to_do(tmp_path):
    done = run_gpu_check(str(tmp_path), "--tokenizer", str(tmp_path / "none"), returncode=1)
    assert done.stderr.strip().splitlines() == [
        f"no Qwen3 tokenizer.json in {tmp_path / 'none'}: copy it into the checkout (mkdir -p local && cp -r "
        "../shared/qwen3-tokenizer local/), carry local/qwen3-tokenizer to the GPU machine, or pass --tokenizer DIR"
    ]


@needs_the_interpreter
def test_sections_past_the_budget_are_skipped_with_a_note(tmp_path):
    out = tmp_path / "out"
    run_gpu_check(str(out), "--smoke", "--budget-s", "0.5", "--checkpoints", str(tmp_path / "checkpoints"))
    results = json.loads((out / "gpu-smoke.json").read_text())
    assert list(results["skipped"]) == ["kernel checks", "attention", "attention backward", "rmsnorm",
                                        "end to end 0.6B", "end to end 8B"]  # fmt: skip
    assert all("budget (--budget-s)" in why for why in results["skipped"].values())
    assert "Skipped to stay within the budget" in (out / "gpu-smoke.md").read_text()


@needs_the_interpreter
def test_gpu_check_smoke(tmp_path):
    """Every section on CPU; the real tokenizer's ids (up to 151k) meet the tiny model's full-size vocabulary; the
    other system's vectors come as numpy arrays and are compared on the CPU, as the GPU run's CUDA tensors are."""
    tokenizer = SHARED_TOKENIZER if (SHARED_TOKENIZER / "tokenizer.json").exists() else tmp_path / "no-tokenizer"
    out = tmp_path / "out"
    run_gpu_check(str(out), "--smoke", "--tokenizer", str(tokenizer), "--checkpoints", str(tmp_path / "checkpoints"))
    assert sorted(p.name for p in out.iterdir()) == ["gpu-smoke.json", "gpu-smoke.md"]  # flat, rewritten per section
    results = json.loads((out / "gpu-smoke.json").read_text())
    assert "failures" not in results
    sections = results["sections"]
    assert list(results["finished_at_s"]) == ["environment", "kernel checks", "attention", "attention backward",
                                              "rmsnorm", "matmul peak GFLOP/s", "end to end", "autotune",
                                              "targets"]  # fmt: skip
    assert all(r["tflops"]["kernel"] > 0 and max(r["max_abs_diff_vs_per_sequence_sdpa"].values()) < 2e-2
               for r in sections["attention backward"]["runs"])  # fmt: skip
    assert sections["kernel checks"] and all(c["ok"] for c in sections["kernel checks"])
    names = {c["check"] for c in sections["kernel checks"]}
    assert {f"opcheck qwen3_embed.{op}.default" for op in ("rms_norm", "qk_norm_rope", "varlen_attention")} <= names
    assert {"attention mixed Hq/Hkv 4/2 base", "attention mixed Hq/Hkv 4/2 diag32"} <= names
    assert {tuple(r["chosen_config"]) for r in sections["attention"]["runs"]} == {("base", "diag32", "tma")}
    for r in sections["attention"]["runs"]:  # the peers that run on a CPU are checked and timed there
        assert r["peers"] == ["per-sequence SDPA", "padded SDPA", "FlexAttention, document mask"]
        assert not r["peers_failed"]
        assert all(r["max_abs_diff_vs_per_sequence_sdpa"][peer] < 1e-2 and peer in r["tflops"] for peer in r["peers"])
    assert sections["autotune"] and sections["environment"]["triton"]
    runs = {(r["shape"], r["corpus"], r["system"]) for r in results["end_to_end"]}
    assert runs == {(shape, corpus, system) for shape, corpora in (("0.6B", ("mixed 8-2048", "long ~8k")),
                                                                   ("8B", ("long ~8k",)))
                    for corpus in corpora for system in ("qwen3-embed", "sentence-transformers")}  # fmt: skip
    assert all(r["min_cosine_vs_qwen3_embed"] > 0.999 for r in results["end_to_end"])
    assert [t["target"] for t in sections["targets"]][0].startswith("attention")


def test_throughput_warms_up_on_the_whole_workload_on_a_gpu():
    """On a GPU every token-count bucket autotunes and compiles on its first pass: the warm-up before the timing runs
    the whole workload there (a few texts on the CPU, where nothing compiles)."""
    import throughput

    texts = [f"text {i}" for i in range(10)]
    for device, expected in (("cuda", texts), ("cuda:1", texts), ("cpu", texts[:4])):
        seen = []
        throughput.warm_up(seen.append, texts, device)
        assert seen == [expected], device


@pytest.mark.parametrize("flag, value", [("--layers-8b", "0"), ("--layers-8b", "-3"), ("--budget-s", "nan")])
def test_a_bad_size_or_budget_is_refused(tmp_path, flag, value):
    done = run_gpu_check(str(tmp_path), "--plan", flag, value, returncode=2)
    assert f"argument {flag}: {value} is not a positive finite number" in done.stderr


def test_kernels_aot_writes_its_results_only_where_asked(tmp_path, monkeypatch, capsys):
    """A plain run prints the table and leaves the committed results as they are; --output writes them there. (The
    compiler is stubbed: what is under test is where the results go.)"""
    import kernels_aot

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "cache"))  # restored after the run, which sets its own
    monkeypatch.setattr(kernels_aot.aot, "tool", lambda name: "echo")
    monkeypatch.setattr(kernels_aot.aot, "targets", lambda: [90])
    monkeypatch.setattr(kernels_aot.aot, "launches", lambda archs: [])
    monkeypatch.setattr(kernels_aot.aot, "compile_all", lambda launches, processes: [])
    committed = lambda: {p.name: p.read_bytes() for p in (REPO / "benchmarks/results").glob("kernels-aot.*")}  # noqa: E731
    before = committed()
    kernels_aot.main([])
    assert "Kernels compiled ahead of time" in capsys.readouterr().out
    assert committed() == before and before and not list(tmp_path.glob("kernels-aot.*"))
    kernels_aot.main(["--output", str(tmp_path)])
    assert json.loads((tmp_path / "kernels-aot.json").read_text())["launches"] == []
    assert (tmp_path / "kernels-aot.md").read_text().startswith("Kernels compiled ahead of time")
    assert committed() == before


def test_the_server_benchmark_sees_memory_growth_below_the_load_peak():
    """A process that peaked at load (300 MB, freed) and then grows by 200 MB: its lifetime peak (VmHWM) does not move,
    which is all the benchmark used to read; the peak reset after the load shows the growth."""
    import server

    child = subprocess.Popen([sys.executable, "-c", (
        "import sys\nx = bytearray(300_000_000)\ndel x\nprint(flush=True)\nsys.stdin.readline()\n"
        "y = bytearray(200_000_000)\nprint(flush=True)\nsys.stdin.readline()\n")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        child.stdout.readline()  # loaded: its peak is behind it
        lifetime_peak = server.memory("VmHWM", child.pid)
        baseline = server.reset_peak(child.pid)
        child.stdin.write("\n")
        child.stdin.flush()
        child.stdout.readline()  # grown
        assert server.memory("VmHWM", child.pid) - lifetime_peak < 20_000_000  # the old reading: no growth
        grown = server.growth(child.pid, baseline)
        assert 190_000_000 < grown["rss_growth_bytes"] < 230_000_000, grown
        assert server.mib(grown).startswith(f"+{grown['rss_growth_bytes'] / 2**20:.0f} MiB (peak ")
    finally:
        child.kill()
        child.wait()


def test_the_attention_peers_that_cannot_run_here_say_why():
    """On a CPU: FlexAttention runs; PyTorch's varlen attention and flash-attn are FlashAttention kernels (CUDA only),
    and flash-attn is not a test dependency."""
    import kernels_attention

    q, k, v = (torch.randn(10, h, 16) for h in (4, 2, 2))
    calls, missing = kernels_attention.peers(q, k, v, torch.tensor([0, 3, 10], dtype=torch.int32), [3, 7], 0.25)
    assert list(calls) == ["FlexAttention, document mask"]
    no_module = f"torch {torch.__version__} has no torch.nn.attention.varlen"
    assert missing["PyTorch varlen_attn"] in ("CUDA only: a FlashAttention kernel", no_module)
    assert missing["flash-attn varlen"] in ("not installed: pip install flash-attn", "CUDA only")


def test_the_strongest_peer_is_the_fastest_one_timed():
    import kernels_attention

    run = {
        "peers": ["per-sequence SDPA", "padded SDPA", "FlexAttention, document mask", "flash-attn varlen"],
        "chosen_config": {"base": {}, "tma": "RuntimeError: ..."},
        "tflops": {"base": 9.0, "per-sequence SDPA": 2.0, "padded SDPA": 5.0, "FlexAttention, document mask": 4.0},
    }
    assert kernels_attention.strongest_peer(run) == "padded SDPA"  # flash-attn failed: not timed
    assert kernels_attention.variants_timed(run) == ["base"]


@pytest.mark.slow
def test_a_long_context_case_measures_each_system_in_its_own_process(build_checkpoint):
    """Each case in a fresh process: its memory above the loaded model, a sample after every layer, and a vector that
    agrees with ours; transformers' KV cache shows as growth per layer, ours leaves nothing behind."""
    import long_context
    from transformers import AutoTokenizer

    folder, hf = build_checkpoint("gqa2")
    text = "The capital of China is Beijing. " * 20
    tokens = len(AutoTokenizer.from_pretrained(folder)(text)["input_ids"])
    results = {}
    for system in long_context.SYSTEMS:
        case = {"system": system, "dtype": "float32", "tokens": tokens, "folder": str(folder), "text": text}
        results[system] = r = long_context.spawn(case)
        assert "error" not in r, r
        assert len(r["after_each_layer_bytes"]) == hf.config.num_hidden_layers and r["activation_peak_bytes"] >= 0
    for system in long_context.SYSTEMS[1:]:
        assert long_context.cosine(results[system]["vector"], results["qwen3-embed"]["vector"]) > 0.99999
    long = {"system": "qwen3-embed", "dtype": "float32", "tokens": 64, "folder": str(folder)}
    long["text"] = "gravity " * 30_000
    assert "error" not in long_context.spawn(long)  # 240 KB: a case too long for a command-line argument still runs
    assert long_context.estimate("transformers eager", 32768, torch.float32, 16) > 64 * 2**30  # skipped on 23 GiB
    row = long_context.row({"tokens": 32768, "dtype": "float32", "system": "transformers eager"},
                           {"skipped": "skipped: needs about 96 GiB, 20 GiB available"}, None, 4)  # fmt: skip
    assert "skipped: needs about 96 GiB" in row


def test_the_limits_benchmark_gathers_the_figure_a_limit_test_asserts(tmp_path):
    """benchmarks/limits.py reads what tests/test_server_limits.py records beside each bound from its JUnit XML."""
    import limits

    report = tmp_path / "report.xml"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
                           "tests/test_server_limits.py::test_a_dead_worker_answers_503_at_once"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:]
    [figure] = limits.figures(report)
    assert figure["test"] == "test_a_dead_worker_answers_503_at_once" and figure["unit"] == "s"
    assert figure["what"] == "a request after the model's thread died: seconds to its 503"
    assert 0 < figure["measured"] < figure["bound"] == 1
    assert limits.row(figure).startswith(f"| {figure['what']} | {figure['measured']:.2f} s | under 1 s |")
