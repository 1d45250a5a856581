"""The Ray Data engine (the `ray` extra): the same shards and manifest as the local engine, computed on a Ray
cluster. Ray tasks index the input files; a Ray Data pipeline then runs, per shard, a CPU task that checks an existing
shard (a rerun) or reads and tokenizes its records, and an actor pool of Embedders (one per GPU, or CPU actors)
that embeds it and writes its files. Ray's scheduling balances the load and applies backpressure; an actor that dies
is restarted and its shard retried. A retried shard is written again under the same name, atomically, and the
manifest lists the plan's shards once each, so no record is dropped or duplicated. The input and output folders must
be visible to every node (a shared filesystem).
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Iterable

import torch

from ..checkpoint import resolve_dtype
from ..checks import check_int
from ..embedder import Embedder
from ..pipeline import Progress
from ..store.shards import shard_name
from .job import Interrupted, Job, Solo, folder_source, warn_cut
from .local import Summary
from .options import ShardOptions


def _ray():
    try:
        import ray
        import ray.data
    except ImportError:
        raise ImportError("the Ray engine needs Ray Data: pip install 'qwen3-embed-triton[ray]'") from None
    return ray


class Cluster(Solo):
    """The driver: indexes the input files in Ray tasks, and is otherwise the only rank."""

    def map(self, fn, items: list) -> list:
        ray = _ray()
        remote = ray.remote(num_cpus=1)(fn)
        return ray.get([remote.remote(item) for item in items])


ERRORS = {"ValueError": ValueError, "OSError": OSError, "FloatingPointError": FloatingPointError}


def failure(row: dict, error: Exception) -> dict:
    """A row that carries an error the user can act on (a bad record, a full disk) to the driver, which raises it:
    raised in a worker, only its traceback's text would reach the driver."""
    kind = next(name for name, kind in ERRORS.items() if isinstance(error, kind))
    return {**row, "error": f"{kind}\n{error}"}


class Tokenize:
    """CPU stage: a shard that is sound passes with no work; any other is read and tokenized."""

    def __init__(self, job: Job):
        self.job = job

    def __call__(self, row: dict) -> dict:
        task = self.job.plan[row["index"]]
        out = {"index": task.index, "problem": "", "prepared": b"", "error": ""}
        try:
            problem = self.job.problem(task)
            if problem is not None:
                out.update(problem=problem, prepared=pickle.dumps(self.job.prepare(self.job.tokenizer, task)))
        except tuple(ERRORS.values()) as e:
            return failure(out, e)
        return out


class Embed:
    """Actor stage: one Embedder per actor, kept across shards; embeds a prepared shard and writes it."""

    def __init__(self, job: Job, device: str, dtype: torch.dtype, threads: int):
        if device == "cpu":
            torch.set_num_threads(threads)
        self.job = job
        self.embedder = Embedder.from_pretrained(job.checkpoint, device=device, dtype=dtype,
                                                 check_kind=job.options.check_kind)  # fmt: skip

    def __call__(self, row: dict) -> dict:
        task = self.job.plan[row["index"]]
        out = {"index": task.index, "problem": row["problem"], "records": task.records, "tokens": 0, "cut": [],
               "error": row["error"]}  # fmt: skip
        if row["prepared"] and not row["error"]:
            prepared = pickle.loads(row["prepared"])
            try:
                self.job.write(task, self.job.embed(self.embedder, prepared, None), prepared)
            except tuple(ERRORS.values()) as e:
                return failure(out, e)
            out.update(tokens=sum(map(len, prepared.tokens)), cut=prepared.cut)
        return out


def encode_corpus_ray(
    model: str | os.PathLike,
    inputs,
    output: str | os.PathLike,
    *,
    workers: int | None = None,
    gpus_per_worker: float | None = None,
    cpus_per_worker: int = 1,
    dtype: str | torch.dtype | None = None,
    show_progress: bool = True,
    **options,
) -> Summary:
    """Embed a corpus into a folder of shards on the Ray cluster this process is connected to (`ray.init()`; one is
    started on this machine when none is), with the same output as `encode_corpus`.

    workers: embedding actors (default: one per GPU of the cluster, else 1); gpus_per_worker: default 1 when the
    cluster has GPUs, else 0 (CPU actors, `cpus_per_worker` threads each). options: see ShardOptions.
    """
    options = ShardOptions(**options)
    if workers is not None:
        check_int("workers", workers, 1)
    source = folder_source(inputs, options.input_format)
    ray = _ray()
    if not ray.is_initialized():
        ray.init(logging_level="WARNING")
    gpus = ray.cluster_resources().get("GPU", 0)
    if gpus_per_worker is None:
        gpus_per_worker = 1 if gpus else 0
    if workers is None:
        workers = max(1, int(gpus // gpus_per_worker)) if gpus_per_worker else 1
    dtype = resolve_dtype(dtype) if dtype is not None else torch.bfloat16 if gpus_per_worker else torch.float32
    job = Job(model, source, output, options, dtype, Cluster())
    try:
        return run_job(job, workers, gpus_per_worker, cpus_per_worker, dtype, show_progress)
    finally:
        job.close()


def run_job(
    job: Job, workers: int, gpus_per_worker: float, cpus_per_worker: int, dtype: torch.dtype, show_progress: bool
) -> Summary:
    """encode_corpus_ray once its Job is settled (and holds the output folder)."""
    ray, device = _ray(), "cuda" if gpus_per_worker else "cpu"  # the actors', not this process's
    todo = sum(task.records for task in job.plan if task.index not in job.existing)
    data = ray.data.DataContext.get_current()
    data.enable_progress_bars = False
    plan = [{"index": task.index} for task in job.plan]
    shards = ray.data.from_items(plan, override_num_blocks=max(len(plan), 1))
    tokenizers = ray.data.ActorPoolStrategy(min_size=1, max_size=max(workers, 2))
    shards = shards.map(Tokenize, fn_constructor_kwargs={"job": job}, compute=tokenizers, num_cpus=1)
    # An actor pool's actors are restarted when they die, and their tasks retried (Ray Data's defaults:
    # max_restarts=-1, max_task_retries=-1).
    shards = shards.map(
        Embed,
        fn_constructor_kwargs={"job": job, "device": device, "dtype": dtype, "threads": cpus_per_worker},
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_gpus=gpus_per_worker,
        num_cpus=0 if gpus_per_worker else cpus_per_worker,
    )
    with Progress(todo, enabled=show_progress) as progress:
        return collect(job, shards.iter_rows(), progress)


def collect(job: Job, rows: Iterable[dict], progress: Progress) -> Summary:
    """Count the pipeline's rows as they come (raising the error a row carries), then write the manifest."""
    done, cut = Summary({}), []
    try:
        for row in rows:
            if row["error"]:
                kind, message = row["error"].split("\n", 1)
                raise ERRORS[kind](message)
            if row["problem"] == "":
                done.verified += 1
                continue
            if row["problem"] != "missing":
                done.redone.append(f"{shard_name(row['index'])}: {row['problem']}")
                warnings.warn(f"{done.redone[-1]} (in {job.output}); embedded again", stacklevel=3)
            progress.update(row["records"], row["tokens"])
            cut += list(row["cut"])
            done.embedded += 1
    except KeyboardInterrupt:
        raise Interrupted(
            f"interrupted after {done.embedded + done.verified} of {len(job.plan)} shards; rerun the same command to "
            "resume"
        ) from None
    warn_cut(cut, job.max_length)
    done.manifest = job.finish()
    return done
