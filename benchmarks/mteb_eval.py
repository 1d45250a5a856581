"""Our MTEB scores beside those the Qwen3-Embedding model cards publish (mean over tasks), through
qwen3_embed.mteb_adapter: queries with each task's instruction as the official evaluation formats them, documents
without. Needs the real weights and mteb's task data (mteb fetches it from the Hugging Face Hub on first use); with
anything missing it stops and says what. A random-weight checkpoint runs, but its scores mean nothing.

    pip install ".[mteb]"
    python benchmarks/mteb_eval.py --model Qwen/Qwen3-Embedding-0.6B --benchmark "MTEB(eng, v2)"
    python benchmarks/mteb_eval.py --model ~/models/Qwen3-Embedding-8B --tasks SciFact NFCorpus

The cards' "MTEB Multilingual" is taken to be mteb's MTEB(Multilingual, v2) (v1 less one task the Hub lost), "MTEB
English v2" MTEB(eng, v2), "C-MTEB" MTEB(cmn, v1) and "MTEB Code" MTEB(Code, v1). Official runs truncate at 8192
tokens (the default here).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from common import machine, markdown_table, write_results

CARD = {  # the model cards' mean over tasks, by model size
    "MTEB(Multilingual, v2)": {"0.6B": 64.33, "4B": 69.45, "8B": 70.58},
    "MTEB(eng, v2)": {"0.6B": 70.70, "4B": 74.60, "8B": 75.22},
    "MTEB(cmn, v1)": {"0.6B": 66.33, "4B": 72.27, "8B": 73.84},
    "MTEB(Code, v1)": {"0.6B": 75.41, "4B": 80.06, "8B": 80.68},
}
SIZES = {1024: "0.6B", 2560: "4B", 4096: "8B"}  # by hidden size


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a Qwen3-Embedding checkpoint: local folder or hub id")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--benchmark", action="append", choices=list(CARD), help="a whole benchmark (repeatable)")
    what.add_argument("--tasks", nargs="+", help="mteb task names (no card number to compare with)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--dtype", help="float32, bfloat16 or float16 (default: bfloat16 on cuda, else float32)")
    p.add_argument("--max-length", type=int, default=8192, help="tokens per text")
    p.add_argument("--batch-tokens", type=int, help="tokens per forward pass")
    args = p.parse_args()

    try:
        import mteb

        from qwen3_embed import Embedder, checkpoint
        from qwen3_embed.mteb_adapter import MTEBEncoder
    except ImportError as e:
        sys.exit(f"{e}")
    try:
        folder = checkpoint.resolve(args.model)
    except (OSError, ValueError) as e:
        sys.exit(f"this needs the real weights of {args.model}, which are not here: {e}")
    embedder = Embedder.from_pretrained(folder, device=args.device, dtype=args.dtype)
    size = SIZES.get(embedder.config.hidden_size)
    encoder = MTEBEncoder(embedder, name=f"qwen3-embed/{folder.name}", max_length=args.max_length,
                          batch_tokens=args.batch_tokens)  # fmt: skip
    runs = [(name, mteb.get_benchmark(name).tasks) for name in args.benchmark or []] or [
        (None, mteb.get_tasks(tasks=args.tasks))
    ]
    rows, results = [], {"machine": machine(), "model": args.model, "size": size, "runs": []}
    for name, tasks in runs:
        try:
            scores = mteb.evaluate(encoder, tasks, cache=None, raise_error=True)
        except Exception as e:  # the task data could not be fetched, most often
            sys.exit(
                f"mteb could not run {name or args.tasks} ({type(e).__name__}: {e}); it needs each task's data, "
                "fetched from the Hugging Face Hub on first use (or found in the datasets cache)"
            )
        by_task = {r.task_name: 100 * r.get_score() for r in scores.task_results}
        card = CARD.get(name, {}).get(size)
        mean = float(np.mean(list(by_task.values())))
        results["runs"].append({"benchmark": name, "tasks": by_task, "mean": mean, "card": card})
        if name is None:
            rows += [f"| {task} | {score:.2f} | - |" for task, score in by_task.items()]
        else:
            shown = f"{card:.2f}" if card is not None else "not published for this size"
            rows.append(f"| {name} ({len(by_task)} of {len(tasks)} tasks) | {mean:.2f} | {shown} |")
    m = results["machine"]
    table = markdown_table(
        f"MTEB, {args.model} ({size or 'not a card size'}), on {m.get('gpu', m['cpu'])} (mean over tasks, x100):",
        ["benchmark or task", "qwen3-embed", "model card"],
        rows,
    )
    print("\n" + table)
    print("\nThese scores match the card's only with the real weights; a random-weight checkpoint scores near chance.")
    write_results(f"mteb-{folder.name}", results, table)


if __name__ == "__main__":
    main()
