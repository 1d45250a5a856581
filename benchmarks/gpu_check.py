"""The one GPU run, sized to finish within its own time budget (default 300 s, install excluded) on an H100:

    python benchmarks/gpu_check.py OUT              # the GPU run (the README's GPU section has the one line to paste)
    python benchmarks/gpu_check.py OUT --smoke      # CPU, tiny shapes, Triton's interpreter: a plumbing check
    python benchmarks/gpu_check.py OUT --plan       # the sections, their sizes and the time budget, without running
    python benchmarks/gpu_check.py OUT --measure-compiles   # time the run's Triton compiles on this CPU, cold cache

Sections, each written to OUT/gpu-<card>.{json,md} as soon as it is done (a run cut short keeps what it finished):
environment (device, torch, triton); kernel checks in bf16 at real sizes against float32 (the attention kernel and
each experimental variant, and torch.library.opcheck of the custom ops); attention (each variant and the config
autotune chose, against each peer: SDPA's flash backend per sequence and padded, PyTorch's varlen attention,
FlexAttention with a document mask, flash-attn where installed); the attention backward (dQ, dK, dV against SDPA
flash's backward per sequence, FlashAttention-2's); RMSNorm against copy bandwidth; end to end
on the 0.6B shape (qwen3-embed eager, qwen3-embed replayed from CUDA graphs, sentence-transformers) and the 8B shape
at --layers-8b layers (qwen3-embed, sentence-transformers), each system loaded once per shape, memory freed and peak
statistics reset between systems, every system's vectors compared with ours on the CPU; the issue's targets, met or
missed. A section whose estimate (`--plan`) would take the run past --budget-s is skipped with a note instead of
cutting the run off. Random weights of the real shapes (the 8B checkpoint is built once, on the GPU), nothing from
the network. Model FLOP utilisation is model FLOPs (2 x non-embedding parameters per token, plus causal attention)
per second over the measured bf16 matmul peak.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import platform
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from throughput import timed

from common import (
    RESULTS,
    ROOT,
    SHARED_TOKENIZER,
    log_uniform_lengths,
    machine,
    markdown_table,
    matmul_gflops,
    model_flops,
    parameters,
    texts_of_token_lengths,
    write_checkpoint,
)
from qwen3_embed import Qwen3Config

# name -> (texts, fewest tokens, most tokens); the 8B shape runs the long documents only (its target is their MFU)
CORPORA = {"mixed 8-2048": (256, 8, 2048), "long ~8k": (8, 7800, 8192)}
SMOKE_CORPORA = {"mixed 8-2048": (6, 4, 40), "long ~8k": (2, 60, 80)}
SHAPE_CORPORA = {"0.6B": ("mixed 8-2048", "long ~8k"), "8B": ("long ~8k",)}
TARGETS = {  # the targets on an H100 (benchmarks, not tests)
    "attention, 2 x 8k tokens, bf16, d=128: TFLOP/s": 300,
    "attention, mixed packs: speed-up over the strongest peer": 1.5,
    "RMSNorm: fraction of copy bandwidth": 0.8,
    "end to end 0.6B, mixed: speed-up over sentence-transformers": 2.0,
    "end to end 0.6B, mixed: tokens/s": 150_000,
    "8B, long documents: MFU": 0.5,
}
BUDGET_S = 300  # the run's own limit (a device call may take 600 s; this leaves room for a rerun)
COMPILES = RESULTS / "gpu-check-compiles-cpu.json"  # `--measure-compiles`: the run's Triton compiles, timed on a CPU
# The time budget by design (seconds, H100): what each piece of work is assumed to cost. `plan` adds them up, with
# the compile seconds measured by --measure-compiles where that file exists.
ASSUMED = {
    "startup (imports, CUDA init)": 15,
    "seconds per Triton compile, when not measured": 5,
    "seconds per timed case (do_bench: 25 ms warm-up, 100 ms of repeats, the first call)": 0.4,
    "seconds per FlexAttention compile (one per attention case)": 15,
    "checkpoint write GB/s": 1.0,
    "checkpoint read GB/s (per system load)": 1.5,
    "qwen3-embed TFLOP/s (pessimistic)": 150,
    "seconds of CUDA graph captures per shape": 10,
    "sentence-transformers TFLOP/s (pessimistic; padding included)": 60,
}


def exact_attention(q, k, v, cu_seqlens, scale):
    """Causal GQA attention in float32, memory-linear on CUDA (the key and value heads are repeated: SDPA's
    memory-efficient kernel, the one that takes float32, takes no GQA)."""
    group = q.shape[1] // k.shape[1]
    out = torch.empty_like(q, dtype=torch.float32)
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        qs, ks, vs = (t[start:end].float().transpose(0, 1)[None] for t in (q, k, v))
        ks, vs = ks.repeat_interleave(group, 1), vs.repeat_interleave(group, 1)
        o = torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale)
        out[start:end] = o[0].transpose(0, 1)
    return out


def kernel_packs(smoke: bool) -> dict[str, list[int]]:
    if smoke:
        return {"mixed": [5, 17, 40], "long": [200]}
    return {"mixed 32-2048": log_uniform_lengths(48, 32, 2048, seed=2), "long 8k": [8192], "long 32k": [32768]}


def check_kernels(device: str, dtype: torch.dtype, smoke: bool) -> list[dict]:
    """Each kernel in `dtype` at real sizes: its error against a float32 computation must be at most twice the
    error of the PyTorch reference in the same dtype, plus a small floor. Every attention variant the device runs."""
    from qwen3_embed import ops
    from qwen3_embed.kernels import attention, rmsnorm
    from qwen3_embed.kernels.experimental import attention as experimental
    from qwen3_embed.model import RMSNorm, apply_rotary

    g = torch.Generator(device=device).manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, device=device, generator=g)

    def norm(x, w):  # the model's RMSNorm with weight w
        return torch.func.functional_call(RMSNorm(w.shape[0], 1e-6), {"weight": w}, (x,))

    def norm_rope(q, k, qw, kw, cos, sin):  # the model's Attention.norm_and_rotate
        return apply_rotary(norm(q, qw), cos, sin), apply_rotary(norm(k, kw), cos, sin)

    checks = []

    def record(name, kernel, reference, exact, floor):
        kernel_error = (kernel.float() - exact).abs().max().item()
        torch_error = (reference.float() - exact).abs().max().item()
        ok = kernel_error <= 2 * torch_error + floor
        checks.append({"check": name, "kernel_error": kernel_error, "torch_error": torch_error, "ok": ok})
        print(f"  {'ok  ' if ok else 'FAIL'} {name}: kernel {kernel_error:.3g}, torch {torch_error:.3g}", flush=True)

    tokens = 64 if smoke else 16384
    for width in (64,) if smoke else (1024, 2560, 4096):
        x, w = (rand(tokens, width) * 3).to(dtype), (torch.rand(width, device=device, generator=g) + 0.5).to(dtype)
        record(f"rms_norm {tokens}x{width}", rmsnorm.rms_norm(x, w, 1e-6), norm(x, w), norm(x.float(), w.float()),
               1e-2)  # fmt: skip
    d, hq, hkv = (16, 4, 2) if smoke else (128, 32, 8)
    q, k = rand(tokens, hq, d).to(dtype), rand(tokens, hkv, d).to(dtype)
    qw, kw = ((torch.rand(d, device=device, generator=g) + 0.5).to(dtype) for _ in range(2))
    angles = torch.arange(tokens, device=device).float()[:, None] * rand(1, d // 2).abs()
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    exact = norm_rope(*(a.float() for a in (q, k, qw, kw, cos, sin)))
    kernel = rmsnorm.qk_norm_rope(q, k, qw, kw, 1e-6, cos, sin)
    reference = norm_rope(q, k, qw, kw, cos, sin)
    for i, name in enumerate("qk"):
        record(f"q/k norm + rope ({name}) {tokens}x{(q, k)[i].shape[1]}x{d}", kernel[i], reference[i], exact[i], 1e-2)
    d = 16 if smoke else 128
    capability = attention.capability_of(torch.device(device))
    for name, lengths in kernel_packs(smoke).items():
        for hq, hkv in ((4, 2),) if smoke else ((16, 8), (32, 8)):
            q, k, v = (rand(sum(lengths), h, d).to(dtype) for h in (hq, hkv, hkv))
            cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
            exact = exact_attention(q, k, v, cu, d**-0.5)
            reference = ops.varlen_attention(q, k, v, cu.tolist(), d**-0.5)
            record(f"attention {name} Hq/Hkv {hq}/{hkv} base", attention.varlen_attention(q, k, v, cu, d**-0.5),
                   reference, exact, 2e-2)  # fmt: skip
            for variant in experimental.variants(capability, d, dtype):
                check = f"attention {name} Hq/Hkv {hq}/{hkv} {variant}"
                try:
                    out = experimental.varlen_attention(q, k, v, cu, d**-0.5, variant)
                except Exception as e:  # noqa: BLE001 - a variant that fails here is a result; the checks go on
                    checks.append({"check": check, "ok": False, "detail": f"{type(e).__name__}: {str(e)[:300]}"})
                    print(f"  FAIL {check}: {checks[-1]['detail']}", flush=True)
                    continue
                record(check, out, reference, exact, 2e-2)
    checks += opchecks(device, dtype, smoke, rand)
    return checks


def opchecks(device: str, dtype: torch.dtype, smoke: bool, rand) -> list[dict]:
    """torch.library.opcheck of each custom op: registration, and on a GPU the fake-tensor and AOT-dispatch checks
    (the interpreter cannot run those: it reads the fake tensors' data)."""
    from qwen3_embed.kernels import attention

    x, w = rand(8, 64).to(dtype), rand(64).to(dtype)
    q, k, v = (rand(40, h, 64).to(dtype) for h in (4, 2, 2))
    cos, sin = rand(40, 32).to(dtype), rand(40, 32).to(dtype)
    cu = torch.tensor([0, 15, 40], dtype=torch.int32, device=device)
    work = attention.work_table(cu, 40, attention.tokens_per_block(64, 2, dtype, attention.capability_of(q.device)))
    utils = ("test_schema", "test_autograd_registration") if smoke else None
    results = []
    for op, args in ((torch.ops.qwen3_embed.rms_norm.default, (x, w, 1e-6)),
                     (torch.ops.qwen3_embed.qk_norm_rope.default, (q, k, w, w, 1e-6, cos, sin)),
                     (torch.ops.qwen3_embed.varlen_attention.default, (q, k, v, work, 0.125))):  # fmt: skip
        try:
            result = torch.library.opcheck(op, args, **({"test_utils": utils} if utils else {}))
            ok, detail = all(r == "SUCCESS" for r in result.values()), result
        except Exception as e:  # noqa: BLE001 - a failed check is a result
            ok, detail = False, f"{type(e).__name__}: {str(e)[:500]}"
        results.append({"check": f"opcheck {op}", "ok": ok, "detail": detail})
        print(f"  {'ok  ' if ok else 'FAIL'} opcheck {op}: {detail}", flush=True)
    return results


def free(device: str) -> None:
    """Release what the last system held, so the next one's peak memory is its own."""
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


EAGER_SYSTEMS = ("qwen3-embed", "sentence-transformers")
GRAPHS_SYSTEMS = ("qwen3-embed, CUDA graphs",)  # a section of its own, last: a failed capture can spoil the device


def systems(device: str, names: tuple[str, ...]):
    """(name, load(folder, dtype) -> encode(texts) -> vectors) of each named system, loaded once per shape."""
    from qwen3_embed import Embedder
    from qwen3_embed.backends import compiled

    def ours(folder, dtype):
        embedder = Embedder.from_pretrained(folder, device=device, dtype=dtype)
        return embedder.encode

    def ours_graphs(folder, dtype):
        embedder = Embedder.from_pretrained(folder, device=device, dtype=dtype)
        compiled.use_cuda_graphs(embedder.model)
        return embedder.encode

    def sentence_transformers(folder, dtype):
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(folder), device=device, model_kwargs={"dtype": dtype}).to(dtype)  # any version
        # tensors on the GPU there, numpy arrays in a smoke run: either way another kind of output than ours (CPU
        # tensors), which `on_host` brings to one device for the comparison
        return lambda texts: model.encode(texts, convert_to_tensor=device == "cuda")

    every = {"qwen3-embed": ours, "sentence-transformers": sentence_transformers, GRAPHS_SYSTEMS[0]: ours_graphs}
    yield from ((name, every[name]) for name in names)


def end_to_end(args, shape_name: str, config: Qwen3Config, tokenizer_dir: Path, device: str, dtype, peak: float,
               report, names: tuple[str, ...] = EAGER_SYSTEMS) -> None:  # fmt: skip
    """The named systems on each corpus of one shape: each system loaded once, warmed up (qwen3-embed on the whole
    corpus, so compiles, autotuning and graph captures stay out of the timing), then timed, its peak memory its own
    on each corpus; every system's vectors compared with the first one's of the shape (qwen3-embed eager's)."""
    from qwen3_embed.tokenize import Tokenizer

    folder = write_checkpoint(args.checkpoints / f"gpu-{shape_name}-{config.num_hidden_layers}", config, tokenizer_dir,
                              device=device)  # fmt: skip
    corpora = {}
    for corpus in SHAPE_CORPORA[shape_name]:
        count, low, high = (SMOKE_CORPORA if args.smoke else CORPORA)[corpus]
        texts = texts_of_token_lengths(tokenizer_dir, log_uniform_lengths(count, low, high, seed=3))
        lengths = [len(i) for i in Tokenizer(folder / "tokenizer.json", config.vocab_size).encode(texts, 8192)]
        corpora[corpus] = texts, lengths
    for system, load in systems(device, names):
        free(device)
        try:
            encode = load(folder, dtype)
            for corpus, (texts, lengths) in corpora.items():
                free(device)  # this corpus's peak, not the last one's
                encode(texts if device == "cuda" and system.startswith("qwen3-embed") else texts[:2])  # warm-up
                vectors, seconds = timed(functools.partial(encode, texts), device)
                memory = torch.cuda.max_memory_allocated() if device == "cuda" else 0
                vectors = on_host(vectors)
                ours = report.vectors.setdefault((shape_name, corpus), vectors)
                cosine = torch.nn.functional.cosine_similarity(vectors, ours, dim=-1).min()
                tokens, flops = sum(lengths), model_flops(config, lengths)
                run = {"shape": shape_name, "layers": config.num_hidden_layers, "corpus": corpus, "system": system,
                       "texts": len(texts), "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
                       "mfu": flops / seconds / 1e9 / peak, "peak_memory_gib": memory / 2**30,
                       "min_cosine_vs_qwen3_embed": cosine.item()}  # fmt: skip
                report.add_run(run)
        except Exception:  # noqa: BLE001 - one system failing must not cost the others' figures
            report.fail(f"end to end {shape_name} {system}", traceback.format_exc())
        encode = None
    free(device)
    report.add("autotune", autotune_choices())


def on_host(vectors) -> torch.Tensor:
    """A system's vectors (a tensor on any device and of any dtype, a numpy array, a list of rows) as a float32 CPU
    tensor, so that every system is compared with ours on one device, whatever each returns."""
    if not isinstance(vectors, torch.Tensor):
        vectors = torch.as_tensor(np.asarray(vectors))
    return vectors.detach().to("cpu", torch.float32)


def autotune_choices() -> list[dict]:
    from qwen3_embed.kernels import attention

    return attention.autotune_choices()


def environment(device: str) -> dict:
    import triton

    info = {**machine(), "triton": triton.__version__, "python": platform.python_version(),
            "cuda": torch.version.cuda}  # fmt: skip
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, capability=list(torch.cuda.get_device_capability()),
                    sms=props.multi_processor_count, memory_gib=props.total_memory / 2**30)  # fmt: skip
    return info


class Report:
    """The run's results, rewritten to OUT/<name>.json and .md (atomically) each time a section adds to them."""

    def __init__(self, folder: Path, name: str, smoke: bool):
        self.json, self.md = folder / f"{name}.json", folder / f"{name}.md"
        self.smoke = smoke
        self.data: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "sections": {}, "end_to_end": []}
        self.tables: dict[str, str] = {}
        self.vectors: dict[tuple[str, str], torch.Tensor] = {}  # (shape, corpus) -> the first system's, for cosines
        self.start = time.perf_counter()
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, section: str, data, table: str | None = None) -> None:
        self.data["sections"][section] = data
        self.data["elapsed_s"] = time.perf_counter() - self.start
        self.data.setdefault("finished_at_s", {})[section] = round(self.data["elapsed_s"], 1)
        if table is not None:
            self.tables[section] = table
        self.write()

    def fail(self, what: str, error: str) -> None:
        """Record a failure and go on: the run's time is too scarce to stop at the first one."""
        print(f"  FAILED {what}:\n{error}", flush=True)
        self.data.setdefault("failures", {})[what] = error
        self.tables["failures"] = markdown_table(
            "Failures (tracebacks in the JSON)", ["what", "error"],
            [f"| {w} | {e.strip().splitlines()[-1][:300]} |" for w, e in self.data["failures"].items()])  # fmt: skip
        self.write()

    def skip(self, what: str, why: str) -> None:
        """Record a section left out to keep the run within its budget."""
        print(f"  SKIPPED {what}: {why}", flush=True)
        self.data.setdefault("skipped", {})[what] = why
        self.tables["skipped"] = markdown_table(
            "Skipped to stay within the budget",
            ["section", "why"],
            [f"| {w} | {y} |" for w, y in self.data["skipped"].items()],
        )
        self.write()

    def add_run(self, run: dict) -> None:
        self.data["end_to_end"].append(run)
        print(f"  {run['shape']} {run['corpus']} {run['system']}: {run['tokens_per_s']:.0f} tokens/s, "
              f"MFU {run['mfu']:.0%}, {run['peak_memory_gib']:.1f} GiB", flush=True)  # fmt: skip
        rows = []
        for r in self.data["end_to_end"]:
            base = next(x for x in self.data["end_to_end"] if x["shape"] == r["shape"] and x["corpus"] == r["corpus"])
            rows.append(f"| {r['shape']}, {r['layers']} layers | {r['corpus']} ({r['tokens']} tokens) | {r['system']} |"
                        f" "
                        f"{r['tokens_per_s']:.0f} | {r['seconds'] / base['seconds']:.2f}x | {r['mfu']:.0%} | "
                        f"{r['peak_memory_gib']:.1f} | {r['min_cosine_vs_qwen3_embed']:.5f} |")  # fmt: skip
        self.tables["end to end"] = markdown_table(
            "End to end (time relative to qwen3-embed eager; MFU over the measured bf16 matmul peak)",
            ["shape", "corpus", "system", "tokens/s", "time vs qwen3-embed", "MFU", "peak GiB", "min cosine vs ours"],
            rows,
        )
        self.add("end to end", self.data["end_to_end"])

    def write(self) -> None:
        env = self.data["sections"].get("environment", {})
        title = (f"# GPU check on {env.get('gpu', env.get('cpu', '?'))}: torch {env.get('torch')}, triton "
                 f"{env.get('triton')}" + (" [smoke run: CPU, interpreter, tiny shapes; timings meaningless]"
                 if self.smoke else "") + f"\n\nElapsed {self.data['elapsed_s']:.0f} s.")  # fmt: skip
        for path, text in ((self.json, json.dumps(self.data, indent=1, default=str) + "\n"),
                           (self.md, "\n\n".join([title, *self.tables.values()]) + "\n")):  # fmt: skip
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, path)


def targets(report: Report) -> tuple[list[dict], str]:
    """The issue's targets against what this run measured."""
    import kernels_attention

    sections = report.data["sections"]
    attention = sections.get("attention", {}).get("runs", [])
    variants = kernels_attention.variants_timed
    measured = {}
    attention = [r for r in attention if variants(r)]  # a run whose variants all failed measured nothing
    long = [max(r["tflops"][v] for v in variants(r)) for r in attention if r["case"].startswith("long 2 x 8k")]
    if long:
        measured["attention, 2 x 8k tokens, bf16, d=128: TFLOP/s"] = max(long)
    mixed = [max(r["tflops"][v] for v in variants(r)) / r["tflops"][kernels_attention.strongest_peer(r)]
             for r in attention if r["case"].startswith("mixed")]  # fmt: skip
    if mixed:
        measured["attention, mixed packs: speed-up over the strongest peer"] = min(mixed)
    rmsnorm = sections.get("rmsnorm", {})
    if rmsnorm.get("runs"):
        # the cases long enough (200 us) that a call's host time cannot hide in them, else the largest ones
        long = [r for r in rmsnorm["runs"] if r["bytes"] / (r["kernel_gbps"] * 1e9) >= 2e-4]
        long = long or [r for r in rmsnorm["runs"] if r["tokens"] == max(x["tokens"] for x in rmsnorm["runs"])]
        measured["RMSNorm: fraction of copy bandwidth"] = min(r["kernel_gbps"] for r in long) / rmsnorm["copy_gbps"]
    runs = report.data["end_to_end"]
    pick = lambda shape, corpus, system: next((r for r in runs if r["shape"] == shape and r["corpus"] == corpus  # noqa: E731
                                               and r["system"] == system), None)  # fmt: skip
    ours, st = pick("0.6B", "mixed 8-2048", "qwen3-embed"), pick("0.6B", "mixed 8-2048", "sentence-transformers")
    if ours and st:
        measured["end to end 0.6B, mixed: speed-up over sentence-transformers"] = st["seconds"] / ours["seconds"]
    if ours:
        measured["end to end 0.6B, mixed: tokens/s"] = ours["tokens_per_s"]
    big = pick("8B", "long ~8k", "qwen3-embed")
    if big:
        measured["8B, long documents: MFU"] = big["mfu"]
    results, rows = [], []
    for name, goal in TARGETS.items():
        value = measured.get(name)
        results.append(
            {"target": name, "goal": goal, "measured": value, "met": None if value is None else value >= goal}
        )
        verdict = "not measured" if value is None else f"{value:.3g}: " + ("met" if value >= goal else "MISSED")
        rows.append(f"| {name} | {goal:g} | {verdict} |")
    return results, markdown_table("The issue's targets (H100)", ["target", "goal", "measured"], rows)


def run_launches() -> list:
    """The Triton binaries the run compiles on an H100 (sm_90, bf16): attention at head dims 128 (the checks and
    timings: each config autotune tries, for the default and each experimental variant) and 64 (the opcheck), the
    attention backward at head dim 128 (the forward that saves the log-sum-exp, the dK/dV, dQ and D kernels), the
    RMSNorm widths of the 0.6B and 8B shapes and of the opcheck, the q/k norm at head dims 128 and 64."""
    from qwen3_embed.kernels import aot

    attention = [launch for launch in aot.attention_launches(90) if launch.labels["dtype"] == "bf16"
                 and launch.labels["head_dim"] in (64, 128) and (launch.labels["head_dim"] == 128
                                                                 or launch.labels["variant"] == "base")]  # fmt: skip
    backward = [launch for launch in aot.attention_backward_launches(90)
                if launch.labels["dtype"] == "bf16" and launch.labels["head_dim"] == 128]  # fmt: skip
    norms = [launch for launch in aot.rmsnorm_launches(90) if launch.labels["dtype"] == "bf16"
             and launch.labels.get("BLOCK", 0) != 2560 and launch.labels.get("head_dim", 64) in (64, 128)]  # fmt: skip
    return attention + backward + list({repr(sorted(n.constexprs.items())) + n.kernel: n for n in norms}.values())


def measure_compiles(out: Path) -> dict:
    """Compile every binary of `run_launches` for sm_90 on this CPU, one at a time, with an empty Triton cache (what
    the GPU run pays before its first timings), and write the seconds to `out`."""
    import tempfile

    from qwen3_embed.kernels import aot

    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="triton-cold-")
    rows = []
    for launch in run_launches():
        start = time.perf_counter()
        report = aot.compile_launch(launch, 90)
        rows.append({**launch.labels, "seconds": round(time.perf_counter() - start, 2), "error": report.get("error")})
        print(f"  {rows[-1]}", flush=True)
    from importlib.metadata import version

    result = {"machine": machine(), "triton": version("triton"), "arch": 90, "binaries": len(rows),
              "total_s": round(sum(r["seconds"] for r in rows), 1), "compiles": rows}  # fmt: skip
    out.write_text(json.dumps(result, indent=1) + "\n")
    return result


def compile_seconds() -> tuple[float, str]:
    """The seconds the run's compiles take, and where the figure comes from."""
    if COMPILES.exists():
        measured = json.loads(COMPILES.read_text())
        return measured["total_s"], f"measured ({measured['binaries']} binaries on {measured['machine']['cpu']})"
    count = len(run_launches())
    return count * ASSUMED["seconds per Triton compile, when not measured"], f"assumed ({count} binaries)"


def plan(args) -> dict:
    """What the run does with these arguments, and its time budget by design (ASSUMED costs, H100; the compiles as
    measured on a CPU)."""
    sys.path.insert(0, str(Path(__file__).parent))
    import kernels_attention
    import kernels_rmsnorm

    sections, seconds = [], {"startup": ASSUMED["startup (imports, CUDA init)"]}
    case_s = ASSUMED["seconds per timed case (do_bench: 25 ms warm-up, 100 ms of repeats, the first call)"]
    compiles, source = compile_seconds()
    packs = kernel_packs(args.smoke)
    checks = 4 + 2 * len(packs) * 3 + 3  # norms, q/k; attention packs x head layouts x variants; opchecks
    sections.append({"section": "kernel checks", "checks": checks, "tokens": sum(map(sum, packs.values())),
                     "compile_s": compiles, "compile_s_from": source})  # fmt: skip
    # every compile happens here; then the attention runs, of which the float32 exact one dominates
    seconds["kernel checks"] = compiles + 2 * len(packs) * 2
    attention_cases = list(kernels_attention.cases(args.smoke))
    sections.append({"section": "attention", "cases": len(attention_cases), "variants": 3, "peers": 5,
                     "tokens": [sum(c[1]) for c in attention_cases]})  # fmt: skip
    flex_compiles = len(attention_cases) * ASSUMED["seconds per FlexAttention compile (one per attention case)"]
    seconds["attention"] = len(attention_cases) * (3 + 5) * case_s + 6 * 0.3 + flex_compiles  # + autotune per bucket
    backward_cases = list(kernels_attention.backward_cases(args.smoke))
    sections.append({"section": "attention backward", "cases": len(backward_cases),
                     "tokens": [sum(c[1]) for c in backward_cases]})  # fmt: skip
    seconds["attention backward"] = len(backward_cases) * (2 * case_s + 1)  # kernel and SDPA; the forwards, a check
    rms_cases = list(kernels_rmsnorm.cases(args.smoke))
    sections.append({"section": "rmsnorm", "cases": len(rms_cases)})
    seconds["rmsnorm"] = len(rms_cases) * 2 * case_s + 2  # kernel and torch per case; the copy bandwidth
    seconds["matmul peak"] = 2
    for name, shape, layers, names, writes in (
        ("end to end 0.6B", "0.6B", None, EAGER_SYSTEMS, True),
        ("end to end 8B", "8B", args.layers_8b, EAGER_SYSTEMS, True),
        ("end to end 0.6B, CUDA graphs", "0.6B", None, GRAPHS_SYSTEMS, False),
    ):
        section, seconds[name] = end_to_end_plan(args, name, shape, layers, names, writes)
        sections.append(section)  # fmt: skip
    return {"sections": sections, "assumed": ASSUMED, "estimated_seconds": {k: round(v, 1) for k, v in seconds.items()},
            "estimated_total_s": round(sum(seconds.values()), 1), "budget_s": args.budget_s}  # fmt: skip


def end_to_end_plan(args, name: str, shape: str, layers: int | None, names: tuple[str, ...], writes: bool):
    """An end-to-end section: its sizes, and its seconds by design (the checkpoint written by the shape's first)."""
    config = Qwen3Config.preset(shape)
    config = replace(config, num_hidden_layers=layers) if layers else config
    corpora = SMOKE_CORPORA if args.smoke else CORPORA
    lengths = {c: log_uniform_lengths(*corpora[c], seed=3) for c in SHAPE_CORPORA[shape]}
    tflop = sum(model_flops(config, v) for v in lengths.values()) / 1e12
    gb = 2 * parameters(config) / 1e9  # bf16
    section = {"section": name, "layers": config.num_hidden_layers, "systems": list(names),
               "checkpoint_gb": round(gb, 2) if writes else 0, "tokens": {c: sum(v) for c, v in lengths.items()},
               "model_tflop": round(tflop, 1)}  # fmt: skip
    ours = 2 * tflop / ASSUMED["qwen3-embed TFLOP/s (pessimistic)"]  # warm-up and timed, on the whole corpus
    timed = {
        "qwen3-embed": ours,
        "sentence-transformers": tflop / ASSUMED["sentence-transformers TFLOP/s (pessimistic; padding included)"],
        GRAPHS_SYSTEMS[0]: ours + ASSUMED["seconds of CUDA graph captures per shape"],
    }
    load = gb / ASSUMED["checkpoint read GB/s (per system load)"] + 3
    write = gb / ASSUMED["checkpoint write GB/s"] + 10 if writes else 0  # + random init, tokenizing
    return section, write + sum(load + timed[n] for n in names)


def interpreter_problem() -> str | None:
    """Why Triton's interpreter cannot run the kernels here, if it cannot: before Triton 3.9 it calls int() on
    one-element arrays, which numpy 2.4 refuses. Read from the installed versions: importing triton before
    TRITON_INTERPRET is set would leave its language functions compiled-only."""
    from importlib.metadata import version

    triton = version("triton")
    old_triton = tuple(int(x) for x in triton.split(".")[:2]) < (3, 9)
    new_numpy = tuple(int(x) for x in np.__version__.split(".")[:2]) >= (2, 4)
    if old_triton and new_numpy:
        return (f"Triton's interpreter needs Triton >= 3.9 with numpy {np.__version__} (installed: triton {triton}): "
                "pip install 'triton>=3.9', or 'numpy<2.4'")  # fmt: skip
    return None


def positive(kind):
    """An argparse type: a finite number of `kind` above 0."""

    def parse(text: str):
        value = kind(text)
        if not 0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"{text} is not a positive finite number")
        return value

    return parse


def arguments() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="folder for gpu-<card>.json and .md")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, Triton's interpreter: a plumbing check")
    p.add_argument("--plan", action="store_true", help="print the sections, their sizes and the time budget; run none")
    p.add_argument(
        "--measure-compiles",
        action="store_true",
        help=f"time the run's Triton compiles on this CPU with a cold cache, into {COMPILES.name}",
    )
    p.add_argument("--tokenizer", type=Path, default=SHARED_TOKENIZER, help="folder with the real Qwen3 tokenizer")
    p.add_argument("--layers-8b", type=positive(int), default=8, help="layers of the 8B shape (36 in the real model)")
    p.add_argument(
        "--checkpoints",
        type=Path,
        default=ROOT / "local",
        help="where to write the checkpoints (and, for --smoke without the real one, a tokenizer)",
    )
    p.add_argument(
        "--budget-s",
        type=positive(float),
        default=BUDGET_S,
        help="skip, with a note, a section whose estimate would take the run past this many seconds",
    )
    return p.parse_args()  # fmt: skip


def tokenizer_for(args) -> tuple[Path, bool]:
    """The tokenizer folder the run uses and whether it is the real one (a smoke run makes a small one without)."""
    if (args.tokenizer / "tokenizer.json").exists():
        return args.tokenizer, True
    if not args.smoke:
        sys.exit(f"no Qwen3 tokenizer.json in {args.tokenizer}: copy it into the checkout (mkdir -p local && cp -r "
                 "../shared/qwen3-tokenizer local/), carry local/qwen3-tokenizer to the GPU machine, or pass "
                 "--tokenizer DIR")  # fmt: skip
    sys.path.insert(0, str(ROOT / "tests"))
    from checkpoints import make_tokenizer

    folder = args.checkpoints / "smoke-tokenizer"
    make_tokenizer(folder, vocab_size=500)
    return folder, False


def main() -> None:
    args = arguments()
    if args.plan:
        print(json.dumps(plan(args), indent=1))
        return
    if args.measure_compiles:
        print(json.dumps(measure_compiles(COMPILES), indent=1))
        return
    tokenizer_dir, real_tokenizer = tokenizer_for(args)
    if args.smoke:
        if problem := interpreter_problem():
            sys.exit(problem)
        os.environ["TRITON_INTERPRET"] = "1"
        os.environ["QWEN3_EMBED_BACKEND"] = "triton"  # our side runs the kernels, through the interpreter
        device, dtype = "cpu", torch.float16
    elif torch.cuda.is_available():
        device, dtype = "cuda", torch.bfloat16
    else:
        sys.exit("no CUDA device: run with --smoke for a CPU plumbing check, or on a GPU")
    estimates = plan(args)["estimated_seconds"]
    card = torch.cuda.get_device_name().replace(" ", "_") if device == "cuda" else "smoke"
    report = Report(args.out, f"gpu-{card}", args.smoke)
    report.add("environment", environment(device))

    def section(name: str, run) -> None:
        elapsed, estimate = time.perf_counter() - report.start, estimates.get(name, 0)
        if elapsed + estimate > args.budget_s:
            report.skip(name, f"estimated {estimate:.0f} s after {elapsed:.0f} s would pass the {args.budget_s:.0f} s "
                              "budget (--budget-s)")  # fmt: skip
            return
        print(name, flush=True)
        try:
            run()
        except Exception:  # noqa: BLE001 - a failed section is a result; the next sections still run
            report.fail(name, traceback.format_exc())

    run_sections(args, device, dtype, tokenizer_dir, real_tokenizer, report, section)
    report.add("targets", *targets(report))
    print("\n" + report.md.read_text())
    if report.data.get("failures"):
        sys.exit(f"failed: {list(report.data['failures'])}")


def run_sections(args, device, dtype, tokenizer_dir, real_tokenizer, report, section) -> None:
    """Every section in order, each through `section` (which skips what the budget cannot hold)."""
    import kernels_attention
    import kernels_rmsnorm

    def kernel_checks():
        checks = check_kernels(device, dtype, args.smoke)
        failed = [c["check"] for c in checks if not c["ok"]]
        report.add("kernel checks", checks, markdown_table(
            f"Kernel checks ({dtype} against float32; opcheck of the custom ops): {len(checks) - len(failed)} of "
            f"{len(checks)} passed" + (f"; FAILED: {failed}" if failed else ""), ["check", "ok"],
            [f"| {c['check']} | {'ok' if c['ok'] else 'FAIL'} |" for c in checks]))  # fmt: skip
        if failed:
            report.fail("kernel checks", f"failed: {failed}")

    section("kernel checks", kernel_checks)
    benchmarks = (("attention", kernels_attention.benchmark),
                  ("attention backward", kernels_attention.backward_benchmark),
                  ("rmsnorm", kernels_rmsnorm.benchmark))  # fmt: skip
    for name, benchmark in benchmarks:
        section(name, lambda benchmark=benchmark, name=name: report.add(name, *benchmark(device, dtype, args.smoke)))
    peak = matmul_gflops(dtype, device, n=512 if args.smoke else 8192)
    report.add("matmul peak GFLOP/s", peak)
    for shape, layers in (("0.6B", None), ("8B", args.layers_8b)):
        config = Qwen3Config.preset(shape)
        if args.smoke:  # tiny layers; the real vocabulary when the real tokenizer is there (its ids reach 151k)
            vocab = config.vocab_size if real_tokenizer else 512
            config = replace(config, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, head_dim=16, vocab_size=vocab)  # fmt: skip
        elif layers:
            config = replace(config, num_hidden_layers=layers)
        section(f"end to end {shape}", functools.partial(end_to_end, args, shape, config, tokenizer_dir, device, dtype,
                                                         peak, report))  # fmt: skip
        if shape == "0.6B":
            graphs = functools.partial(end_to_end, args, shape, config, tokenizer_dir, device, dtype, peak, report,
                                       GRAPHS_SYSTEMS)  # fmt: skip
    if device == "cuda":  # last of all
        section("end to end 0.6B, CUDA graphs", graphs)


if __name__ == "__main__":
    main()
