"""The engine that runs in this process: alone, or as one rank of a torchrun launch (see torchrun.py), taking shards
one at a time until none is left. Also the single-file output: one array built in memory."""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import checkpoint
from ..checks import resolve_device
from ..embedder import Embedder
from ..pipeline import Progress, resolve_dtype
from ..store.files import atomic_write, make_writable_folder, serialize_vectors
from ..store.shards import VECTOR_FORMATS, shard_name
from .inputs import check_fields, read_all, resolve_inputs
from .job import (
    Interrupted,
    Job,
    Prepared,
    ShardTask,
    Solo,
    check_apart,
    check_embedder,
    check_unique,
    embed,
    prepare,
    tokenizer_only,
    warn_cut,
)
from .options import Options, ShardOptions


@dataclass
class Summary:
    """What a run did: the manifest it wrote, and how many shards it embedded and found sound from an earlier run."""

    manifest: dict
    embedded: int = 0
    verified: int = 0
    redone: list[str] = field(default_factory=list)  # 'shard-00007: why', for shards embedded again


def encode_corpus(
    model: str | os.PathLike,
    inputs,
    output: str | os.PathLike,
    *,
    embedder: Embedder | None = None,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    group=None,
    show_progress: bool = True,
    **options,
) -> Summary | None:
    """Embed a corpus into a folder of shards and write its manifest; returns what was done (None on ranks other
    than 0 under torchrun).

    model: hub id or local folder (identified by its content, so a path and its absolute form are the same model).
    inputs: a file, folder, glob pattern, or a Source. embedder: the model already loaded from `model`, else it is
    loaded after every check has passed. group: a torchrun.Group under torchrun. options: see ShardOptions.
    A rerun of the same call skips the shards that are complete and sound (verified against their records) and
    embeds the rest, so its output is that of an uninterrupted run.
    """
    options = ShardOptions(**options)
    group = group or Solo()
    if embedder is not None:
        check_embedder(embedder, checkpoint.resolve(model))
    run_dtype = embedder.dtype if embedder else resolve_dtype(resolve_device(device), dtype)
    job = Job(model, inputs, output, options, run_dtype, group)
    try:
        return run_job(job, embedder, device, dtype, group, show_progress)
    finally:
        job.close()


def run_job(
    job: Job, embedder: Embedder | None, device: str | None, dtype: str | torch.dtype | None, group, show_progress: bool
) -> Summary | None:
    """encode_corpus once its Job is settled (and holds the output folder)."""
    if embedder is None:
        embedder = Embedder.from_pretrained(
            job.checkpoint, device=device, dtype=dtype, check_kind=job.options.check_kind
        )
    todo = sum(task.records for task in job.plan if task.index not in job.existing)
    desc = f"rank 0 of {group.world_size} (its share)" if group.world_size > 1 else None
    progress = Progress(-(-todo // group.world_size), enabled=show_progress and group.rank == 0 and todo > 0, desc=desc)
    done, cut = Summary({}), []
    try:
        for k in group.claims(len(job.plan)):
            cut += run_shard(job, job.plan[k], embedder, progress, done)
    except KeyboardInterrupt:
        where = f" by rank {group.rank}" if group.world_size > 1 else ""
        raise Interrupted(
            f"interrupted after {done.embedded + done.verified} of {len(job.plan)} shards{where}; rerun the same "
            "command to resume"
        ) from None
    finally:
        progress.close()
    warn_cut(cut, job.max_length)
    totals = group.wait_for_all({"embedded": done.embedded, "verified": done.verified})
    if group.rank != 0:
        return None
    done.embedded, done.verified = totals["embedded"], totals["verified"]
    done.manifest = job.finish()
    return done


def run_shard(job: Job, task: ShardTask, embedder: Embedder, progress: Progress, done: Summary) -> list[str]:
    """Embed and write one shard of the plan unless it is sound from an earlier run, counting it in `done`;
    returns the records cut to max_length."""
    problem = job.problem(task)
    if problem is None:
        done.verified += 1
        return []
    if problem != "missing":
        done.redone.append(f"{shard_name(task.index)}: {problem}")
        warnings.warn(f"{shard_name(task.index)} of {job.output}: {problem}; embedding it again", stacklevel=3)
        if task.index in job.existing:
            progress.bar.total += task.records
    prepared = job.prepare(embedder, task)
    vectors = job.embed(embedder, prepared, progress)
    job.write(task, vectors, prepared)
    progress.update(len(prepared.skipped), 0)
    done.embedded += 1
    return prepared.cut


def encode_file(
    model: str | os.PathLike,
    inputs,
    output: str | os.PathLike,
    *,
    embedder: Embedder | None = None,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    show_progress: bool = True,
    **options,
) -> dict:
    """Embed every record of an input into one file built in memory: `NAME.npy`, or `NAME.safetensors` (one tensor
    "vectors"); their ids go beside it to `NAME.ids.json` unless they are the rows' positions 0..n-1. Returns
    {rows, dim, skipped, cut, ids_file}. options: see Options (those of a folder of shards are refused). Every
    check, and the reading of the input, comes before the model loads."""
    options = Options(**options)
    output = Path(output)
    fmt = output.suffix.lower().removeprefix(".")
    if fmt not in VECTOR_FORMATS:
        raise ValueError(f"output {output} must end in .npy or .safetensors (or be a folder, for shards)")
    if output.is_dir():
        raise IsADirectoryError(f"output {output} is a folder; give a file name ending in .{fmt}, or drop the suffix")
    dtype = embedder.dtype if embedder else resolve_dtype(resolve_device(device), dtype)  # the device checked too
    source = inputs if not isinstance(inputs, (str, os.PathLike)) else resolve_inputs(inputs, options.input_format)
    ids_file = output.with_name(output.name.removesuffix(output.suffix) + ".ids.json")
    check_apart(source, output, (output, ids_file))
    make_writable_folder(output.parent, output)  # once it is known to be no input's: a refused run makes nothing
    check_fields(source, options.text_field, options.id_field, options.skip_bad)
    folder = checkpoint.resolve(model)
    settled = embedder or tokenizer_only(folder)
    dim, max_length, _ = options.settle(settled)
    max_chars = settled.tokenizer.max_chars(max_length)
    records, skipped = read_all(source, options.text_field, options.id_field, options.skip_bad, max_chars)
    check_unique(lambda: [[r.id for r in records]], options)
    if embedder is None:
        embedder = Embedder.from_pretrained(folder, device=device, dtype=dtype, check_kind=options.check_kind)
    prepared: Prepared = prepare(embedder, records, options, max_length)
    with Progress(len(prepared.tokens), enabled=show_progress) as progress:
        vectors = embed(embedder, prepared.tokens, dim, options, progress)
    atomic_write(output, serialize_vectors(vectors, fmt))
    if prepared.ids != list(range(len(prepared.ids))):
        atomic_write(ids_file, json.dumps(prepared.ids).encode())
    else:
        ids_file.unlink(missing_ok=True)  # a stale one from an earlier run would mislabel the rows
        ids_file = None
    warn_cut(prepared.cut, max_length)
    skipped += prepared.skipped
    return {"rows": len(vectors), "dim": dim, "skipped": skipped, "cut": prepared.cut, "ids_file": ids_file}


def report(skipped: list[str]) -> None:
    """Warn with the messages of skipped records, ten at most (the command line names its flags in them)."""
    if skipped:
        shown = "\n  ".join(skipped[:10]) + (f"\n  ... and {len(skipped) - 10} more" if len(skipped) > 10 else "")
        warnings.warn(f"skipped {len(skipped)} bad record(s):\n  {shown}", stacklevel=2)
