"""An HTTP server with text-embeddings-inference (TEI), OpenAI and Cohere/Jina compatible endpoints, dynamic
batching, and limits that hold under abuse and overload.

Needs the `server` extra (FastAPI, uvicorn, prometheus-client): `pip install qwen3-embed-triton[server]`, then
`qwen3-embed serve --model M [--reranker R]`.

The pieces, in the order a request meets them:
- connections.py: uvicorn with deadlines for receiving each request and for a client that stops reading its
  answer, a cap on open connections, a graceful shutdown, and logs that do not flood;
- limits.py: the Guard in front of every route (API key, 429 admission, body size, 500s with an id), the limits,
  and the error bodies (TEI's, or OpenAI's under /v1/ and /v2/);
- tei.py, openai.py, cohere.py, metrics.py: the routes of each API family;
- service.py: what the routes call: inputs checked before they are tokenized, tokenized in a few threads, queued,
  and awaited only while the client is there;
- worker.py: one thread per model that owns it, drains its queue and runs the sequences of every queued request
  together in packed batches, handing each request exactly its own rows.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from .. import __version__
from ..embedder import Embedder
from ..reranker import Reranker
from . import cohere, metrics, openai, tei
from .connections import ConnectionLimits, check_port, reserve_files, run
from .limits import ApiError, Guard, Limits, check_api_key, error_response
from .metrics import Metrics
from .service import Service
from .worker import BatchingWorker

__all__ = ["BatchingWorker", "ConnectionLimits", "Limits", "check_api_key", "check_port", "create_app",
           "reserve_files", "run", "served_name"]  # fmt: skip


def create_app(
    embedder: Embedder | None,
    reranker: Reranker | None = None,
    *,
    served_model_name: str = "qwen3-embedding",
    served_reranker_name: str = "qwen3-reranker",
    limits: Limits | None = None,
    api_key: str | None = None,
    max_wait_ms: float = 2.0,
    batching: bool = True,
) -> FastAPI:
    """The FastAPI app serving an embedder and/or a reranker; each gets its batching worker while the app runs.

    The served names are what /info, /v1/models and the OpenAI and Cohere responses call the models. `api_key`:
    every route but /health then needs `Authorization: Bearer <api_key>`. `max_wait_ms`: how long an idle worker
    waits for more requests to batch; `batching=False` runs each request alone (for comparison).
    """
    limits = limits or Limits()
    app_metrics = Metrics()
    service = Service(embedder, reranker, limits, app_metrics, max_wait_ms=max_wait_ms, batching=batching)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        yield
        service.stop()

    app = FastAPI(title="qwen3-embed", version=__version__, lifespan=lifespan)
    app.state.service, app.state.metrics = service, app_metrics
    names = {"embed": served_model_name, "rerank": served_reranker_name}
    app.state.served_names = {kind: names[kind] for kind in service.models}
    families = (tei, openai, cohere, metrics)
    for family in families:
        app.include_router(family.router)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        if e.cause:
            app_metrics.reject(e.cause)
        return error_response(request.url.path, e.status, e.message, e.kind, e.headers)

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, e: RequestValidationError):
        message = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        return error_response(request.url.path, 422, f"malformed request: {message}", "Validation")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        path = request.url.path
        if e.status_code == 404:
            message = f"no route {path}; /docs lists them"
        elif e.status_code == 405:
            message = f"{request.method} is not allowed on {path}; use {(e.headers or {}).get('Allow', 'another')}"
        elif e.__cause__ is not None:  # FastAPI could not parse the body
            message = f"the body is not valid JSON: {e.__cause__}"
        else:
            message = str(e.detail)
        return error_response(path, e.status_code, message, "Validation", e.headers)

    routes = {route.path for router in (app, *(f.router for f in families)) for route in router.routes
              if hasattr(route, "path")}  # fmt: skip
    app.add_middleware(Guard, service=service, metrics=app_metrics, payload_limit=limits.payload_limit,
                       api_key=api_key, routes=routes)  # fmt: skip
    return app


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
