"""What every API family calls: admission, inputs checked and tokenized within the limits, queued to the model's
worker, and awaited only while the client is still there."""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import TypeVar

import torch
from starlette.requests import Request

from ..checks import check_dim
from ..embedder import Embedder
from ..reranker import Reranker
from ..tokenize import EOS, PROBE_CHARS, TextTooLong
from .body import Body, body_of, parse
from .limits import ApiError, ClientGone, Limits, check_text
from .metrics import Metrics
from .token_ids import FOREIGN_SHARE, RoundTrip
from .worker import BatchingWorker, QueueFull, ShuttingDown, Stopped

# Threads that tokenize requests: a 2 MB body takes ~150 MB while it is tokenized, so memory stays bounded by this.
TOKENIZATION_WORKERS = min(4, os.cpu_count() or 1)
# A body up to this many bytes is parsed on the event loop (well under a millisecond); a larger one in the one
# parsing thread: parsing holds Python's lock throughout (about 0.17 s for a 2 MB body of a million ids), so more
# threads would not parse faster, and with one the event loop waits for at most one body between two.
INLINE_BODY = 16384
B = TypeVar("B", bound=Body)
T = TypeVar("T")


class Service:
    """The models, their workers and the limits of one server."""

    def __init__(self, embedder: Embedder | None, reranker: Reranker | None, limits: Limits, metrics: Metrics):
        self.models: dict[str, Embedder | Reranker] = {
            name: p for name, p in (("embed", embedder), ("rerank", reranker)) if p is not None
        }
        if not self.models:
            raise ValueError("give an embedder, a reranker, or both")
        self.limits, self.metrics = limits, metrics
        self.max_input_length = limits.input_length([p.config for p in self.models.values()])
        if reranker is not None:
            try:
                reranker.tokenize_query("", [""], max_length=self.max_input_length)
            except TextTooLong:
                raise ValueError(
                    f"max_input_length={self.max_input_length} leaves no room for a document in the reranker's "
                    "prompt, even with an empty query; raise it"
                ) from None
        self.max_chars = {name: p.tokenizer.max_chars(self.max_input_length) for name, p in self.models.items()}
        self.tokenizer = next(iter(self.models.values())).tokenizer  # the embedder's, else the reranker's: the same
        foreign = embedder is not None and not limits.accept_foreign_token_ids
        self.round_trip = RoundTrip(embedder.tokenizer.backend) if foreign else None
        self.workers: dict[str, BatchingWorker] = {}
        self.in_flight = 0
        self.shutdown_deadline: float | None = None  # set when draining starts
        self.started_at = int(time.time())

    def start(self) -> None:
        """A batching worker for each model, its model warmed up first (see BatchingWorker.warm_up)."""
        self.tokenizing = ThreadPoolExecutor(TOKENIZATION_WORKERS, thread_name_prefix="qwen3-embed-tokenize")
        self.parsing = ThreadPoolExecutor(1, thread_name_prefix="qwen3-embed-parse")
        limits = self.limits
        for name, pipeline in self.models.items():
            head = pipeline.head if name == "rerank" else lambda last: last.float()
            worker = BatchingWorker(
                pipeline,
                head,
                name=name,
                max_batch_tokens=limits.max_batch_tokens,
                max_queue_tokens=limits.max_queue_tokens,
                max_wait_ms=limits.max_wait_ms,
                batching=limits.batching,
                metrics=self.metrics,
            )
            self.workers[name] = worker
            worker.warm_up(self.max_input_length, limits.max_queue_tokens)  # no request holds more

    def drain(self, seconds: float) -> None:
        """Shutting down: refuse new requests (503) and fail the queued ones (503); the running batches finish."""
        self.shutdown_deadline = time.monotonic() + seconds
        for worker in self.workers.values():
            worker.drain()

    def stop(self) -> None:
        """Wait for the running batches, until the shutdown deadline when one was set."""
        remaining = None if self.shutdown_deadline is None else max(0.0, self.shutdown_deadline - time.monotonic())
        for worker in self.workers.values():
            worker.close(remaining)
        for threads in (self.tokenizing, self.parsing):
            threads.shutdown(wait=False, cancel_futures=True)

    def admit(self) -> None:
        """Count a request in, or refuse it: 503 while shutting down, 429 at `max_concurrent_requests`."""
        if self.shutdown_deadline is not None:
            raise ApiError(503, "the server is shutting down", "Unhealthy", cause="shutting_down")
        if self.in_flight >= self.limits.max_concurrent_requests:
            raise self.overloaded(f"the server is at its limit of {self.limits.max_concurrent_requests} concurrent "
                                  "requests", "overloaded")  # fmt: skip
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1

    def overloaded(self, message: str, cause: str) -> ApiError:
        """429, with a Retry-After of about the time the queues take to drain at the measured rate."""
        wait = math.ceil(max([1.0] + [w.drain_seconds() for w in self.workers.values()]))
        return ApiError(429, f"{message}; retry in about {wait} s", "Overloaded", cause=cause,
                        headers={"Retry-After": str(wait)})  # fmt: skip

    def health(self) -> str | None:
        """What keeps the server from answering, or None."""
        if self.shutdown_deadline is not None:
            return "the server is shutting down"
        for name, worker in self.workers.items():
            if not worker.thread.is_alive():
                return f"the {name} worker stopped"
            stalled = worker.stalled_for()
            if stalled > self.limits.health_stall_s:
                return (f"the {name} worker has made no progress for {stalled:.0f} s with work pending "
                        f"(health_stall_s={self.limits.health_stall_s:g})")  # fmt: skip
        return None

    async def parse(self, request: Request, model: type[B] | Callable[[dict], type[B]]) -> B:
        """The request's body as `model` (or the model it picks, see body.parse), parsed and checked within the
        limits: on the event loop when it is small, else in the parsing thread, dropped if the client leaves first."""
        raw = await body_of(request)
        work = lambda: parse(model, raw, self.limits, self.max_input_length)  # noqa: E731
        if len(raw) <= INLINE_BODY:
            return work()
        async with watch(request) as gone:
            return await self._in_thread(self.parsing, work, gone)

    async def embed(
        self,
        request: Request,
        inputs: Sequence[str] | Sequence[Sequence[int]],
        *,
        field: str | Callable[[int], str],
        truncate: bool = False,
        left: bool = False,
        prompt_name: str | None = None,
        prompt: str | None = None,
        dimensions: int | None = None,
        normalize: bool = True,
        token_limit: str = "max_queue_tokens",
    ) -> tuple[torch.Tensor, int]:
        """(vectors [n, dim], tokens) of texts, or of token id lists (OpenAI's), in order; their count and the
        lists' lengths already checked (body.check_inputs). `field` names the inputs in errors (`field[i]`), or
        gives the i-th input's name; `left`: truncation cuts a text's start; `prompt_name` or `prompt`: what goes
        before each text (default: the checkpoint's default prompt); `token_limit`: the Limits field of the route's
        tokens per request."""
        embedder = self._model("embed")
        name = field if callable(field) else lambda i: f"{field}[{i}]"
        try:
            dim = check_dim(dimensions, embedder.config.hidden_size, "dimensions")  # the request's field
        except ValueError as e:
            raise ApiError(422, str(e)) from None
        async with watch(request) as gone:
            if isinstance(inputs[0], str):
                cap = self.max_chars["embed"]

                def tokenize() -> list[list[int]]:
                    texts = [check_text(t, name(i), cap, truncate, left) for i, t in enumerate(inputs)]
                    return embedder.tokenize(texts, None, prompt_name, self.max_input_length, truncate, warn=False,
                                             prompt=prompt, left=left)  # fmt: skip

                ids = await self._tokenize(tokenize, gone, token_limit)
            else:
                ids = await self._tokenize(lambda: self._check_ids(inputs, name, embedder), gone, token_limit)
            finish = lambda rows: embedder.finish(rows[:, :dim], normalize)  # noqa: E731
            return await self._queue("embed", ids, finish, gone), sum(map(len, ids))

    async def rerank(
        self,
        request: Request,
        query: str,
        documents: Sequence[str],
        *,
        field: str,
        truncate: bool = False,
        left: bool = False,
        document_tokens: int | None = None,
    ) -> tuple[torch.Tensor, int]:
        """(raw scores l_yes - l_no [n], tokens) of the documents for the query, in order; their count already
        checked (body.check_inputs). `field` names the documents in errors; `left`: truncation cuts a document's
        start; `document_tokens`: each document is cut to that many tokens (Cohere's max_tokens_per_doc)."""
        reranker = self._model("rerank")
        cap = self.max_chars["rerank"]
        truncate = truncate or document_tokens is not None

        def tokenize() -> list[list[int]]:
            checked = check_text(query, "the query", cap, False)
            texts = [check_text(d, f"{field}[{i}]", cap, truncate, left) for i, d in enumerate(documents)]
            return reranker.tokenize_query(
                checked, texts, None, self.max_input_length, truncate, warn=False, name="the server's "
                "--max-input-length", left=left, document_tokens=document_tokens,
            )  # fmt: skip

        async with watch(request) as gone:
            ids = await self._tokenize(tokenize, gone)
            return await self._queue("rerank", ids, lambda rows: rows, gone), sum(map(len, ids))

    async def similarity(
        self, request: Request, source: str, sentences: Sequence[str], **options
    ) -> tuple[list[float], int]:
        """(cosine similarity of each sentence to the source, tokens), TEI's /similarity; `options` are embed's."""
        name = lambda i: f"inputs.sentences[{i - 1}]" if i else "inputs.source_sentence"  # noqa: E731
        vectors, tokens = await self.embed(request, [source, *sentences], field=name, **options)
        return (vectors[1:] @ vectors[0]).tolist(), tokens

    async def tokenize(
        self, request: Request, texts: Sequence[str], *, special: bool, prompt_name: str | None
    ) -> list[list[dict]]:
        """TEI's /tokenize: each text's tokens (`{id, text, special, start, stop}`, character offsets into the text
        with its prompt), and with `special` the EOS the embedding model pools; within max_batch_tokens (a long text
        found over it from a prefix, Tokenizer.tokens_within, is refused before it is tokenized whole)."""
        budget = self.limits.max_batch_tokens
        cap = self.tokenizer.max_chars(budget)

        def tokenize() -> list[list[dict]]:
            checked = [check_text(t, f"inputs[{i}]", cap, False) for i, t in enumerate(texts)]
            if prompt_name is not None or "embed" in self.models:  # the checkpoint's default prompt too, as /embed
                prefix = self._model("embed").prefix(None, prompt_name, None)
                checked = [prefix + t for t in checked]
            for i, text in enumerate(checked):
                if len(text) > PROBE_CHARS * budget and self.tokenizer.tokens_within([text], budget)[1]:
                    raise ApiError(413, f"inputs[{i}] holds more than max_batch_tokens={budget} tokens; send fewer "
                                   "or shorter inputs per request")  # fmt: skip
            eos = {"id": self.tokenizer.eos_id, "text": EOS, "special": True, "start": None, "stop": None}
            encodings = self.tokenizer.backend.encode_batch(checked, add_special_tokens=False)
            return [[{"id": i, "text": text[a:b], "special": False, "start": a, "stop": b}
                     for i, (a, b) in zip(e.ids, e.offsets)] + [eos] * special
                    for text, e in zip(checked, encodings)]  # fmt: skip

        async with watch(request) as gone:
            return await self._tokenize(tokenize, gone, "max_batch_tokens")

    async def decode(self, request: Request, lists: Sequence[Sequence[int]], *, skip_special: bool) -> list[str]:
        """TEI's /decode: the text of each token-id list (their count and lengths already checked)."""
        backend = self.tokenizer.backend
        size = backend.get_vocab_size(with_added_tokens=True)
        for i, ids in enumerate(lists):
            bad = next((t for t in ids if not 0 <= t < size), None)
            if bad is not None:
                raise ApiError(422, f"ids[{i}] holds the token id {bad}, outside the tokenizer's 0..{size - 1}",
                               "Tokenizer")  # fmt: skip
        async with watch(request) as gone:
            work = lambda: backend.decode_batch([list(ids) for ids in lists], skip_special_tokens=skip_special)  # noqa: E731
            return await self._in_thread(self.tokenizing, work, gone)

    def _model(self, name: str):
        if name not in self.models:
            option = "--model" if name == "embed" else "--reranker"
            raise ApiError(424, f"this server has no {name} model: start it with {option}", "Backend")
        return self.models[name]

    def _check_ids(
        self, inputs: Sequence[Sequence[int]], name: Callable[[int], str], embedder: Embedder
    ) -> list[list[int]]:
        """Token id lists checked against the embedding table and, unless accept_foreign_token_ids, refused (400)
        when a clear share of them look like another tokenizer's (token_ids.RoundTrip); each with the EOS appended
        as a text gets it."""
        rows = embedder.config.vocab_size
        for i, seq in enumerate(inputs):
            bad = next((t for t in seq if not 0 <= t < rows), None)
            if bad is not None:
                raise ApiError(422, f"{name(i)} holds the token id {bad}, outside the model's 0..{rows - 1}",
                               "Tokenizer")  # fmt: skip
        foreign = self.round_trip.foreign(inputs) if self.round_trip is not None else []
        if foreign and len(foreign) >= FOREIGN_SHARE * len(inputs):
            raise ApiError(
                400, f"{len(foreign)} of the {len(inputs)} token-id lists (first {name(foreign[0])}) change when "
                "decoded and tokenized again with this model's tokenizer: they look like another tokenizer's ids, "
                "such as OpenAI's tiktoken ids that LangChain's OpenAIEmbeddings sends by default. Send texts instead "
                "(LangChain: OpenAIEmbeddings(..., check_embedding_ctx_length=False), or tiktoken_enabled=False with "
                "the model's hub id as model), or start the server with --accept-foreign-token-ids to embed these ids "
                "as they are",
            )  # fmt: skip
        return [[*seq, embedder.tokenizer.eos_id] for seq in inputs]

    async def _tokenize(
        self, tokenize: Callable[[], list[list[T]]], gone: asyncio.Task, token_limit: str = "max_queue_tokens"
    ) -> list[list[T]]:
        """Token ids (or tokens) from the tokenization threads, within the Limits field `token_limit`; 413 for an
        input over max_input_length, 422 for any other input the tokenizer refuses."""
        try:
            ids = await self._in_thread(self.tokenizing, tokenize, gone)
        except TextTooLong as e:
            raise ApiError(413, str(e)) from None
        except (ValueError, TypeError) as e:
            raise ApiError(422, str(e), "Tokenizer") from None
        self.limits.check_request_tokens(sum(map(len, ids)), token_limit)
        return ids

    @staticmethod
    async def _in_thread(threads: ThreadPoolExecutor, work: Callable[[], T], gone: asyncio.Task) -> T:
        """work() in one of `threads`; ClientGone if the client leaves first, and then the work is cancelled while
        it waits for a thread (one that has started finishes, and its result is dropped)."""
        future = asyncio.get_running_loop().run_in_executor(threads, work)
        await asyncio.wait([future, gone], return_when=asyncio.FIRST_COMPLETED)
        if not future.done():
            future.cancel()
            raise ClientGone
        return future.result()

    async def _queue(self, name: str, ids: list[list[int]], finish, gone: asyncio.Task) -> object:
        """The request's result from the worker; dropped from the queue (ClientGone) if its client leaves first."""
        if gone.done():
            raise ClientGone
        worker = self.workers[name]
        try:
            job = worker.submit(ids, finish)
        except QueueFull as e:
            raise self.overloaded(str(e), "queue_full") from None
        except (ShuttingDown, Stopped) as e:
            raise unavailable(e) from None
        result = asyncio.wrap_future(job.future)
        await asyncio.wait([result, gone], return_when=asyncio.FIRST_COMPLETED)
        if not result.done():
            if not worker.cancel(job):  # the model already has it: its result will be dropped
                result.add_done_callback(lambda f: f.cancelled() or f.exception())
            raise ClientGone
        try:
            return result.result()
        except (ShuttingDown, Stopped) as e:
            raise unavailable(e) from None


def unavailable(e: ShuttingDown | Stopped) -> ApiError:
    """503 for a worker that is draining or whose thread has died."""
    cause = "shutting_down" if isinstance(e, ShuttingDown) else "worker_stopped"
    return ApiError(503, str(e), "Unhealthy", cause=cause)


@asynccontextmanager
async def watch(request: Request) -> AsyncIterator[asyncio.Task]:
    """A task that finishes when the client disconnects (the body has been read: what comes next is that)."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task = asyncio.ensure_future(disconnected())
    try:
        yield task
    finally:
        task.cancel()
