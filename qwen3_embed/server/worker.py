"""The batching worker: a thread that owns one model and runs the sequences of all queued requests together.

The queue is bounded in tokens. A queued request can be cancelled (its client left) until the worker takes it;
draining fails every queued request at once while the running batch finishes. The measured rate (for Retry-After)
times each batch until its rows are on the host, since a GPU runs behind the launches; the model is warmed up before
the server takes requests, so that no request pays for compiling or autotuning.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from ..pipeline import Pipeline
from .metrics import Metrics

log = logging.getLogger("qwen3_embed.server")
# Where a model's first forward pass of a size compiles and autotunes (the Triton kernels, per power of two of tokens
# from 1024): a model there is warmed up. On the CPU nothing does, and a warm-up would only cost time (about 9 s for
# the 0.6B's 3,072 tokens at 350 tokens/s).
WARM_UP_DEVICES = ("cuda",)
WARM_UP_FROM = 1024


class QueueFull(Exception):
    """The queue holds as many tokens as it may."""


class ShuttingDown(Exception):
    """The worker is draining: it takes no new request, and the queued ones fail with this."""


class Stopped(Exception):
    """The worker's thread has died: it takes no new request, and the queued and running ones fail with this."""


@dataclass(eq=False)
class Job:
    ids: list[list[int]]
    finish: Callable[[torch.Tensor], object]  # the request's result from its rows of the model's output
    tokens: int
    queued_at: float
    future: Future = field(default_factory=Future)


class BatchingWorker:
    """A thread that owns a model and runs the sequences of all queued requests together.

    It takes what is queued (waiting up to `max_wait_ms` for more when the queue runs dry) until it holds
    `max_batch_tokens`, runs it through `pipeline.run` in the device's token-budget batches, and hands each request
    exactly its own rows. The queue holds at most `max_queue_tokens`; `batching=False` runs one request at a time.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        head: Callable[[torch.Tensor], torch.Tensor],
        *,
        max_batch_tokens: int,
        max_queue_tokens: int,
        max_wait_ms: float,
        batching: bool = True,
        name: str = "embed",
        metrics: Metrics | None = None,
    ):
        self.pipeline, self.head, self.name, self.metrics = pipeline, head, name, metrics
        self.max_batch_tokens, self.max_queue_tokens = max_batch_tokens, max_queue_tokens
        self.max_wait, self.batching = max_wait_ms / 1000, batching
        self._jobs: deque[Job] = deque()
        self._lock = threading.Condition()
        self.queued_tokens = 0
        self._closing = False
        self._busy = False
        self.stopped: str | None = None  # why the thread died, once it has
        self.heartbeat = time.monotonic()  # when the queue last moved or a forward pass was last launched
        self.tokens_per_s: float | None = None  # a running average over batches, timed until their rows are on the host
        self.thread = threading.Thread(target=self._loop, name=f"qwen3-embed-{name}", daemon=True)
        self.thread.start()

    @property
    def queued_requests(self) -> int:
        return len(self._jobs)

    def submit(self, ids: list[list[int]], finish: Callable[[torch.Tensor], object]) -> Job:
        """Queue a request's sequences; QueueFull when they would take the queue past `max_queue_tokens`,
        ShuttingDown while draining, Stopped once the thread has died."""
        tokens = sum(map(len, ids))
        with self._lock:
            if self.stopped is not None:
                raise Stopped(self.stopped)
            if self._closing:
                raise ShuttingDown("the server is shutting down")
            if self.queued_tokens + tokens > self.max_queue_tokens:
                raise QueueFull(
                    f"the {self.name} queue holds {self.queued_tokens} tokens; {tokens} more would pass its limit of "
                    f"{self.max_queue_tokens}"
                )
            job = Job(ids, finish, tokens, time.monotonic())
            self._jobs.append(job)
            self.queued_tokens += tokens
            self._lock.notify()
        return job

    def cancel(self, job: Job) -> bool:
        """Drop a request that has not reached the model yet; False when it already has."""
        with self._lock:
            if not job.future.cancel():  # only a queued job's future is still pending
                return False
            self._jobs.remove(job)
            self.queued_tokens -= job.tokens
            return True

    def drain(self) -> None:
        """Take no new request and fail the queued ones with ShuttingDown; the running batch finishes."""
        with self._lock:
            self._closing = True
            for job in self._jobs:
                job.future.set_exception(ShuttingDown("the server is shutting down"))
            self._jobs.clear()
            self.queued_tokens = 0
            self._lock.notify()

    def close(self, timeout: float | None = None) -> None:
        """Drain, then wait up to `timeout` seconds for the running batch."""
        self.drain()
        self.thread.join(timeout)

    def stalled_for(self) -> float:
        """Seconds without progress while there is work, 0 when idle."""
        with self._lock:
            pending = self._busy or bool(self._jobs)
        return time.monotonic() - self.heartbeat if pending else 0.0

    def drain_seconds(self) -> float:
        """About how long the queued tokens will take, at the measured rate (1 s before any measurement)."""
        return self.queued_tokens / self.tokens_per_s if self.tokens_per_s else 1.0

    def _loop(self) -> None:
        jobs: list[Job] = []
        try:
            while jobs := self._take():
                self._run(jobs)
                with self._lock:
                    self._busy = False
                    self.heartbeat = time.monotonic()
        except BaseException as e:  # even SystemExit: no request may wait for a thread that is gone
            log.error("the %s worker stopped", self.name, exc_info=e)
            with self._lock:
                self.stopped = f"the {self.name} worker stopped ({type(e).__name__}); restart the server"
                for job in [*jobs, *self._jobs]:
                    if not job.future.done():
                        job.future.set_exception(Stopped(self.stopped))
                self._jobs.clear()
                self.queued_tokens = 0

    def _take(self) -> list[Job]:
        """The next requests to run together, or [] once draining has emptied the queue."""
        with self._lock:
            while not self._jobs:
                if self._closing:
                    return []
                self._lock.wait()
            jobs: list[Job] = []
            tokens, deadline = 0, time.monotonic() + self.max_wait
            while True:
                while self._jobs and (not jobs or (self.batching and tokens < self.max_batch_tokens)):
                    job = self._jobs.popleft()
                    self.queued_tokens -= job.tokens
                    job.future.set_running_or_notify_cancel()  # from now on it can no longer be cancelled
                    jobs.append(job)
                    tokens += job.tokens
                remaining = deadline - time.monotonic()
                if not self.batching or tokens >= self.max_batch_tokens or remaining <= 0 or self._closing:
                    break
                self._lock.wait(remaining)  # what arrives before the deadline joins this batch
            self._busy, self.heartbeat = True, time.monotonic()
            return jobs

    def _run(self, jobs: list[Job]) -> None:
        start = time.monotonic()
        if self.metrics is not None:
            for job in jobs:
                self.metrics.queue_seconds.labels(self.name).observe(start - job.queued_at)
        try:  # `self` stands in for Pipeline.run's progress bar: update() is called as each forward pass is launched
            out = self.pipeline.run([seq for job in jobs for seq in job.ids], self.head, progress=self)
        except Exception as e:  # the model failed: every request of this batch learns why
            for job in jobs:
                job.future.set_exception(e)
            return
        seconds = time.monotonic() - start  # `out` is on the host: the device has finished
        rate = sum(job.tokens for job in jobs) / max(seconds, 1e-6)
        self.tokens_per_s = rate if self.tokens_per_s is None else 0.8 * self.tokens_per_s + 0.2 * rate
        if self.metrics is not None:
            self.metrics.inference_seconds.labels(self.name).observe(seconds)
        start = 0
        for job in jobs:
            rows, start = out[start : start + len(job.ids)], start + len(job.ids)
            try:
                job.future.set_result(job.finish(rows))
            except Exception as e:
                job.future.set_exception(e)

    def update(self, sequences: int, tokens: int) -> None:
        """One forward pass of `tokens` tokens has been launched (on a GPU it may still be running)."""
        self.heartbeat = time.monotonic()
        if self.metrics is not None:
            self.metrics.batch_tokens.labels(self.name).observe(tokens)
            self.metrics.tokens.labels(self.name).inc(tokens)

    def warm_up(self, max_input_length: int, max_request_tokens: int) -> float:
        """Before any request, on a device of WARM_UP_DEVICES, run a forward pass of each size of `warm_up_sizes` up
        to the largest this worker can run (its requests hold at most `max_request_tokens`), of sequences of at most
        `max_input_length` tokens: there the first pass of each power of two compiles and autotunes (seconds), which
        a request would otherwise pay. Logs and returns the seconds it took."""
        if self.pipeline.device.type not in WARM_UP_DEVICES:
            return 0.0
        start = time.monotonic()
        # A drain takes requests until it holds max_batch_tokens, and the pipeline cuts what it took into forward
        # passes of its batch budget.
        drain = self.max_batch_tokens - 1 + max_request_tokens if self.batching else max_request_tokens
        sizes = warm_up_sizes(min(drain, self.pipeline.batch_tokens(None)))
        eos = self.pipeline.tokenizer.eos_id
        for size in sizes:
            lengths = [max_input_length] * (size // max_input_length) + [size % max_input_length]
            self.pipeline.run([[eos] * n for n in lengths if n], self.head)
        seconds = time.monotonic() - start
        log.info("warmed up the %s model in %.1f s (a batch each of %s tokens)", self.name, seconds, sizes)
        return seconds


def warm_up_sizes(largest: int) -> list[int]:
    """The token counts of the warm-up's forward passes: the powers of two from WARM_UP_FROM below `largest`, and
    `largest`, so that every power of two a pass can reach is met."""
    sizes = [WARM_UP_FROM]
    while sizes[-1] * 2 < largest:
        sizes.append(sizes[-1] * 2)
    return [size for size in sizes if size < largest] + [largest]
