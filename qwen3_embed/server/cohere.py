"""Cohere's API: POST /v1/rerank and /v2/rerank (Jina's, vLLM's and LiteLLM's too), /v1/embed and /v2/embed."""

from __future__ import annotations

import uuid
from typing import Literal

import torch
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StrictBool, StrictInt

from ..store.quantize import quantize
from .body import Body, BodyRoute, FailFastList

router = APIRouter(route_class=BodyRoute)
# Cohere v2's default max_tokens_per_doc: a longer document is cut to it (and to what fits --max-input-length).
COHERE_V2_DOCUMENT_TOKENS = 4096


class Document(BaseModel):
    text: str


class RerankRequest(Body):
    inputs_field = "documents"
    batch_limit = "cohere_max_client_batch_size"
    model: str | None = None  # any name: the served reranker answers
    query: str
    documents: FailFastList[str | Document]
    top_n: StrictInt | None = Field(None, ge=1)
    return_documents: StrictBool = False
    truncate: StrictBool = False  # this server's addition: cut documents that are over max_input_length
    max_tokens_per_doc: StrictInt | None = Field(None, ge=1)  # each document cut to this many tokens (Cohere v2)
    priority: StrictInt | None = None  # Cohere v2's hint for ordering requests under load: ignored (one queue here)
    # Cohere options this server does not implement: refused when given, rather than silently ignored.
    max_chunks_per_doc: None = None
    rank_fields: None = None
    relevant_spans: None = None  # Cohere v2 (Rerank v5 models): the spans of each document that made its score


@router.post("/v1/rerank", summary="Rerank documents for a query (Cohere, Jina)")
@router.post("/v2/rerank", summary="Rerank documents for a query (Cohere v2)")
async def rerank(body: RerankRequest, request: Request) -> JSONResponse:
    texts = [d if isinstance(d, str) else d.text for d in body.documents]
    service = request.app.state.service
    document_tokens = body.max_tokens_per_doc
    if document_tokens is None and request.url.path == "/v2/rerank":
        document_tokens = COHERE_V2_DOCUMENT_TOKENS
    raw, tokens = await service.rerank(request, body.query, texts, field="documents", truncate=body.truncate,
                                       document_tokens=document_tokens)  # fmt: skip
    scores = torch.sigmoid(raw).tolist()
    order = sorted(range(len(scores)), key=lambda i: -scores[i])[: body.top_n]
    document = (lambda i: {"document": {"text": texts[i]}}) if body.return_documents else (lambda i: {})
    return JSONResponse(
        {
            "id": str(uuid.uuid4()),
            "model": request.app.state.served_names["rerank"],
            "usage": {"total_tokens": tokens},
            "results": [{"index": i, "relevance_score": scores[i], **document(i)} for i in order],
        }
    )


class EmbedRequest(Body):
    """Cohere's embed body (v1 and v2); of its types, those that do not depend on other vectors (int8 and uint8 are
    scaled by a range Cohere does not say: refused)."""

    inputs_field = "texts"
    batch_limit = "cohere_max_client_batch_size"
    texts: FailFastList[str]
    model: str | None = None  # any name: the served model answers
    input_type: Literal["search_document", "search_query", "classification", "clustering"] | None = None
    embedding_types: FailFastList[Literal["float", "binary", "ubinary"]] | None = None
    output_dimension: StrictInt | None = None
    truncate: Literal["NONE", "START", "END"] | None = "END"  # null (LangChain's default, the SDK sends it): END
    priority: StrictInt | None = None  # ignored, as on rerank
    # Cohere options this server does not implement: refused when given.
    images: None = None
    inputs: None = None
    max_tokens: None = None


@router.post("/v1/embed", summary="Embed texts (Cohere)")
@router.post("/v2/embed", summary="Embed texts (Cohere v2)")
async def embed(body: EmbedRequest, request: Request) -> JSONResponse:
    """A search_query is embedded with the query prompt (`Embedder.encode_query`'s), any other input type as it is;
    vectors normalized. v1 without embedding_types answers a list of float vectors, else each type's."""
    service = request.app.state.service
    query = body.input_type == "search_query"
    vectors, tokens = await service.embed(
        request, body.texts, field="texts", truncate=body.truncate != "NONE", left=body.truncate == "START",
        prompt=service.models["embed"].query_prompt() if query and "embed" in service.models else None,
        dimensions=body.output_dimension,
    )  # fmt: skip
    version = request.url.path[2]
    answer = {"id": str(uuid.uuid4()), "texts": body.texts,
              "meta": {"api_version": {"version": version}, "billed_units": {"input_tokens": tokens}}}  # fmt: skip
    if body.embedding_types is None and version == "1":
        return JSONResponse({**answer, "embeddings": vectors.tolist(), "response_type": "embeddings_floats"})
    types = body.embedding_types or ["float"]
    embeddings = {t: (vectors if t == "float" else quantize(vectors, t)).tolist() for t in dict.fromkeys(types)}
    return JSONResponse({**answer, "embeddings": embeddings, "response_type": "embeddings_by_type"})
