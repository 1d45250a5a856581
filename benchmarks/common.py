"""Shared pieces of the benchmark scripts: the machine, a random-weight checkpoint of a real shape, texts of
given token lengths, FLOP counts and the matmul roofline."""

from __future__ import annotations

import json
import math
import os
import platform
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from qwen3_embed import Qwen3Config
from qwen3_embed.backends import cpu

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _tokenizer_dir() -> Path:
    """The real Qwen3 tokenizer's folder: $QWEN3_TOKENIZER_DIR, else local/qwen3-tokenizer in the checkout (git-ignored;
    where a GPU run carries it) when it is there, else ../shared/qwen3-tokenizer beside the checkout."""
    if "QWEN3_TOKENIZER_DIR" in os.environ:
        return Path(os.environ["QWEN3_TOKENIZER_DIR"])
    local = ROOT / "local" / "qwen3-tokenizer"
    return local if (local / "tokenizer.json").exists() else ROOT.parent / "shared" / "qwen3-tokenizer"


SHARED_TOKENIZER = _tokenizer_dir()


# CPU flags that decide the matmul rates the benchmarks reach, and how a results file names them.
CPU_FLAGS = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_bf16": "AVX-512 BF16", "amx_tile": "AMX"}


def cpu_description() -> str:
    """The CPU model, its family and model numbers and which of CPU_FLAGS it has (two VMs both named "AMD EPYC" can
    be a Zen 2 with AVX2 and a Zen 4 with AVX-512 BF16)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor is enough
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        return platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    have = [name for flag, name in CPU_FLAGS.items() if flag in flags]
    missing = "no AVX-512" if "avx512f" not in flags else "no AVX-512 BF16" if "avx512_bf16" not in flags else ""
    features = ", ".join(have + ([missing] if missing else []))
    family = f"family {fields.get('cpu family', '?')} model {fields.get('model', '?')}"
    return f"{fields.get('model name', platform.machine())} ({family}; {features})"


def machine() -> dict:
    """What the numbers were measured on, the CPU's float32 matmul peak (2048 x 2048, torch's threads) included."""
    info = {
        "cpu": cpu_description(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_float32_matmul_gflops": round(matmul_gflops(torch.float32, "cpu", n=2048, repeats=3), 1),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    try:
        import transformers

        info["transformers"] = transformers.__version__
        import sentence_transformers

        info["sentence_transformers"] = sentence_transformers.__version__
    except ImportError:
        pass
    return info


def describe(m: dict) -> str:
    """One line naming a results file's machine: the GPU where there is one, the CPU (with what is known of it), the
    threads, torch, and the CPU's float32 matmul peak where the file recorded it."""
    cpu = m["cpu"] + (f" ({m['described_as']})" if "described_as" in m else "")
    threads = m["torch_threads"]
    parts = [cpu, f"{threads} thread{'s' if threads != 1 else ''}", f"torch {m['torch']}"]
    if "cpu_float32_matmul_gflops" in m:
        parts.append(f"CPU float32 matmul peak {m['cpu_float32_matmul_gflops']:.0f} GFLOP/s")
    return ", ".join([m["gpu"], *parts] if "gpu" in m else parts)


def memory(key: str, pid: int | str = "self") -> int:
    """A process's /proc/PID/status memory figure in bytes (VmRSS: resident now; VmHWM: the peak since the process
    started, or since "5" was written to its /proc/PID/clear_refs, which resets it to VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))


def write_checkpoint(
    folder: Path, config: Qwen3Config, tokenizer_dir: Path, reranker: bool = False, device: str = "cpu"
) -> Path:
    """A random-weight checkpoint of `config`'s shape in bf16 (as the real repos), written by transformers with the
    real tokenizer: an embedding model with the sentence-transformers files, or a reranker (Qwen3ForCausalLM, tied
    as the 0.6B). Built by tests/checkpoints.py; reused when `folder` already holds it."""
    sys.path.insert(0, str(ROOT / "tests"))
    from checkpoints import make_checkpoint, make_reranker_checkpoint

    marker = folder / "benchmark-config.json"
    key = json.dumps({"config": asdict(config), "reranker": reranker, "tokenizer": str(tokenizer_dir)}, sort_keys=True)
    if marker.exists() and marker.read_text() == key:
        return folder
    shape = (config.vocab_size, config.hidden_size, config.num_hidden_layers, config.num_attention_heads,
             config.num_key_value_heads, config.head_dim, config.intermediate_size)  # fmt: skip
    if reranker:
        make_reranker_checkpoint(folder, shape, tied=config.tie_word_embeddings, dtype=torch.bfloat16,
                                 tokenizer=tokenizer_dir)  # fmt: skip
    else:
        make_checkpoint(folder, shape, dtype=torch.bfloat16, tokenizer=tokenizer_dir, device=device,
                        max_position_embeddings=config.max_position_embeddings)  # fmt: skip
    marker.write_text(key)
    return folder


def texts_of_token_lengths(tokenizer_dir: Path, lengths: list[int], seed: int = 0) -> list[str]:
    """Texts of words drawn from the tokenizer's vocabulary, each `length` tokens long once the EOS is appended."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    words = sorted(w[1:] for w in tok.get_vocab() if w.startswith("Ġ") and w[1:].isascii() and w[1:].isalpha())
    rng = random.Random(seed)
    texts = []
    for n in lengths:
        ids = tok.encode(" ".join(rng.choices(words, k=n + 8)), add_special_tokens=False).ids
        text = tok.decode(ids[: n - 1])
        texts.append(text)
    return texts


def log_uniform_lengths(n: int, low: int, high: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [round(math.exp(rng.uniform(math.log(low), math.log(high)))) for _ in range(n)]


def parameters(config: Qwen3Config, embeddings: bool = True) -> int:
    """The model's parameters (with the embedding table, and a separate output head when untied)."""
    h, d, layers = config.hidden_size, config.head_dim, config.num_hidden_layers
    q, kv, inter = config.num_attention_heads * d, config.num_key_value_heads * d, config.intermediate_size
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * inter + 2 * h + 2 * d
    tables = config.vocab_size * h * (1 if config.tie_word_embeddings else 2)
    return layers * per_layer + h + (tables if embeddings else 0)


def model_flops(config: Qwen3Config, lengths: list[int]) -> float:
    """2 x non-embedding parameters per token, plus causal attention (QK^T and PV over the lower triangle)."""
    d, layers = config.head_dim, config.num_hidden_layers
    attention = sum(layers * config.num_attention_heads * 2 * n * n * d for n in lengths)
    return 2 * parameters(config, embeddings=False) * sum(lengths) + attention


def matmul_gflops(dtype: torch.dtype, device: str = "cpu", n: int = 4096, repeats: int = 5) -> float:
    """GFLOP/s of a large square matmul: the machine's matmul roofline in this dtype. On a CPU, the better of torch.mm
    and oneDNN on a packed weight (what our projections run), which differ by 2x on some CPUs."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    calls = [lambda: a @ b]
    packed = cpu.PackedLinear(b)
    if packed.packed_weight.is_mkldnn:
        calls.append(lambda: packed(a))
    best = math.inf
    for call in calls:
        call()
        for _ in range(repeats):
            sync(device)
            start = time.perf_counter()
            call()
            sync(device)
            best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def bench_seconds(fn, device: str, repeats: int = 3) -> float:
    """Seconds per call of fn: the median of CUDA-event timings on a GPU, the best of `repeats` calls elsewhere."""
    if str(device).startswith("cuda"):
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") / 1e3
    fn()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def copy_bandwidth(device: str, smoke: bool = False) -> float:
    """GB/s of a large device-to-device copy_ (bytes read plus bytes written): the card's practical memory ceiling."""
    n = 2**14 if smoke else 2**28  # 512 MiB of bf16
    x = torch.empty(n, dtype=torch.bfloat16, device=device).normal_()
    y = torch.empty_like(x)
    return 2 * x.numel() * x.element_size() / bench_seconds(lambda: y.copy_(x), device) / 1e9


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def kernel_benchmark_main(doc: str, benchmark, name: str) -> None:
    """The command line of a kernel benchmark: on CUDA in bf16, or --smoke (CPU, Triton's interpreter, fp16)."""
    import argparse
    import os

    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes on CPU through the interpreter, no results")
    args = p.parse_args()
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"
    elif not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --smoke for a CPU plumbing check, or on a GPU")
    device, dtype = ("cpu", torch.float16) if args.smoke else ("cuda", torch.bfloat16)
    results, table = benchmark(device, dtype, args.smoke)
    print("\n" + table)
    if not args.smoke:
        write_results(f"{name}-{torch.cuda.get_device_name().replace(' ', '_')}", results, table)


def markdown_table(title: str, columns: list[str], rows: list[str]) -> str:
    """A title, then a markdown table of the given columns over rows already formatted as `| a | b |`."""
    return "\n".join([title, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns), *rows])


def write_results(name: str, results: dict, table: str, folder: Path = RESULTS) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (folder / f"{name}.md").write_text(table + "\n")
    print(f"\nwrote {folder / name}.json and .md")
