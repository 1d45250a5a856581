"""Training data: examples from JSON lines, checked line by line, and their order and batches per epoch.

Each line is an object `{"query": str, "positive": str, "negatives": [str, ...]}` (`negatives` optional). A line
that is not such an object is an error naming the file and line; a negative equal to its positive is warned about
(it would be pushed away from its own query) and dropped.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Example:
    query: str
    positive: str
    negatives: tuple[str, ...] = field(default=())


def read_examples(path: str | os.PathLike) -> list[Example]:
    """The examples of a JSON lines file (UTF-8, a byte order mark allowed, blank lines skipped); bad data is a
    ValueError naming file and line."""
    examples = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise ValueError(f"{where}: not UTF-8 text (byte {raw[e.start]:#04x} at byte {e.start + 1})") from None
            if line.strip():
                examples.append(parse_line(line, where))
    if not examples:
        raise ValueError(f"{path} holds no examples: write one JSON object per line with query and positive")
    return examples


def parse_line(line: str, where: str) -> Example:
    """One line's example; `where` ("file:line") leads every error and warning."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{where}: a line must be a JSON object with query and positive, not {type(record).__name__}")
    for key in ("query", "positive"):
        if key not in record:
            raise ValueError(f"{where}: the field {key!r} is missing (each line needs query and positive)")
        check_text(record[key], f"{where}: {key}")
    negatives = record.get("negatives", [])
    if not isinstance(negatives, list):
        raise ValueError(f"{where}: negatives must be a list of texts, not {type(negatives).__name__}")
    for i, text in enumerate(negatives):
        check_text(text, f"{where}: negatives[{i}]")
    if record["positive"] in negatives:
        warnings.warn(f"{where}: a negative equals the positive; it is left out", stacklevel=3)
        negatives = [text for text in negatives if text != record["positive"]]
    return Example(record["query"], record["positive"], tuple(negatives))


def check_text(value, what: str) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, not {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{what} is empty")


def epoch_batches(lengths: Sequence[int], budget: int, seed: int, epoch: int) -> list[list[int]]:
    """The batches of one epoch: the examples (of `lengths` tokens each, all their texts) in an order drawn from
    (seed, epoch), cut into runs of at most `budget` tokens (an example over the budget goes alone). The same
    arguments give the same batches, so that a resumed run picks up at a batch's index."""
    order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()
    return pack_runs(order, lengths.__getitem__, budget)


def pack_runs(order: list[int], length: Callable[[int], int], budget: int) -> list[list[int]]:
    """`order` cut into consecutive runs of at most `budget` total length (a longer item alone)."""
    runs: list[list[int]] = [[]]
    tokens = 0
    for i in order:
        if runs[-1] and tokens + length(i) > budget:
            runs.append([])
            tokens = 0
        runs[-1].append(i)
        tokens += length(i)
    return [run for run in runs if run]
