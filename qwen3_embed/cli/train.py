"""`qwen3-embed train`: fine-tune an embedding model (or, with --reranker, a reranker) on JSON lines of
{"query", "positive", "negatives"} and save it where sentence-transformers, transformers and qwen3-embed load it."""

from __future__ import annotations

import argparse
import json

from ..train.losses import DEFAULT_TEMPERATURE
from ..train.trainer import TrainOptions, train
from .common import DEBUG, EMBEDDING_MODEL, RERANKER_MODEL, add_command, add_model

DEFAULTS = TrainOptions(model="", data="", output="")


def add_parser(commands) -> None:
    p = add_command(commands, "train", "fine-tune a model on (query, positive[, negatives]) examples", (DEBUG,))
    add_model(p, None, f"the model to start from: hub id or local folder (default: {EMBEDDING_MODEL}, with --reranker "
              f"{RERANKER_MODEL})")  # fmt: skip
    p.add_argument("--data", required=True, help='JSON lines: {"query": ..., "positive": ..., "negatives": [...]}')
    p.add_argument("--output", required=True, help="new folder for the trained model (checkpoints: OUTPUT.checkpoints)")
    p.add_argument("--eval", help="held-out examples, the same format: recall@1 and @k after each epoch")
    p.add_argument("--epochs", type=int, default=DEFAULTS.epochs, help="passes over the data")
    p.add_argument("--lr", type=float, default=DEFAULTS.lr, help="peak learning rate (AdamW)")
    p.add_argument("--warmup", type=float, default=DEFAULTS.warmup, help="share of the steps the learning rate rises")
    p.add_argument("--weight-decay", type=float, default=DEFAULTS.weight_decay, help="AdamW's weight decay")
    p.add_argument("--max-grad-norm", type=float, default=DEFAULTS.max_grad_norm, help="gradient clipping")
    p.add_argument("--batch-tokens", type=int, default=DEFAULTS.batch_tokens,
                   help="tokens per batch, every text of its examples counted (the in-batch negatives)")  # fmt: skip
    p.add_argument("--cache-tokens", type=int, help="gradient caching: forward passes of at most this many tokens")
    p.add_argument("--max-length", type=int, default=DEFAULTS.max_length, help="tokens per text, longer ones cut")
    p.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE, help="of the InfoNCE softmax")
    same_kind = "also query-query and document-document negatives (the Qwen3-Embedding paper's loss)"
    p.add_argument("--same-kind", action="store_true", help=same_kind)
    p.add_argument("--instruction", help="task for the queries (default: the checkpoint's query prompt)")
    p.add_argument("--lora-rank", type=int, help="train LoRA adapters of this rank (merged into the saved weights)")
    p.add_argument("--reranker", action="store_true", help="train a Qwen3-Reranker (every example needs negatives)")
    p.add_argument("--checkpointing", action="store_true", help="recompute each layer in the backward (less memory)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (weights and optimizer stay float32)")
    p.add_argument("--save-every", type=int, help="steps between checkpoints a killed run resumes from")
    p.add_argument("--eval-k", type=int, default=DEFAULTS.eval_k, help="k of recall@k")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed, help="of the data's order")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when torch sees a GPU, else cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    args.model = args.model or (RERANKER_MODEL if args.reranker else EMBEDDING_MODEL)
    names = set(TrainOptions.__dataclass_fields__) - {"show_progress"}
    options = TrainOptions(**{name: getattr(args, name) for name in names}, show_progress=not args.no_progress)
    recall = train(options)
    print(json.dumps({"output": options.output, **recall}))
