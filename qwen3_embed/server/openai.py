"""OpenAI's routes: POST /v1/embeddings (texts or token ids) and GET /v1/models."""

from __future__ import annotations

import base64
from typing import Literal

import torch
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, StrictInt

router = APIRouter()


class EmbeddingRequest(BaseModel):
    input: str | list[str] | list[StrictInt] | list[list[StrictInt]]  # texts, or token ids of the model's tokenizer
    model: str | None = None  # any name: the served model answers
    dimensions: StrictInt | None = None
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None


@router.post("/v1/embeddings", summary="Embed texts or token ids (OpenAI)")
async def embeddings(body: EmbeddingRequest, request: Request) -> JSONResponse:
    inputs = body.input
    if isinstance(inputs, str) or (inputs and isinstance(inputs[0], int)):
        inputs = [inputs]  # one text, or one list of token ids
    vectors, tokens = await request.app.state.service.embed(request, inputs, dimensions=body.dimensions)
    data = [{"object": "embedding", "index": i, "embedding": encode_vector(v, body.encoding_format)}
            for i, v in enumerate(vectors)]  # fmt: skip
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    model = request.app.state.served_names["embed"]
    return JSONResponse({"object": "list", "data": data, "model": model, "usage": usage})


@router.get("/v1/models", summary="The served models (OpenAI)")
async def models(request: Request) -> JSONResponse:
    started = request.app.state.service.started_at
    data = [{"id": name, "object": "model", "created": started, "owned_by": "qwen3-embed"}
            for name in request.app.state.served_names.values()]  # fmt: skip
    return JSONResponse({"object": "list", "data": data})


def encode_vector(vector: torch.Tensor, encoding_format: str) -> list[float] | str:
    """OpenAI's encodings: a list of floats, or the little-endian float32 bytes in base64."""
    if encoding_format == "base64":
        return base64.b64encode(vector.numpy().astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()
