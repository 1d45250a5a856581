"""An HTTP server with text-embeddings-inference (TEI), OpenAI and Cohere/Jina compatible endpoints, dynamic
batching, and limits that hold under abuse and overload.

Needs the `server` extra (FastAPI, uvicorn, prometheus-client): `pip install qwen3-embed-triton[server]`, then
`qwen3-embed serve --model M [--reranker R]`.

The pieces, in the order a request meets them:
- connections.py: uvicorn with deadlines for receiving each request and for a client that stops reading its
  answer, a cap on open connections, a graceful shutdown, and logs that do not flood;
- guard.py: the Guard in front of every route (API key, route and method, 429 admission, body size, 500s with an
  id), all but the body size said from the request's head;
- limits.py: the limits (every serve flag's check, before any model loads), and the error bodies (TEI's, or
  OpenAI's under /v1/ and /v2/);
- tei.py, openai.py, cohere.py, metrics.py: the routes of each API family;
- body.py: their bodies parsed and checked in bounded time and memory (counts and lengths before elements);
- service.py: what the routes call: bodies parsed and inputs checked and tokenized in a few threads (work for a
  client that left is dropped), queued, and awaited only while the client is there;
- worker.py: one thread per model that owns it (the model warmed up first), drains its queue and runs the sequences
  of every queued request together in packed batches, handing each request exactly its own rows.

`serve` checks every setting, loads the models and serves them; `create_app` builds the app for models already
loaded.
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from pathlib import Path

import torch
from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException

from .. import __version__, checkpoint
from ..checks import resolve_device
from ..embedder import Embedder
from ..reranker import Reranker
from . import cohere, metrics, openai, tei
from .connections import ConnectionLimits, check_port, reserve_files, run
from .guard import Guard
from .limits import ApiError, Limits, check_api_key, error_response
from .metrics import Metrics
from .service import Service
from .worker import BatchingWorker

__all__ = [
    "BatchingWorker",
    "ConnectionLimits",
    "Limits",
    "check_api_key",
    "check_port",
    "create_app",
    "reserve_files",
    "run",
    "serve",
    "served_name",
]
FAMILIES = (tei, openai, cohere, metrics)


def serve(
    model: str | os.PathLike | None,
    reranker: str | os.PathLike | None = None,
    *,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    check_kind: bool = True,
    host: str = "127.0.0.1",
    port: int = 8080,
    api_key: str | None = None,
    served_model_name: str | None = None,
    served_reranker_name: str | None = None,
    limits: Limits | None = None,
    connections: ConnectionLimits | None = None,
) -> None:
    """Serve an embedding model and/or a reranker (hub ids or local folders) until SIGTERM or Ctrl-C. Everything
    that can be checked is checked before a model loads: the API key, the address, the open files that
    `connections.max_connections` needs, the device, and the limits against each model's config.json."""
    limits, connections = limits or Limits(), connections or ConnectionLimits()
    check_api_key(api_key)
    check_port(host, port)
    reserve_files(connections.max_connections)
    resolve_device(device)
    names = [name for name in (model, reranker) if name is not None]
    limits.input_length([checkpoint.read_config(name) for name in names])
    loading = dict(device=device, dtype=dtype, check_kind=check_kind)
    embedder = Embedder.from_pretrained(model, **loading) if model is not None else None
    scorer = Reranker.from_pretrained(reranker, **loading) if reranker is not None else None
    served = {}
    if model is not None:
        served["served_model_name"] = served_model_name or served_name(os.fspath(model))
    if reranker is not None:
        served["served_reranker_name"] = served_reranker_name or served_name(os.fspath(reranker))
    app = create_app(embedder, scorer, limits=limits, api_key=api_key, **served)
    run(app, host, port, connections)


def create_app(
    embedder: Embedder | None,
    reranker: Reranker | None = None,
    *,
    served_model_name: str = "qwen3-embedding",
    served_reranker_name: str = "qwen3-reranker",
    limits: Limits | None = None,
    api_key: str | None = None,
) -> FastAPI:
    """The FastAPI app serving an embedder and/or a reranker; each gets its batching worker while the app runs, its
    model warmed up before the app takes requests.

    The served names are what /info, /v1/models and the OpenAI and Cohere responses call the models. `api_key`:
    every request but GET /health then needs `Authorization: Bearer <api_key>`. `limits`: what the server accepts
    and how it batches.
    """
    limits = limits or Limits()
    app_metrics = Metrics()
    service = Service(embedder, reranker, limits, app_metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        yield
        service.stop()

    app = FastAPI(title="qwen3-embed", version=__version__, lifespan=lifespan)
    app.state.service, app.state.metrics = service, app_metrics
    names = {"embed": served_model_name, "rerank": served_reranker_name}
    app.state.served_names = {kind: names[kind] for kind in service.models}
    for family in FAMILIES:
        app.include_router(family.router)
    add_error_handlers(app, app_metrics)
    routes: dict[str, set[str]] = {}
    for router in (app, *(f.router for f in FAMILIES)):
        for route in router.routes:
            if hasattr(route, "methods"):
                routes.setdefault(route.path, set()).update(route.methods)
    app.add_middleware(
        Guard, service=service, metrics=app_metrics, payload_limit=limits.payload_limit, api_key=api_key, routes=routes
    )
    return app


def add_error_handlers(app: FastAPI, app_metrics: Metrics) -> None:
    """Every error in TEI's shape, or OpenAI's under /v1/ and /v2/: the routes' own, and Starlette's. (The Guard
    answers an unknown route or method; body.parse a body that is not JSON or not the route's shape.)"""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        if e.cause:
            app_metrics.reject(e.cause)
        return error_response(request.url.path, e.status, e.message, e.kind, e.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        return error_response(request.url.path, e.status_code, str(e.detail), "Validation", e.headers)


def served_name(name_or_path: str) -> str:
    """The name a model is served under by default: its hub id, or its folder's name (a hub cache snapshot folder
    gives its repo id), never a local path."""
    path = Path(name_or_path)
    if not path.exists():
        return name_or_path
    path = path.absolute()  # '.' has a name then; a symlink keeps its own
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        return path.parent.parent.name.removeprefix("models--").replace("--", "/")
    return path.name
