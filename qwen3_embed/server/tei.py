"""text-embeddings-inference's routes: /embed, /rerank, /similarity, /tokenize, /decode, POST / (by the model's
kind), /health, /info."""

from __future__ import annotations

from typing import Literal

import torch
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import StrictBool, StrictInt

from .. import __version__
from .body import Body, BodyRoute, FailFastList, Ids, Strict
from .limits import ApiError
from .service import TOKENIZATION_WORKERS

router = APIRouter(route_class=BodyRoute)
# Which end truncation cuts: "Right" its end, "Left" its start (TEI spells them so; huggingface_hub in lower case).
Direction = Literal["Right", "Left", "right", "left"]


class InferenceOptions(Strict):
    """The Hugging Face Inference API's request options, which some of its clients send to TEI's POST / (LangChain's
    HuggingFaceInferenceAPIEmbeddings): accepted and ignored, the served model being loaded and never cached."""

    wait_for_model: StrictBool | None = None
    use_cache: StrictBool | None = None


class EmbedRequest(Body):
    inputs_field = "inputs"
    inputs: str | FailFastList[str]
    normalize: StrictBool = True
    truncate: StrictBool = False
    truncation_direction: Direction = "Right"
    prompt_name: str | None = None
    dimensions: StrictInt | None = None
    options: InferenceOptions | None = None  # ignored


class RerankRequest(Body):
    inputs_field = "texts"
    query: str
    texts: FailFastList[str]
    raw_scores: StrictBool = False
    return_text: StrictBool = False
    truncate: StrictBool = False
    truncation_direction: Direction = "Right"


class SimilarityInput(Strict):
    source_sentence: str
    sentences: FailFastList[str]


class SimilarityParameters(Strict):
    truncate: StrictBool = False
    truncation_direction: Direction = "Right"
    prompt_name: str | None = None


class SimilarityRequest(Body):
    inputs_field = "inputs.sentences"
    inputs: SimilarityInput
    parameters: SimilarityParameters | None = None


class TokenizeRequest(Body):
    inputs_field = "inputs"
    inputs: str | FailFastList[str]
    add_special_tokens: StrictBool = True
    prompt_name: str | None = None


class DecodeRequest(Body):
    inputs_field, token_ids, ids_get_eos = "ids", True, False
    ids: Ids | FailFastList[Ids]
    skip_special_tokens: StrictBool = True


@router.post("/embed", summary="Embed texts (TEI)")
async def embed(body: EmbedRequest, request: Request) -> JSONResponse:
    texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
    vectors, _ = await request.app.state.service.embed(
        request, texts, field="inputs", truncate=body.truncate, left=left(body.truncation_direction),
        prompt_name=body.prompt_name, dimensions=body.dimensions, normalize=body.normalize,
    )  # fmt: skip
    return JSONResponse(vectors.tolist())


@router.post("/rerank", summary="Rerank texts for a query (TEI)")
async def rerank(body: RerankRequest, request: Request) -> JSONResponse:
    service = request.app.state.service
    raw, _ = await service.rerank(request, body.query, body.texts, field="texts", truncate=body.truncate,
                                  left=left(body.truncation_direction))  # fmt: skip
    scores = (raw if body.raw_scores else torch.sigmoid(raw)).tolist()
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    text = (lambda i: {"text": body.texts[i]}) if body.return_text else (lambda i: {})
    return JSONResponse([{"index": i, "score": scores[i], **text(i)} for i in order])


@router.post("/similarity", summary="Cosine similarity of sentences to a source sentence (TEI)")
async def similarity(body: SimilarityRequest, request: Request) -> JSONResponse:
    options = body.parameters or SimilarityParameters()
    scores, _ = await request.app.state.service.similarity(
        request, body.inputs.source_sentence, body.inputs.sentences, truncate=options.truncate,
        left=left(options.truncation_direction), prompt_name=options.prompt_name,
    )  # fmt: skip
    return JSONResponse(scores)


@router.post("/tokenize", summary="The tokens of texts, with their character offsets (TEI)")
async def tokenize(body: TokenizeRequest, request: Request) -> JSONResponse:
    texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
    tokens = await request.app.state.service.tokenize(
        request, texts, special=body.add_special_tokens, prompt_name=body.prompt_name
    )
    return JSONResponse(tokens)


@router.post("/decode", summary="The text of token ids (TEI)")
async def decode(body: DecodeRequest, request: Request) -> JSONResponse:
    lists = [body.ids] if body.ids and isinstance(body.ids[0], int) else body.ids
    texts = await request.app.state.service.decode(request, lists, skip_special=body.skip_special_tokens)
    return JSONResponse(texts)


@router.post(
    "/",
    summary="TEI's route by the model's kind: /embed's (or /similarity's, for a body of its shape) on a server with "
    "an embedding model, else /rerank's",
)
async def root(request: Request) -> JSONResponse:
    service = request.app.state.service
    if "embed" not in service.models:
        return await rerank(await service.parse(request, RerankRequest), request)
    body = await service.parse(request, embed_or_similarity)
    return await (similarity(body, request) if isinstance(body, SimilarityRequest) else embed(body, request))


def embed_or_similarity(data: dict) -> type[EmbedRequest] | type[SimilarityRequest]:
    """/similarity's body has an object of inputs (huggingface_hub's sentence_similarity sends it to POST /)."""
    return SimilarityRequest if isinstance(data.get("inputs"), dict) else EmbedRequest


def left(direction: str) -> bool:
    return direction.lower() == "left"


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
            "cohere_max_client_batch_size": limits.cohere_max_client_batch_size,
            "openai_max_client_batch_size": limits.openai_max_client_batch_size,
            "openai_max_batch_tokens": limits.openai_max_batch_tokens,
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
