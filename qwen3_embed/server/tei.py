"""text-embeddings-inference's routes: /embed, /rerank, /health, /info."""

from __future__ import annotations

from typing import Literal

import torch
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import StrictBool, StrictInt

from .. import __version__
from .body import Body, BodyRoute, FailFastList
from .limits import ApiError
from .service import TOKENIZATION_WORKERS

router = APIRouter(route_class=BodyRoute)


class EmbedRequest(Body):
    inputs_field = "inputs"
    inputs: str | FailFastList[str]
    normalize: StrictBool = True
    truncate: StrictBool = False
    truncation_direction: Literal["Right"] = "Right"  # the end of a text is cut; TEI's "Left" is not implemented
    prompt_name: str | None = None
    dimensions: StrictInt | None = None


class RerankRequest(Body):
    inputs_field = "texts"
    query: str
    texts: FailFastList[str]
    raw_scores: StrictBool = False
    return_text: StrictBool = False
    truncate: StrictBool = False
    truncation_direction: Literal["Right"] = "Right"


@router.post("/embed", summary="Embed texts (TEI)")
async def embed(body: EmbedRequest, request: Request) -> JSONResponse:
    texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
    vectors, _ = await request.app.state.service.embed(
        request, texts, field="inputs", truncate=body.truncate, prompt_name=body.prompt_name,
        dimensions=body.dimensions, normalize=body.normalize,
    )  # fmt: skip
    return JSONResponse(vectors.tolist())


@router.post("/rerank", summary="Rerank texts for a query (TEI)")
async def rerank(body: RerankRequest, request: Request) -> JSONResponse:
    service = request.app.state.service
    raw, _ = await service.rerank(request, body.query, body.texts, field="texts", truncate=body.truncate)
    scores = (raw if body.raw_scores else torch.sigmoid(raw)).tolist()
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    text = (lambda i: {"text": body.texts[i]}) if body.return_text else (lambda i: {})
    return JSONResponse([{"index": i, "score": scores[i], **text(i)} for i in order])


@router.get("/health", summary="200 while the server can answer, else 503 saying why")
async def health(request: Request) -> JSONResponse:
    problem = request.app.state.service.health()
    if problem:
        raise ApiError(503, problem, "Unhealthy")
    return JSONResponse({"status": "ok"})


@router.get("/info", summary="The model and limits this server runs with (TEI's fields, and a few more)")
async def info(request: Request) -> JSONResponse:
    service, names = request.app.state.service, request.app.state.served_names
    limits = service.limits
    describe = {
        name: {"model_id": names[name], "model_dtype": str(p.dtype).removeprefix("torch."),
               "model_device": str(p.device)}
        for name, p in service.models.items()
    }  # fmt: skip
    main = "embed" if "embed" in service.models else "rerank"
    model_type = {"embedding": {"pooling": "last_token"}} if main == "embed" else {"reranker": {}}
    return JSONResponse(
        {
            **describe[main],
            "model_sha": None,
            "model_type": model_type,
            "max_concurrent_requests": limits.max_concurrent_requests,
            "max_input_length": service.max_input_length,
            "max_batch_tokens": limits.max_batch_tokens,
            "max_batch_requests": None,
            "max_client_batch_size": limits.max_client_batch_size,
            "auto_truncate": False,
            "tokenization_workers": TOKENIZATION_WORKERS,
            "version": __version__,
            "sha": None,
            "docker_label": None,
            "payload_limit": limits.payload_limit,
            "max_queue_tokens": limits.max_queue_tokens,
            "reranker": describe.get("rerank") if main == "embed" else None,
        }
    )
