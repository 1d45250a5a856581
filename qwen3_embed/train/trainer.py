"""The training loop: examples in shuffled batches under a token budget, AdamW with linear warm-up and decay,
gradient clipping, recall@k on a held-out split, checkpoints a killed run resumes from exactly, and the final save.

    options = TrainOptions(model="Qwen/Qwen3-Embedding-0.6B", data="train.jsonl", output="my-model")
    train(options)

Checkpoints go to `{output}.checkpoints/step-N` every `save_every` steps; running the same training again resumes
from the latest (model, optimizer, schedule, position in the data, random state) and gives the weights an
uninterrupted run gives, bit for bit. They are removed once the model is saved. Under torchrun, each rank trains on
its share of every batch and the gradients are averaged (`distributed.Ranks`).
"""

from __future__ import annotations

import random
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..search import Index
from .data import Example, epoch_batches, read_examples
from .distributed import Ranks
from .lora import add_lora, merge_lora
from .losses import DEFAULT_TEMPERATURE
from .model import load_embedder, load_reranker
from .save import save_model, written_atomically
from .step import ContrastiveStep, RerankerStep


@dataclass
class TrainOptions:
    """What `train` does; the CLI's flags of the same names (`qwen3-embed train --help`) say each in full."""

    model: str
    data: str
    output: str
    eval: str | None = None  # held-out examples: recall@1 and @k before training and after each epoch
    epochs: int = 1
    lr: float = 2e-5
    batch_tokens: int = 8192  # tokens per batch, every text of its examples counted
    temperature: float = DEFAULT_TEMPERATURE
    same_kind: bool = False  # the Qwen3-Embedding paper's query-query and document-document negatives too
    warmup: float = 0.05  # fraction of the steps over which the learning rate rises from 0
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    save_every: int | None = None  # steps between checkpoints
    seed: int = 0
    lora_rank: int | None = None
    reranker: bool = False
    cache_tokens: int | None = None  # gradient caching: forward passes of at most this many tokens
    checkpointing: bool = False  # activation checkpointing of every layer
    bf16: bool = False  # bfloat16 autocast (weights and optimizer stay float32)
    instruction: str | None = None  # for the queries; default: the checkpoint's query prompt, else the card's
    max_length: int = 512
    eval_k: int = 10
    device: str | None = None
    show_progress: bool = True

    # options that change the result: a checkpoint resumes only under the same ones
    RESUMABLE = ("model", "data", "epochs", "lr", "batch_tokens", "temperature", "same_kind", "warmup",
                 "weight_decay", "max_grad_norm", "seed", "lora_rank", "reranker", "cache_tokens", "bf16",
                 "instruction", "max_length")  # fmt: skip

    def check(self) -> None:
        positive = {"epochs": self.epochs, "batch_tokens": self.batch_tokens, "max_length": self.max_length,
                    "eval_k": self.eval_k, "save_every": self.save_every or 1, "lora_rank": self.lora_rank or 1,
                    "cache_tokens": self.cache_tokens or 1}  # fmt: skip
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{flag(name)} must be a positive integer, not {value!r}")
        for name in ("lr", "temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{flag(name)} must be positive, not {getattr(self, name)!r}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"--warmup is a fraction of the steps, in [0, 1), not {self.warmup!r}")
        if self.reranker and (self.same_kind or self.cache_tokens):
            raise ValueError("--same-kind and --cache-tokens are for the embedder's loss, not --reranker")
        if self.reranker and self.eval:
            raise ValueError("--eval measures the embedder's recall; it does not apply to --reranker")
        if Path(self.output).exists():
            raise FileExistsError(f"--output {self.output} already exists: choose another folder, or remove it")


def flag(name: str) -> str:
    """The command-line flag of an option."""
    return "--" + name.replace("_", "-")


def train(options: TrainOptions) -> dict[str, float]:
    """Train as `options` say and save the model to `options.output`; returns the last evaluation's recall (empty
    without `eval`)."""
    options.check()
    examples = read_examples(options.data)
    if options.reranker and (bare := sum(not e.negatives for e in examples)):
        raise ValueError(f"{options.data}: --reranker learns from negatives, but {bare} examples have none")
    held_out = read_examples(options.eval) if options.eval else []
    ranks = Ranks(options.device)
    try:
        return run(options, examples, held_out, ranks)
    finally:
        ranks.close()


def run(options: TrainOptions, examples: list[Example], held_out: list[Example], ranks: Ranks) -> dict[str, float]:
    """The training of `train`, as one of `ranks`."""
    load = load_reranker if options.reranker else load_embedder
    folder, pipeline = load(options.model, device=ranks.device, checkpointing=options.checkpointing)
    if options.lora_rank:
        add_lora(pipeline.model, options.lora_rank)
    settings = dict(autocast=options.bf16, instruction=options.instruction, max_length=options.max_length)
    if options.reranker:
        step = RerankerStep(pipeline, **settings)
    else:
        step = ContrastiveStep(pipeline, options.temperature, options.same_kind, options.cache_tokens, **settings)
    tokenized = step.tokenize(examples)
    lengths = [item.tokens for item in tokenized]
    epochs = [epoch_batches(lengths, options.batch_tokens, options.seed, epoch) for epoch in range(options.epochs)]
    schedule = [batch for epoch in epochs for batch in epoch]
    lone = sum(len(batch) == 1 and not examples[batch[0]].negatives for batch in schedule)
    if lone and not options.reranker and ranks.first:
        alone = f"{lone} of {len(schedule)} batches hold one example and no negative, so their loss is 0"
        warnings.warn(f"{alone}: raise {flag('batch_tokens')} (now {options.batch_tokens})", stacklevel=2)
    epoch_ends = {sum(map(len, epochs[: i + 1])): i + 1 for i in range(len(epochs))}  # steps done -> epoch
    parameters = trainable(pipeline)
    optimizer = torch.optim.AdamW(parameters, lr=options.lr, weight_decay=options.weight_decay)
    scheduler = warmup_then_decay(optimizer, len(schedule), round(options.warmup * len(schedule)))
    checkpoints = Path(f"{options.output}.checkpoints")
    done = resume(checkpoints, options, pipeline, optimizer, scheduler)
    progress = tqdm(total=len(schedule), initial=done, unit="step", disable=not (options.show_progress and ranks.first))
    recall = {}
    if held_out and done == 0 and ranks.first:
        recall = evaluate(pipeline, held_out, options)
        progress.write(f"before training: {describe(recall)}", file=sys.stderr)
    tokens, started = 0, time.perf_counter()
    for number in range(done, len(schedule)):
        batch = [tokenized[i] for i in schedule[number]]
        optimizer.zero_grad(set_to_none=True)
        share = ranks.share(batch)
        loss = step.backward(share) if share else torch.zeros((), device=pipeline.device)
        ranks.average_gradients(parameters)
        loss = ranks.average(loss)
        torch.nn.utils.clip_grad_norm_(parameters, options.max_grad_norm)
        optimizer.step()
        scheduler.step()
        tokens += sum(item.tokens for item in batch)
        rate = tokens / (time.perf_counter() - started)
        progress.set_postfix_str(f"loss {loss.item():.4f}, {rate:,.0f} tokens/s", refresh=False)
        progress.update(1)
        if options.save_every and (number + 1) % options.save_every == 0 and number + 1 < len(schedule):
            if ranks.first:
                save_checkpoint(checkpoints, number + 1, options, pipeline, optimizer, scheduler)
            ranks.wait()
        if held_out and number + 1 in epoch_ends and ranks.first:
            recall = evaluate(pipeline, held_out, options)
            progress.write(f"epoch {epoch_ends[number + 1]}: {describe(recall)}", file=sys.stderr)
    progress.close()
    if ranks.first:
        if options.lora_rank:
            merge_lora(pipeline.model)
        save_model(pipeline, folder, Path(options.output), reranker=options.reranker)
        shutil.rmtree(checkpoints, ignore_errors=True)
    ranks.wait()
    return recall


def trainable(pipeline) -> list[torch.nn.Parameter]:
    """The parameters that train: the model's that require gradients, and a reranker's own "no"/"yes" rows."""
    parameters = [p for p in pipeline.model.parameters() if p.requires_grad]
    rows = getattr(pipeline, "_no_yes", None)
    if rows is not None and not pipeline.config.tie_word_embeddings:
        parameters.append(rows)
    return parameters


def warmup_then_decay(optimizer: torch.optim.Optimizer, steps: int, warmup: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning rate rising linearly over `warmup` steps, then falling linearly to 0 at `steps`."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (steps - step) / max(1, steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def evaluate(embedder, examples: list[Example], options: TrainOptions) -> dict[str, float]:
    """recall@1 and recall@k of the held-out queries: the share whose positive is among the k documents nearest to
    them in an `Index` of every held-out positive and negative."""
    documents = list(dict.fromkeys(text for e in examples for text in (e.positive, *e.negatives)))
    position = {text: i for i, text in enumerate(documents)}
    encode = dict(max_length=options.max_length, batch_tokens=options.batch_tokens)
    index = Index(embedder.encode_document(documents, **encode))
    queries = embedder.encode_query([e.query for e in examples], instruction=options.instruction, **encode)
    k = min(options.eval_k, len(documents))
    hits = index.search(queries, top_k=k).positions
    found = hits == torch.tensor([position[e.positive] for e in examples])[:, None]
    return {"recall@1": found[:, 0].float().mean().item(), f"recall@{k}": found.any(1).float().mean().item()}


def describe(recall: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.3f}" for name, value in recall.items())


def save_checkpoint(folder: Path, done: int, options: TrainOptions, pipeline, optimizer, scheduler) -> None:
    """The training state after `done` steps, in `folder/step-{done}` (written whole, then renamed); older ones
    removed."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        "done": done,
        "options": {name: getattr(options, name) for name in TrainOptions.RESUMABLE},
        "parameters": [p.detach().cpu() for p in trainable(pipeline)],
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": (torch.get_rng_state(), random.getstate()),
    }
    with written_atomically(folder / f"step-{done}") as partial:
        torch.save(state, partial / "state.pt")
    for old in folder.glob("step-*"):
        if old.name != f"step-{done}":
            shutil.rmtree(old)


def resume(folder: Path, options: TrainOptions, pipeline, optimizer, scheduler) -> int:
    """The steps already done by the latest checkpoint in `folder` (0 without one), its state loaded."""
    found = sorted(folder.glob("step-*"), key=lambda p: int(p.name.removeprefix("step-")))
    if not found:
        return 0
    state = torch.load(found[-1] / "state.pt", weights_only=False)
    saved, now = state["options"], {name: getattr(options, name) for name in TrainOptions.RESUMABLE}
    if changed := [name for name in now if saved.get(name) != now[name]]:
        raise ValueError(
            f"{found[-1]} was written by a run with other options ({', '.join(flag(name) for name in changed)}): "
            f"rerun with the same ones to resume, or remove {folder} to start again"
        )
    with torch.no_grad():
        for parameter, value in zip(trainable(pipeline), state["parameters"]):
            parameter.copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"][0])
    random.setstate(state["rng"][1])
    warnings.warn(f"resuming from {found[-1]} ({state['done']} steps done)", stacklevel=2)
    return state["done"]
