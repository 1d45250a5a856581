"""OpenAI's routes: POST /v1/embeddings (texts or token ids; Jina's fields too), GET /v1/models and
/v1/models/{model}."""

from __future__ import annotations

import base64
from typing import Literal

import torch
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import StrictBool, StrictInt

from .body import Body, BodyRoute, FailFastList, Ids
from .limits import ApiError

router = APIRouter(route_class=BodyRoute)


class EmbeddingRequest(Body):
    """OpenAI's fields, and Jina's (which Jina's clients send to the same route)."""

    inputs_field, token_ids = "input", True
    batch_limit, token_limit = "openai_max_client_batch_size", "openai_max_batch_tokens"
    input: str | FailFastList[str] | Ids | FailFastList[Ids]  # texts, or token ids of the model's tokenizer
    model: str | None = None  # any name: the served model answers
    dimensions: StrictInt | None = None
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None  # not used
    task: str | None = None  # Jina's: not used (a Qwen3 query takes prompt_name on /embed)
    normalized: StrictBool = True  # Jina's
    truncate: StrictBool = False  # Jina's
    embedding_type: Literal["float"] | None = None  # Jina's: its other types are not implemented
    late_chunking: Literal[False] = False  # Jina's: not implemented


@router.post("/v1/embeddings", summary="Embed texts or token ids (OpenAI, Jina)")
async def embeddings(body: EmbeddingRequest, request: Request) -> JSONResponse:
    inputs = body.input
    if isinstance(inputs, str) or (inputs and isinstance(inputs[0], int)):
        inputs = [inputs]  # one text, or one list of token ids
    vectors, tokens = await request.app.state.service.embed(
        request, inputs, field="input", truncate=body.truncate, dimensions=body.dimensions,
        normalize=body.normalized, token_limit=body.token_limit,
    )  # fmt: skip
    data = [{"object": "embedding", "index": i, "embedding": encode_vector(v, body.encoding_format)}
            for i, v in enumerate(vectors)]  # fmt: skip
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    model = request.app.state.served_names["embed"]
    return JSONResponse({"object": "list", "data": data, "model": model, "usage": usage})


@router.get("/v1/models", summary="The served models (OpenAI)")
async def models(request: Request) -> JSONResponse:
    data = [describe(request, name) for name in request.app.state.served_names.values()]
    return JSONResponse({"object": "list", "data": data})


@router.get("/v1/models/{model:path}", summary="A served model (OpenAI)")
async def model(model: str, request: Request) -> JSONResponse:
    names = list(request.app.state.served_names.values())
    if model not in names:
        raise ApiError(404, f"the model '{model}' is not served here; this server serves {', '.join(names)}")
    return JSONResponse(describe(request, model))


def describe(request: Request, name: str) -> dict:
    """OpenAI's model object for a served model."""
    return {"id": name, "object": "model", "created": request.app.state.service.started_at, "owned_by": "qwen3-embed"}


def encode_vector(vector: torch.Tensor, encoding_format: str) -> list[float] | str:
    """OpenAI's encodings: a list of floats, or the little-endian float32 bytes in base64."""
    if encoding_format == "base64":
        return base64.b64encode(vector.numpy().astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()
