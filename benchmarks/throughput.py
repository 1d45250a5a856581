"""Throughput of qwen3-embed against the alternatives on the same work, in one run.

Embedding: tokens per second of Embedder.encode against sentence-transformers (encode with its defaults) and the
model card's transformers recipe (left padding, last-token pooling, batches of 32 in input order).
Reranking: documents per second of Reranker.score against the card's transformers recipe (left padding, full
logits, log-softmax over [no, yes], batches of 8 in input order), and against the same recipe asking transformers
for the last position's logits only (`logits_to_keep=1`, which the card does not do).

Each task runs on one random-weight checkpoint of a real shape (default: 0.6B), on the same texts (mixed lengths,
real Qwen3 tokenizer) and in the same dtype for every system; each system's output is checked against ours. Also
reported: model FLOP/s (2 x non-embedding parameters per token, plus causal attention) over the GFLOP/s of a large
matmul in the same dtype, measured in the same run (on a CPU the better of torch.mm and oneDNN on a packed weight).

    python benchmarks/throughput.py                                  # the README table (CPU: about 40 minutes)
    python benchmarks/throughput.py --layers 4 --texts 16 --tasks embed --dtype float32   # a quick look
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib.util
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
    markdown_table,
    matmul_gflops,
    model_flops,
    sync,
    texts_of_token_lengths,
    write_checkpoint,
    write_results,
)
from qwen3_embed import Embedder, Qwen3Config
from qwen3_embed.backends import compiled
from qwen3_embed.reranker import DEFAULT_INSTRUCTION, PREFIX, SUFFIX, Reranker, format_pair
from qwen3_embed.tokenize import Tokenizer, batches

QUERY = "What is the capital of China?"


def timed(fn, device: str):
    """fn()'s result and the seconds it took (callers warm up first)."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def warm_up(encode, texts: list, device: str) -> None:
    """Run `encode` once before it is timed: on a GPU on the whole workload, so that every token-count bucket has
    autotuned and compiled its kernels before the timing; on a CPU (nothing to compile) on a few texts."""
    encode(texts if device.startswith("cuda") else texts[:4])


def embed_ours(folder: Path, texts: list[str], dtype: torch.dtype, device: str):
    embedder = Embedder.from_pretrained(folder, device=device, dtype=dtype)
    warm_up(embedder.encode, texts, device)
    return timed(lambda: embedder.encode(texts), device)


def embed_ours_compiled(folder: Path, texts: list[str], dtype: torch.dtype, device: str):
    """Ours with each decoder layer compiled (`qwen3_embed.backends.compiled.compile_layers`); the first calls compile,
    untimed."""
    embedder = Embedder.from_pretrained(folder, device=device, dtype=dtype)
    compiled.compile_layers(embedder.model)
    start = time.perf_counter()
    embedder.encode(texts[:4])
    embedder.encode(texts[-4:])  # a second, other shape: dynamic from then on
    print(f"    (compiling took {time.perf_counter() - start:.1f} s)", flush=True)
    return timed(lambda: embedder.encode(texts), device)


def embed_openvino(folder: Path, texts: list[str], dtype: torch.dtype, device: str):
    """Intel's OpenVINO runtime on the same checkpoint: transformers' Qwen3Model exported by torch.export, compiled
    for the CPU with the precision hint set explicitly (it picks bf16 by itself on AMX CPUs), the latency hint and
    torch's thread count, and run on one text at a time so that nothing is padded."""
    import openvino as ov
    from transformers import AutoModel, AutoTokenizer

    if device != "cpu":
        raise ValueError("OpenVINO runs here on the CPU only")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()

    class LastToken(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids):
            out = self.model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False)
            return out.last_hidden_state[:, -1]

    example = torch.tensor([tokenizer(texts[0])["input_ids"]])
    with torch.no_grad():
        seq = torch.export.Dim("seq", min=2, max=8192)
        program = torch.export.export(LastToken().eval(), (example,), dynamic_shapes=({1: seq},))
    hint = {torch.float32: "f32", torch.bfloat16: "bf16"}[dtype]
    ov_model = ov.Core().compile_model(ov.convert_model(program), "CPU", {
        "INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": torch.get_num_threads()})  # fmt: skip
    ids = [tokenizer(t)["input_ids"] for t in texts]

    def encode(chunk: list[list[int]]) -> torch.Tensor:
        rows = [torch.from_numpy(ov_model([seq])[0]) for seq in chunk]
        return F.normalize(torch.cat(rows).float(), dim=-1)

    encode(ids[:4])
    return timed(lambda: encode(ids), device)


def embed_sentence_transformers(folder: Path, texts: list[str], dtype: torch.dtype, device: str):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device=device, model_kwargs={"dtype": dtype})
    model.encode(texts[:4])
    return timed(lambda: torch.from_numpy(model.encode(texts)), device)


def embed_card_recipe(folder: Path, texts: list[str], dtype: torch.dtype, device: str, batch_size: int = 32):
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
    model = AutoModel.from_pretrained(folder, dtype=dtype).to(device).eval()

    def encode(chunk: list[str]) -> torch.Tensor:
        out = []
        with torch.inference_mode():
            for i in range(0, len(chunk), batch_size):
                batch = tokenizer(chunk[i : i + batch_size], padding=True, truncation=True, max_length=8192,
                                  return_tensors="pt").to(device)  # fmt: skip
                hidden = model(**batch).last_hidden_state
                out.append(F.normalize(hidden[:, -1].float(), p=2, dim=1).cpu())
        return torch.cat(out)

    encode(texts[:4])
    return timed(lambda: encode(texts), device)


def rerank_ours(folder: Path, documents: list[str], dtype: torch.dtype, device: str):
    reranker = Reranker.from_pretrained(folder, device=device, dtype=dtype)
    warm_up(lambda chunk: reranker.score(QUERY, chunk), documents, device)
    return timed(lambda: reranker.score(QUERY, documents), device)


def rerank_card_recipe(folder: Path, documents: list[str], dtype: torch.dtype, device: str, batch_size: int = 8,
                       logits_to_keep: int = 0):  # fmt: skip
    """The card's recipe; logits_to_keep=1 has the model compute the last position's logits only (0: all, the card's
    way)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
    no, yes = tokenizer.convert_tokens_to_ids("no"), tokenizer.convert_tokens_to_ids("yes")
    prefix = tokenizer.encode(PREFIX, add_special_tokens=False)
    suffix = tokenizer.encode(SUFFIX, add_special_tokens=False)

    def score(chunk: list[str]) -> torch.Tensor:
        out = []
        with torch.inference_mode():
            for i in range(0, len(chunk), batch_size):
                pairs = [format_pair(DEFAULT_INSTRUCTION, QUERY, d) for d in chunk[i : i + batch_size]]
                inputs = tokenizer(pairs, padding=False, truncation="longest_first", return_attention_mask=False,
                                   max_length=8192 - len(prefix) - len(suffix))  # fmt: skip
                inputs["input_ids"] = [prefix + ids + suffix for ids in inputs["input_ids"]]
                inputs = tokenizer.pad(inputs, padding=True, return_tensors="pt").to(device)
                logits = model(**inputs, logits_to_keep=logits_to_keep).logits[:, -1, :]
                scores = torch.stack([logits[:, no], logits[:, yes]], dim=1).log_softmax(dim=1)
                out.append(scores[:, 1].exp().float().cpu())
        return torch.cat(out)

    score(documents[:4])
    return timed(lambda: score(documents), device)


TASKS = {
    "embed": {"qwen3-embed": embed_ours, "qwen3-embed compiled": embed_ours_compiled,
              "sentence-transformers": embed_sentence_transformers, "card recipe": embed_card_recipe,
              "OpenVINO": embed_openvino},
    "rerank": {"qwen3-embed": rerank_ours, "card recipe": rerank_card_recipe,
               "card recipe, logits_to_keep=1": functools.partial(rerank_card_recipe, logits_to_keep=1)},
}  # fmt: skip


STAGES = ["tokenize", "pack", "copy", "forward", "post-process"]


def profile_ours(folder: Path, texts: list[str], dtype: torch.dtype, device: str) -> dict[str, float]:
    """Seconds spent in each stage of Embedder.encode, run stage by stage with the library's own pieces."""
    embedder = Embedder.from_pretrained(folder, device=device, dtype=dtype)
    warm_up(embedder.encode, texts, device)
    seconds = dict.fromkeys(STAGES, 0.0)

    def clock(stage: str, fn, *args):
        out, spent = timed(lambda: fn(*args), device)
        seconds[stage] += spent
        return out

    with torch.inference_mode():
        ids = clock("tokenize", embedder.tokenize, texts)
        packed = clock("pack", lambda: list(batches(ids, embedder.batch_tokens(None))))
        rows = []
        for batch in packed:
            b = clock("copy", batch.to, embedder.device)
            last = clock("forward", embedder.model, b.input_ids, clock("pack", b.plan), b.position_ids)
            rows.append(clock("post-process", last.float))
        clock("post-process", lambda: embedder.finish(torch.cat(rows).cpu(), True))
    return seconds


def agreement(task: str, outputs: torch.Tensor, ours: torch.Tensor) -> str:
    if task == "embed":
        return f"min cosine {F.cosine_similarity(outputs.float(), ours.float(), dim=-1).min().item():.6f}"
    return f"max abs diff {(outputs.float() - ours.float()).abs().max().item():.2e}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="0.6B", choices=["0.6B", "4B", "8B"])
    p.add_argument("--layers", type=int, help="reduce the depth (for a quick look; the table uses the full depth)")
    p.add_argument("--tasks", nargs="+", default=["embed", "rerank"], choices=list(TASKS))
    p.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"], help="for embedding")
    p.add_argument("--rerank-dtype", nargs="+", default=["float32"])
    p.add_argument("--texts", type=int, default=64, help="texts to embed")
    p.add_argument("--documents", type=int, default=32, help="documents to rerank (the first of the same texts)")
    p.add_argument("--min-tokens", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=1024)
    p.add_argument("--device", default="cpu")
    p.add_argument("--tokenizer", type=Path, default=SHARED_TOKENIZER, help="folder with the real Qwen3 tokenizer")
    p.add_argument("--checkpoints", type=Path, default=ROOT / "local", help="where to write the checkpoints")
    p.add_argument("--name", default="throughput-cpu", help="file name under benchmarks/results/")
    p.add_argument("--systems", nargs="+", help="only these systems (default: all; OpenVINO when it is installed)")
    p.add_argument("--profile", action="store_true", help="also the split of our time: tokenize, pack, copy, forward, "
                   "post-process")  # fmt: skip
    args = p.parse_args()
    if not (args.tokenizer / "tokenizer.json").exists():
        raise SystemExit(f"no tokenizer.json in {args.tokenizer}: pass --tokenizer with the real Qwen3 tokenizer")

    config = Qwen3Config.preset(args.preset)
    if args.layers:
        config = replace(config, num_hidden_layers=args.layers)
    shape = f"{args.preset} shape" + (f", {config.num_hidden_layers} layers" if args.layers else "")
    texts = texts_of_token_lengths(args.tokenizer, log_uniform_lengths(args.texts, args.min_tokens, args.max_tokens))
    results = {"machine": machine(), "preset": args.preset, "layers": config.num_hidden_layers, "runs": [],
               "profile": {}}  # fmt: skip
    rows, profile_rows, ours_by_dtype = [], [], {}
    for task in args.tasks:
        reranking = task == "rerank"
        print(f"writing the random-weight {task} checkpoint ...", flush=True)
        folder = write_checkpoint(args.checkpoints / f"bench-{task}-{args.preset}-{config.num_hidden_layers}",
                                  config, args.tokenizer, reranker=reranking)  # fmt: skip
        tokenizer = Tokenizer(folder / "tokenizer.json", config.vocab_size)
        if reranking:
            inputs = texts[: args.documents]
            pairs = [format_pair(DEFAULT_INSTRUCTION, QUERY, d) for d in inputs]
            ids = tokenizer.encode(pairs, 8192, prefix=tokenizer.ids(PREFIX), suffix=tokenizer.ids(SUFFIX))
        else:
            inputs = texts
            ids = tokenizer.encode(inputs, 8192)
        lengths = [len(i) for i in ids]
        tokens, flops = sum(lengths), model_flops(config, lengths)
        print(f"{task}: {len(inputs)} texts, {tokens} tokens ({min(lengths)}-{max(lengths)} per text), {shape}")
        for dtype_name in args.rerank_dtype if reranking else args.dtype:
            dtype = getattr(torch, dtype_name)
            peak = matmul_gflops(dtype, args.device)
            print(f"  {dtype_name}: matmul roofline {peak:.0f} GFLOP/s", flush=True)
            ours, runs = None, []
            for system, fn in TASKS[task].items():
                if args.systems and system not in args.systems and system != "qwen3-embed":
                    continue
                if system == "OpenVINO" and importlib.util.find_spec("openvino") is None:
                    print("    OpenVINO: not installed (pip install openvino), left out", flush=True)
                    continue
                outputs, seconds = fn(folder, inputs, dtype, args.device)
                gc.collect()
                ours = outputs if ours is None else ours
                run = {"task": task, "dtype": dtype_name, "system": system, "texts": len(inputs), "tokens": tokens,
                       "seconds": seconds, "texts_per_s": len(inputs) / seconds, "tokens_per_s": tokens / seconds,
                       "gflops": flops / seconds / 1e9, "roofline_gflops": peak,
                       "agreement": agreement(task, outputs, ours)}  # fmt: skip
                run["roofline_fraction"] = run["gflops"] / peak
                runs.append(run)
                print(f"    {system:22s} {seconds:7.1f} s {run['tokens_per_s']:7.1f} tok/s "
                      f"{run['roofline_fraction']:6.1%} of roofline, {run['agreement']}", flush=True)  # fmt: skip
            if not reranking:
                ours_by_dtype[dtype_name] = ours
            if args.profile and not reranking:
                split = profile_ours(folder, inputs, dtype, args.device)
                total = sum(split.values())
                results["profile"][dtype_name] = split
                print("    our time: " + ", ".join(f"{k} {v:.2f} s ({v / total:.1%})" for k, v in split.items()))
                profile_rows.append(f"| {dtype_name} | " + " | ".join(f"{split[k] / total:.1%}" for k in STAGES)
                                    + f" | {total:.1f} s |")  # fmt: skip
            for run in runs:
                run["qwen3_embed_speedup"] = run["seconds"] / runs[0]["seconds"]
                rows.append(f"| {task} | {dtype_name} | {run['system']} | {run['texts_per_s']:.2f} | "
                            f"{run['tokens_per_s']:.0f} | {run['qwen3_embed_speedup']:.2f}x | {run['gflops']:.0f} / "
                            f"{peak:.0f} ({run['roofline_fraction']:.0%}) | {run['agreement']} |")  # fmt: skip
            results["runs"] += runs

    m = results["machine"]
    table = markdown_table(
        f"Random weights of the {shape}; texts of {args.min_tokens}-{args.max_tokens} tokens (real Qwen3 tokenizer); "
        f"reranking: one query against the first {args.documents} texts. On {m['cpu']}, {m['torch_threads']} "
        f"threads, torch {m['torch']}, transformers {m.get('transformers')}, sentence-transformers "
        f"{m.get('sentence_transformers')}.",
        ["task", "dtype", "system", "texts/s", "tokens/s", "qwen3-embed is", "model GFLOP/s / matmul peak",
         "vs ours"],
        rows,
    )  # fmt: skip
    if {"float32", "bfloat16"} <= ours_by_dtype.keys():
        cosine = F.cosine_similarity(ours_by_dtype["bfloat16"], ours_by_dtype["float32"], dim=-1).min().item()
        results["bfloat16_vs_float32_min_cosine"] = cosine
        table += f"\n\nOur bfloat16 vectors against our float32 ones: min cosine {cosine:.6f}."
    if profile_rows:
        table += "\n\n" + markdown_table(
            "Where our time goes (`--profile`):", ["dtype", *STAGES, "total"], profile_rows
        )
    print("\n" + table)
    write_results(args.name, results, table)


if __name__ == "__main__":
    main()
