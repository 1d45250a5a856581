"""An HTTP server with text-embeddings-inference (TEI) and OpenAI compatible endpoints, and dynamic batching.

Needs the `server` extra (FastAPI and uvicorn): `pip install qwen3-embed-triton[server]`, then
`qwen3-embed serve --model M [--reranker R]`.

One worker thread owns each model. Request handlers validate and tokenize their own inputs, then queue them; the
worker drains the queue (waiting a few milliseconds when it is idle), packs the sequences of every queued request
into token-budget batches, runs them together and hands each request exactly its own rows, so concurrent requests
share forward passes. A request whose input is bad is answered before it reaches the queue, and one whose results
cannot be formed (non-finite values) fails alone.
"""

from __future__ import annotations

import asyncio
import base64
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from . import __version__
from .embedder import Embedder
from .pipeline import Pipeline
from .reranker import Reranker, pairs


@dataclass
class Job:
    ids: list[list[int]]
    finish: Callable[[torch.Tensor], object]  # the request's result from its rows of the model's output
    future: Future = field(default_factory=Future)


class BatchingWorker:
    """A thread that owns a model and runs the sequences of all queued requests together."""

    def __init__(
        self,
        pipeline: Pipeline,
        head: Callable[[torch.Tensor], torch.Tensor],
        max_batch_tokens: int,
        max_wait_ms: float,
        batching: bool = True,
    ):
        self.pipeline, self.head = pipeline, head
        self.max_batch_tokens, self.max_wait = max_batch_tokens, max_wait_ms / 1000
        self.batching = batching
        self.queue: queue.Queue[Job | None] = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name="qwen3-embed-worker", daemon=True)
        self.thread.start()

    def submit(self, ids: list[list[int]], finish: Callable[[torch.Tensor], object]) -> Future:
        job = Job(ids, finish)
        self.queue.put(job)
        return job.future

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()

    def _loop(self) -> None:
        while (job := self.queue.get()) is not None:
            jobs, tokens, stop = [job], sum(map(len, job.ids)), False
            deadline = time.monotonic() + self.max_wait
            while self.batching and tokens < self.max_batch_tokens:
                try:  # what is already queued, and what arrives before the deadline
                    more = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                jobs.append(more)
                tokens += sum(map(len, more.ids))
            self._run(jobs)
            if stop:
                return

    def _run(self, jobs: list[Job]) -> None:
        try:
            out = self.pipeline.run([seq for job in jobs for seq in job.ids], self.head)
        except Exception as e:  # the model failed: every request of this batch learns why
            for job in jobs:
                job.future.set_exception(e)
            return
        start = 0
        for job in jobs:
            rows, start = out[start : start + len(job.ids)], start + len(job.ids)
            try:
                job.future.set_result(job.finish(rows))
            except Exception as e:
                job.future.set_exception(e)


class ApiError(Exception):
    """An error answered with `status`; `kind` is TEI's error_type."""

    def __init__(self, status: int, message: str, kind: str = "Validation"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


class EmbedRequest(BaseModel):
    inputs: str | list[str]
    normalize: bool = True
    truncate: bool = False
    prompt_name: str | None = None
    dimensions: int | None = None


class RerankRequest(BaseModel):
    query: str
    texts: list[str]
    raw_scores: bool = False
    return_text: bool = False
    truncate: bool = False


class OpenAIEmbeddingRequest(BaseModel):
    input: str | list[str]
    model: str | None = None
    dimensions: int | None = None
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None


def create_app(
    embedder: Embedder | None,
    reranker: Reranker | None = None,
    *,
    model_id: str | None = None,
    reranker_id: str | None = None,
    max_input_length: int | None = None,
    max_batch_tokens: int = 16384,
    max_client_batch_size: int = 32,
    max_wait_ms: float = 2.0,
    batching: bool = True,
) -> FastAPI:
    """The FastAPI app serving an embedder and/or a reranker; each gets its batching worker while the app runs.

    max_input_length: tokens per input (default 8192, at most the model's maximum); longer inputs are refused, or
    cut when the request asks for truncation. max_batch_tokens: the most tokens one request may hold, and the most
    a worker gathers from the queue at once (forward passes keep the device's own budget).
    """
    served = [p for p in (embedder, reranker) if p is not None]
    if not served:
        raise ValueError("give an embedder, a reranker, or both")
    max_input_length = min(p.max_length(max_input_length) for p in served)
    if max_batch_tokens < max_input_length:
        raise ValueError(f"max_batch_tokens={max_batch_tokens} must be at least max_input_length={max_input_length}")
    workers: dict[str, BatchingWorker] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if embedder is not None:
            workers["embed"] = BatchingWorker(
                embedder, lambda last: last.float(), max_batch_tokens, max_wait_ms, batching
            )
        if reranker is not None:
            workers["rerank"] = BatchingWorker(reranker, reranker.head, max_batch_tokens, max_wait_ms, batching)
        yield
        for worker in workers.values():
            worker.close()

    app = FastAPI(title="qwen3-embed", version=__version__, lifespan=lifespan)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return error_response(request, e.status, e.message, e.kind)

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, e: RequestValidationError) -> JSONResponse:
        message = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        return error_response(request, 422, f"malformed request: {message}", "Validation")

    def require(worker: str) -> None:
        if worker not in workers:
            option = "--model" if worker == "embed" else "--reranker"
            raise ApiError(424, f"this server has no {worker} model: start it with {option}", "Backend")

    async def tokenize(texts: list, tokenize_fn) -> list[list[int]]:
        """Token ids of a request's inputs, or the error the client gets: 400 empty, 413 too many or too long
        together, 422 (400 on /v1) for any other bad input."""
        if not texts:
            raise ApiError(400, "the inputs are empty", "Empty")
        if len(texts) > max_client_batch_size:
            raise ApiError(413, f"{len(texts)} inputs is more than max_client_batch_size={max_client_batch_size}")
        try:
            ids = await run_in_threadpool(tokenize_fn)
        except (ValueError, TypeError) as e:
            raise ApiError(422, str(e)) from None
        tokens = sum(map(len, ids))
        if tokens > max_batch_tokens:
            raise ApiError(413, f"the inputs hold {tokens} tokens, more than max_batch_tokens={max_batch_tokens}")
        return ids

    async def results(worker: str, ids: list[list[int]], finish) -> object:
        try:
            return await asyncio.wrap_future(workers[worker].submit(ids, finish))
        except Exception as e:
            raise ApiError(500, f"{type(e).__name__}: {e}", "Backend") from None

    async def embed_vectors(texts: list[str], truncate: bool, prompt_name, dimensions, normalize) -> tuple:
        """(vectors [n, dim], token count) for /embed and /v1/embeddings."""
        require("embed")
        try:
            dim = embedder.check_dim(dimensions)
        except ValueError as e:
            raise ApiError(422, str(e)) from None
        ids = await tokenize(
            texts, lambda: embedder.tokenize(texts, None, prompt_name, max_input_length, truncate, warn=False)
        )
        vectors = await results("embed", ids, lambda rows: embedder.finish(rows[:, :dim], normalize))
        return vectors, sum(map(len, ids))

    @app.post("/embed", summary="Embed texts (TEI)")
    async def embed(request: EmbedRequest) -> JSONResponse:
        texts = [request.inputs] if isinstance(request.inputs, str) else request.inputs
        vectors, _ = await embed_vectors(
            texts, request.truncate, request.prompt_name, request.dimensions, request.normalize
        )
        return JSONResponse(vectors.tolist())

    @app.post("/rerank", summary="Rerank texts for a query (TEI)")
    async def rerank(request: RerankRequest) -> JSONResponse:
        def tokenize_pairs():
            pairs_ = pairs(request.query, request.texts)
            return reranker.tokenize(pairs_, None, max_input_length, request.truncate, warn=False)

        require("rerank")
        ids = await tokenize(request.texts, tokenize_pairs)
        scores = await results(
            "rerank", ids, lambda rows: (rows if request.raw_scores else torch.sigmoid(rows)).tolist()
        )
        order = sorted(range(len(scores)), key=lambda i: -scores[i])
        return JSONResponse(
            [
                {"index": i, "score": scores[i]} | ({"text": request.texts[i]} if request.return_text else {})
                for i in order
            ]
        )

    @app.post("/v1/embeddings", summary="Embed texts (OpenAI)")
    async def openai_embeddings(request: OpenAIEmbeddingRequest) -> JSONResponse:
        texts = [request.input] if isinstance(request.input, str) else request.input
        vectors, tokens = await embed_vectors(texts, False, None, request.dimensions, True)
        data = [
            {"object": "embedding", "index": i, "embedding": encode_vector(v, request.encoding_format)}
            for i, v in enumerate(vectors)
        ]
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return JSONResponse({"object": "list", "data": data, "model": model_id, "usage": usage})

    @app.get("/health", summary="200 while the server can answer")
    async def health() -> JSONResponse:
        dead = [name for name, worker in workers.items() if not worker.thread.is_alive()]
        if dead:
            raise ApiError(503, f"the {', '.join(dead)} worker stopped", "Unhealthy")
        return JSONResponse({"status": "ok"})

    @app.get("/info", summary="The models and limits this server runs with")
    async def info() -> JSONResponse:
        models = {"embedding": (embedder, model_id), "reranker": (reranker, reranker_id)}
        limits = {"max_input_length": max_input_length, "max_batch_tokens": max_batch_tokens}
        return JSONResponse(
            {"version": __version__, "max_client_batch_size": max_client_batch_size, **limits}
            | {
                kind: {
                    "model_id": name,
                    "model_dtype": str(p.dtype).removeprefix("torch."),
                    "model_device": str(p.device),
                }
                for kind, (p, name) in models.items()
                if p is not None
            }
        )

    return app


def encode_vector(vector: torch.Tensor, encoding_format: str) -> list[float] | str:
    """OpenAI's encodings: a list of floats, or the little-endian float32 bytes in base64."""
    if encoding_format == "base64":
        return base64.b64encode(vector.numpy().astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


def error_response(request: Request, status: int, message: str, kind: str) -> JSONResponse:
    """TEI's error body ({"error", "error_type"}), or under /v1/ OpenAI's ({"error": {"message", "type", ...}}), with
    400 where TEI answers 422."""
    if request.url.path.startswith("/v1/"):
        status = 400 if status == 422 else status
        kind = "invalid_request_error" if status < 500 else "server_error"
        return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": None}}, status)
    return JSONResponse({"error": message, "error_type": kind}, status)
