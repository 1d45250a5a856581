"""Prometheus metrics (prometheus-client), in a registry of the app's own, and `GET /metrics`."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

router = APIRouter()


class Metrics:
    """What the server counts and times. Labels: `route` (the route's path, or "other" for an unknown one),
    `status`, `model` ("embed" or "rerank"), `cause` (of a refusal: see `Metrics.reject`)."""

    def __init__(self):
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "qwen3_embed_requests", "HTTP requests answered, by route and status (499: the client left first)",
            ["route", "status"], registry=registry,
        )  # fmt: skip
        self.rejected = Counter(
            "qwen3_embed_rejected", "Requests refused or dropped and connections closed, by cause", ["cause"],
            registry=registry,
        )  # fmt: skip
        self.queue_requests = Gauge("qwen3_embed_queue_requests", "Requests waiting for the model", ["model"],
                                    registry=registry)  # fmt: skip
        self.queue_tokens = Gauge("qwen3_embed_queue_tokens", "Tokens waiting for the model", ["model"],
                                  registry=registry)  # fmt: skip
        self.batch_tokens = Histogram(
            "qwen3_embed_batch_tokens", "Tokens per forward pass", ["model"],
            buckets=[2**i for i in range(4, 17)], registry=registry,
        )  # fmt: skip
        self.queue_seconds = Histogram("qwen3_embed_queue_seconds", "Time a request waited in the queue",
                                       ["model"], registry=registry)  # fmt: skip
        self.inference_seconds = Histogram(
            "qwen3_embed_inference_seconds", "Time the model took for one batch of queued requests", ["model"],
            registry=registry,
        )  # fmt: skip
        self.tokens = Counter("qwen3_embed_tokens", "Tokens run through the model", ["model"], registry=registry)

    def reject(self, cause: str) -> None:
        """Count a refusal: unauthorized, payload_too_large, overloaded, queue_full, shutting_down, worker_stopped,
        client_gone (a request dropped because its client left), read_timeout, write_timeout, connection_limit
        (connections closed)."""
        self.rejected.labels(cause).inc()


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    service, metrics = request.app.state.service, request.app.state.metrics
    for name, worker in service.workers.items():
        metrics.queue_requests.labels(name).set(worker.queued_requests)
        metrics.queue_tokens.labels(name).set(worker.queued_tokens)
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
