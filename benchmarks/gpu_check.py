"""The one GPU run: kernel correctness in bf16 at real sizes, the kernel benchmarks, and end-to-end embedding
throughput against sentence-transformers and the model card's transformers recipe. Random weights of the real
shapes, nothing from the network; written to fit in six minutes on an H100.

    python benchmarks/gpu_check.py OUT_DIR [--tokenizer DIR]     # on a GPU; the real Qwen3 tokenizer folder
    python benchmarks/gpu_check.py OUT_DIR --smoke               # CPU, tiny shapes, Triton's interpreter

Writes gpu_check.json and gpu_check.md (and the kernel tables) to OUT_DIR. End to end, each system embeds the same
texts in bf16: a mixed corpus (8 to 2048 tokens) and a long-document set (about 8k tokens each), on the 0.6B and
8B shapes. Model FLOP utilisation is model FLOPs (2 x non-embedding parameters per token, plus causal attention)
per second over the measured bf16 matmul peak; peak memory is torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

import torch

from common import (
    ROOT,
    SHARED_TOKENIZER,
    log_uniform_lengths,
    machine,
    markdown_table,
    matmul_gflops,
    model_flops,
    texts_of_token_lengths,
    write_checkpoint,
    write_results,
)
from qwen3_embed import Qwen3Config
from qwen3_embed.tokenize import Tokenizer

# name -> (texts, fewest tokens, most tokens)
CORPORA = {"mixed 8-2048": (256, 8, 2048), "long ~8k": (8, 7800, 8192)}


def exact_attention(q, k, v, cu_seqlens, scale):
    """Causal GQA attention in float32, memory-linear on CUDA (SDPA's efficient kernel takes no GQA, so the key and
    value heads are repeated)."""
    group = q.shape[1] // k.shape[1]
    out = torch.empty_like(q, dtype=torch.float32)
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        qs, ks, vs = (t[start:end].float().transpose(0, 1)[None] for t in (q, k, v))
        ks, vs = ks.repeat_interleave(group, 1), vs.repeat_interleave(group, 1)
        out[start:end] = torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale)[
            0
        ].transpose(0, 1)
    return out


def check_kernels(device: str, dtype: torch.dtype, smoke: bool) -> list[dict]:
    """Each kernel in `dtype` at real sizes: its error against a float32 computation must be at most twice the
    error of the PyTorch reference in the same dtype, plus a small floor."""
    from qwen3_embed import ops

    g = torch.Generator(device=device).manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, device=device, generator=g)

    checks = []

    def record(name, op, inputs, exact, floor):
        kernel, reference = op(*inputs, backend="triton"), op(*inputs, backend="torch")
        first = (lambda t: t[0]) if isinstance(kernel, tuple) else (lambda t: t)
        kernel_error = (first(kernel).float() - exact).abs().max().item()
        torch_error = (first(reference).float() - exact).abs().max().item()
        ok = kernel_error <= 2 * torch_error + floor
        checks.append({"check": name, "kernel_error": kernel_error, "torch_error": torch_error, "ok": ok})
        print(f"  {'ok  ' if ok else 'FAIL'} {name}: kernel {kernel_error:.3g}, torch {torch_error:.3g}", flush=True)

    tokens = 64 if smoke else 16384
    for width in (64,) if smoke else (1024, 2560, 4096):
        x, r = (rand(tokens, width) * 3).to(dtype), rand(tokens, width).to(dtype)
        w = (torch.rand(width, device=device, generator=g) + 0.5).to(dtype)
        exact = ops.rms_norm(x.float(), w.float(), 1e-6, backend="torch")
        record(f"rms_norm {tokens}x{width}", ops.rms_norm, (x, w, 1e-6), exact, 1e-2)
        exact = ops.rms_norm(x.float(), w.float(), 1e-6, r.float(), backend="torch")[0]
        record(f"rms_norm + residual {tokens}x{width}", ops.rms_norm, (x, w, 1e-6, r), exact, 1e-2)
    d, heads = (16, 2) if smoke else (128, 32)
    x, w = rand(tokens, heads, d).to(dtype), (torch.rand(d, device=device, generator=g) + 0.5).to(dtype)
    angles = torch.arange(tokens, device=device).float()[:, None] * rand(1, d // 2).abs()
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    exact = ops.rms_norm_rope(x.float(), w.float(), 1e-6, cos.float(), sin.float(), backend="torch")
    record(f"q/k norm + rope {tokens}x{heads}x{d}", ops.rms_norm_rope, (x, w, 1e-6, cos, sin), exact, 1e-2)
    packs = {"mixed": [5, 17, 40], "long": [200]} if smoke else {
        "mixed 32-2048": log_uniform_lengths(48, 32, 2048, seed=2), "long 8k": [8192], "long 32k": [32768]}  # fmt: skip
    for name, lengths in packs.items():
        for hq, hkv in ((4, 2),) if smoke else ((16, 8), (32, 8)):
            q, k, v = (rand(sum(lengths), h, d).to(dtype) for h in (hq, hkv, hkv))
            cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
            ops.check_cu_seqlens(cu, q.shape[0], q.device)
            exact = exact_attention(q, k, v, cu, d**-0.5)
            record(f"attention {name} Hq/Hkv {hq}/{hkv}", ops.varlen_attention, (q, k, v, cu, d**-0.5), exact, 2e-2)
    return checks


def end_to_end(args, device: str, dtype: torch.dtype, tokenizer_dir: Path) -> tuple[list[dict], list[str]]:
    from throughput import TASKS

    peak = matmul_gflops(dtype, device, n=512 if args.smoke else 8192)
    runs, rows = [], []
    presets = {"0.6B": None, "8B": args.layers_8b}
    for preset, layers in presets.items():
        config = Qwen3Config.preset(preset)
        if args.smoke:
            config = replace(config, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, head_dim=16, vocab_size=512)  # fmt: skip
        elif layers:
            config = replace(config, num_hidden_layers=layers)
        name = f"gpu-{preset}-{config.num_hidden_layers}"
        folder = write_checkpoint(args.checkpoints / name, config, tokenizer_dir, device=device)
        shape = f"{preset} shape" + (f", {config.num_hidden_layers} layers" if layers or args.smoke else "")
        for corpus, (count, low, high) in CORPORA.items():
            if args.smoke:
                count, low, high = 6, 4, 40
            texts = texts_of_token_lengths(tokenizer_dir, log_uniform_lengths(count, low, high, seed=3))
            lengths = [len(i) for i in Tokenizer(folder / "tokenizer.json", config.vocab_size).encode(texts, 8192)]
            tokens, flops = sum(lengths), model_flops(config, lengths)
            ours = ours_seconds = None
            for system, fn in TASKS["embed"].items():  # qwen3-embed first
                if device == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                vectors, seconds = fn(folder, texts, dtype, device)
                memory = torch.cuda.max_memory_allocated() if device == "cuda" else 0
                if ours is None:
                    ours, ours_seconds = vectors, seconds
                cosine = torch.nn.functional.cosine_similarity(vectors.float(), ours.float(), dim=-1).min().item()
                run = {"shape": shape, "corpus": corpus, "system": system, "texts": len(texts), "tokens": tokens,
                       "seconds": seconds, "tokens_per_s": tokens / seconds, "mfu": flops / seconds / 1e9 / peak,
                       "peak_memory_gib": memory / 2**30, "min_cosine_vs_ours": cosine}  # fmt: skip
                runs.append(run)
                rows.append(f"| {shape} | {corpus} ({tokens} tokens) | {system} | {run['tokens_per_s']:.0f} | "
                            f"{seconds / ours_seconds:.2f}x | {run['mfu']:.0%} | "
                            f"{run['peak_memory_gib']:.1f} | {cosine:.5f} |")  # fmt: skip
                print(rows[-1], flush=True)
    return runs, rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="folder for gpu_check.json, gpu_check.md and the kernel tables")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, Triton's interpreter: a plumbing check")
    p.add_argument("--tokenizer", type=Path, default=SHARED_TOKENIZER, help="folder with the real Qwen3 tokenizer")
    p.add_argument("--layers-8b", type=int, help="run the 8B shape at this depth instead of its 36 layers")
    p.add_argument("--checkpoints", type=Path, default=ROOT / "local", help="where to write the checkpoints")
    args = p.parse_args()
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"
        os.environ["QWEN3_EMBED_BACKEND"] = "triton"  # our side runs the kernels, through the interpreter
        device, dtype = "cpu", torch.float16
    elif torch.cuda.is_available():
        device, dtype = "cuda", torch.bfloat16
    else:
        sys.exit("no CUDA device: run with --smoke for a CPU plumbing check, or on a GPU")
    tokenizer_dir = args.tokenizer
    if not (tokenizer_dir / "tokenizer.json").exists():
        if not args.smoke:
            sys.exit(f"no tokenizer.json in {tokenizer_dir}: pass --tokenizer with the real Qwen3 tokenizer")
        sys.path.insert(0, str(ROOT / "tests"))
        from checkpoints import make_tokenizer

        tokenizer_dir = args.out / "tokenizer"
        make_tokenizer(tokenizer_dir, vocab_size=500)

    import kernels_attention
    import kernels_rmsnorm

    m = machine()
    print("kernel checks (bf16 against float32)" if not args.smoke else "kernel checks (smoke)", flush=True)
    checks = check_kernels(device, dtype, args.smoke)
    tables = {}
    for name, module in (("kernels_rmsnorm", kernels_rmsnorm), ("kernels_attention", kernels_attention)):
        results, tables[name] = module.benchmark(device, dtype, args.smoke)
        write_results(name, results, tables[name], args.out)
    runs, rows = end_to_end(args, device, dtype, tokenizer_dir)
    failed = [c["check"] for c in checks if not c["ok"]]
    table = markdown_table(
        f"End to end, {dtype}, on {m.get('gpu', m['cpu'])}, torch {m['torch']}, transformers {m.get('transformers')}, "
        f"sentence-transformers {m.get('sentence_transformers')}" + (" [smoke run]" if args.smoke else "") + ".\n"
        f"Kernel checks: {len(checks) - len(failed)} of {len(checks)} passed"
        + (f"; FAILED: {failed}" if failed else ""),
        ["shape", "corpus", "system", "tokens/s", "time vs qwen3-embed", "MFU", "peak GiB", "min cosine vs ours"],
        rows,
    ) + "\n\n" + "\n\n".join([tables["kernels_rmsnorm"], tables["kernels_attention"]])  # fmt: skip
    print("\n" + table)
    write_results("gpu_check", {"machine": m, "kernel_checks": checks, "end_to_end": runs}, table, args.out)
    if failed:
        sys.exit(f"kernel checks failed: {failed}")


if __name__ == "__main__":
    main()
