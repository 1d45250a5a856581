"""Tokens per second of Embedder.encode against sentence-transformers and the model card's transformers recipe.

All three run the same random-weight checkpoint of a real shape (default: 0.6B), on the same texts (mixed
lengths, real Qwen3 tokenizer), in the same dtype, in one run; each is checked against ours for agreement.
Also reported: model FLOP/s over the GFLOP/s of a large torch.mm in the same dtype, measured in the same run.

    python benchmarks/throughput.py                      # float32 and bfloat16 on CPU, 64 texts of 8-1024 tokens
    python benchmarks/throughput.py --dtype float32 --layers 4 --texts 16   # a quick look
"""

from __future__ import annotations

import argparse
import gc
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from common import (
    ROOT,
    SHARED_TOKENIZER,
    log_uniform_lengths,
    machine,
    matmul_gflops,
    model_flops,
    sync,
    texts_of_token_lengths,
    write_checkpoint,
    write_results,
)

from qwen3_embed import Embedder, Qwen3Config
from qwen3_embed.tokenize import Tokenizer


def run_ours(folder: Path, texts: list[str], dtype: torch.dtype, device: str) -> torch.Tensor:
    embedder = Embedder.from_pretrained(folder, device=device, dtype=dtype)
    embedder.encode(texts[:4])  # warm-up
    return timed(lambda: embedder.encode(texts), device)


def run_sentence_transformers(folder: Path, texts: list[str], dtype: torch.dtype, device: str) -> torch.Tensor:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device=device, model_kwargs={"dtype": dtype})
    model.encode(texts[:4])
    return timed(lambda: torch.from_numpy(model.encode(texts)), device)  # encode with its defaults


def run_card_recipe(folder: Path, texts: list[str], dtype: torch.dtype, device: str, batch_size: int = 32):
    """The model card's transformers code: left padding, last-token pooling, batches in input order."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
    model = AutoModel.from_pretrained(folder, dtype=dtype).to(device).eval()

    def encode(chunk_texts: list[str]) -> torch.Tensor:
        out = []
        with torch.inference_mode():
            for i in range(0, len(chunk_texts), batch_size):
                batch = tokenizer(chunk_texts[i : i + batch_size], padding=True, truncation=True, max_length=8192,
                                  return_tensors="pt").to(device)
                hidden = model(**batch).last_hidden_state
                out.append(F.normalize(hidden[:, -1].float(), p=2, dim=1).cpu())
        return torch.cat(out)

    encode(texts[:4])
    return timed(lambda: encode(texts), device)


SYSTEMS = {"qwen3-embed": run_ours, "sentence-transformers": run_sentence_transformers, "card recipe": run_card_recipe}


def timed(fn, device: str):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="0.6B", choices=["0.6B", "4B", "8B"])
    p.add_argument("--layers", type=int, help="reduce the depth (for a quick look; the table uses the full depth)")
    p.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--texts", type=int, default=64)
    p.add_argument("--min-tokens", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=1024)
    p.add_argument("--device", default="cpu")
    p.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    p.add_argument("--tokenizer", type=Path, default=SHARED_TOKENIZER, help="folder with the real Qwen3 tokenizer.json")
    p.add_argument("--checkpoint", type=Path, default=ROOT / "local" / "bench-checkpoint", help="where to write it")
    p.add_argument("--name", default="throughput-cpu", help="file name under benchmarks/results/")
    args = p.parse_args()
    if not (args.tokenizer / "tokenizer.json").exists():
        raise SystemExit(f"no tokenizer.json in {args.tokenizer}: pass --tokenizer with the real Qwen3 tokenizer")

    config = Qwen3Config.preset(args.preset)
    if args.layers:
        config = replace(config, num_hidden_layers=args.layers)
    print("writing the random-weight checkpoint ...", flush=True)
    folder = write_checkpoint(args.checkpoint, config, args.tokenizer)
    texts = texts_of_token_lengths(args.tokenizer, log_uniform_lengths(args.texts, args.min_tokens, args.max_tokens))
    lengths = [len(ids) for ids in Tokenizer(folder / "tokenizer.json", config.vocab_size).encode(texts, 8192)]
    tokens, flops = sum(lengths), model_flops(config, lengths)
    shape = f"{args.preset} shape" + (f", {config.num_hidden_layers} layers" if args.layers else "")
    print(f"{len(texts)} texts, {tokens} tokens ({min(lengths)}-{max(lengths)} per text), {shape}")

    results = {"machine": machine(), "preset": args.preset, "layers": config.num_hidden_layers, "texts": len(texts),
               "tokens": tokens, "model_gflop": flops / 1e9, "runs": []}
    rows = []
    for dtype_name in args.dtype:
        dtype = getattr(torch, dtype_name)
        peak = matmul_gflops(dtype, args.device)
        print(f"\n{dtype_name}: torch.mm roofline {peak:.0f} GFLOP/s", flush=True)
        ours = None
        for system in args.systems:
            vectors, seconds = SYSTEMS[system](folder, texts, dtype, args.device)
            gc.collect()
            if ours is None:
                ours = vectors
            agreement = F.cosine_similarity(vectors.float(), ours.float(), dim=-1).min().item()
            run = {"dtype": dtype_name, "system": system, "seconds": seconds, "tokens_per_s": tokens / seconds,
                   "gflops": flops / seconds / 1e9, "roofline_gflops": peak, "min_cosine_vs_ours": agreement}
            run["roofline_fraction"] = run["gflops"] / peak
            results["runs"].append(run)
            print(f"  {system:22s} {seconds:8.1f} s  {run['tokens_per_s']:8.1f} tok/s  "
                  f"{run['roofline_fraction']:6.1%} of roofline  min cosine vs ours {agreement:.6f}", flush=True)
        base = {r["system"]: r for r in results["runs"] if r["dtype"] == dtype_name}
        for system in args.systems:
            r = base[system]
            speedup = base["qwen3-embed"]["tokens_per_s"] / r["tokens_per_s"] if "qwen3-embed" in base else float("nan")
            r["qwen3_embed_speedup"] = speedup
            rows.append(f"| {dtype_name} | {system} | {r['tokens_per_s']:.0f} | {speedup:.2f}x | "
                        f"{r['gflops']:.0f} / {peak:.0f} ({r['roofline_fraction']:.0%}) | {r['min_cosine_vs_ours']:.6f} |")

    m = results["machine"]
    table = "\n".join([
        f"Embedding throughput, random weights of the {shape}, {len(texts)} texts of {min(lengths)}-{max(lengths)} "
        f"tokens ({tokens} in all), on {m['cpu']} ({m['torch_threads']} threads), torch {m['torch']}:",
        "",
        "| dtype | system | tokens/s | qwen3-embed is | model GFLOP/s / torch.mm roofline | min cosine vs ours |",
        "|---|---|---|---|---|---|",
        *rows,
    ])
    print("\n" + table)
    write_results(args.name, results, table)


if __name__ == "__main__":
    main()
