"""`qwen3-embed serve`: the HTTP server (TEI, OpenAI and Cohere/Jina compatible). The flags are parsed here; the
server checks them all before any model loads (see server.serve)."""

from __future__ import annotations

import argparse
import os

from .common import DEVICE, EMBEDDING_MODEL, add_command, add_model, loading

LIMITS = (
    "max_input_length",
    "max_batch_tokens",
    "max_client_batch_size",
    "cohere_max_client_batch_size",
    "openai_max_client_batch_size",
    "openai_max_batch_tokens",
    "payload_limit",
    "max_concurrent_requests",
    "max_queue_tokens",
    "health_stall_s",
    "max_wait_ms",
)
CONNECTIONS = ("keep_alive_s", "read_timeout_s", "max_connections", "graceful_shutdown_s")


def add_parser(commands) -> None:
    p = add_command(commands, "serve", "serve TEI, OpenAI and Cohere/Jina compatible HTTP endpoints", (DEVICE,))
    add_model(p, EMBEDDING_MODEL, "embedding model: hub id or local folder")
    p.add_argument(
        "--reranker", help="reranker model to serve on /rerank, /v1/rerank and /v2/rerank: hub id or local folder"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 for every interface")
    p.add_argument("--port", type=int, default=8080, help="port to listen on")
    p.add_argument(
        "--served-model-name",
        help="the embedding model's name in /info, /v1/models and responses (default: its hub id, or its folder's "
        "name; never a local path)",
    )
    p.add_argument("--served-reranker-name", help="the reranker's name there (default: as for the model)")
    p.add_argument(
        "--api-key",
        help="require 'Authorization: Bearer KEY' on every request but GET /health (default: $QWEN3_EMBED_API_KEY, "
        "else no key)",
    )
    add_request_limits(p)
    add_queue_limits(p)
    add_connections(p)
    p.set_defaults(run=run)


def add_request_limits(p: argparse.ArgumentParser) -> None:
    """The flags of server.Limits (one per field) that bound a request."""
    p.add_argument("--max-input-length", type=int, help="tokens per input (default 8192, at most the model's)")
    p.add_argument(
        "--max-batch-tokens",
        type=int,
        default=16384,
        help="tokens per drain of the queue (the batch budget, as TEI's); every input must fit in it",
    )
    p.add_argument(
        "--max-client-batch-size",
        type=int,
        default=32,
        help="inputs (texts, documents, sentences, id lists) per request on TEI's routes",
    )
    p.add_argument(
        "--cohere-max-client-batch-size",
        type=int,
        default=1000,
        help="documents or texts per request on Cohere's (and Jina's) routes: /v1/rerank, /v2/rerank, /v1/embed, "
        "/v2/embed",
    )
    p.add_argument(
        "--openai-max-client-batch-size", type=int, default=2048, help="inputs per request on /v1/embeddings"
    )
    p.add_argument(
        "--openai-max-batch-tokens",
        type=int,
        default=300_000,
        help="tokens per request on /v1/embeddings (OpenAI's limit; run in passes of the batch budget)",
    )
    p.add_argument(
        "--payload-limit",
        type=int,
        default=2_000_000,
        help="bytes per request body; a larger body is refused (413) before it is parsed",
    )


def add_queue_limits(p: argparse.ArgumentParser) -> None:
    """The flags of server.Limits (one per field) for the requests together: admission, queue and batching."""
    p.add_argument(
        "--max-concurrent-requests",
        type=int,
        default=512,
        help="POST requests in flight (with the key, to a POST route); past it a request is refused with 429 and "
        "Retry-After",
    )
    p.add_argument(
        "--max-queue-tokens",
        type=int,
        default=600_000,
        help="tokens waiting for each model; past it a request is refused with 429, and one of more tokens, which "
        "could never be queued, with 413",
    )
    p.add_argument("--max-wait-ms", type=float, default=2.0, help="how long an idle worker waits to fill a batch")
    p.add_argument("--no-batching", action="store_true", help="run each request alone (for comparison)")
    p.add_argument(
        "--accept-foreign-token-ids",
        action="store_true",
        help="embed token ids on /v1/embeddings as they are, even those that look like another tokenizer's (by "
        "default a request is refused when a clear share of its id lists change when decoded and tokenized again)",
    )
    p.add_argument(
        "--health-stall-s",
        type=float,
        default=60.0,
        help="/health answers 503 when a model has had work but no progress for this long",
    )


def add_connections(p: argparse.ArgumentParser) -> None:
    """The flags of server.ConnectionLimits, one per field."""
    p.add_argument("--keep-alive-s", type=float, default=5.0, help="close a connection idle this long between requests")
    p.add_argument(
        "--read-timeout-s",
        type=float,
        default=30.0,
        help="close a connection whose request (head and body; a new connection's first) has not fully arrived this "
        "long after it began, or whose client has stopped taking its answer for this long",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=1024,
        help="open connections; past it the longest-idle one is closed",
    )
    p.add_argument(
        "--graceful-shutdown-s",
        type=float,
        default=20.0,
        help="on SIGTERM or Ctrl-C: queued requests get 503 at once; running ones may finish for this long",
    )


def run(args: argparse.Namespace) -> None:
    try:
        from .. import server
    except ImportError as e:
        raise SystemExit(f"the server needs its extra ({e}): pip install 'qwen3-embed-triton[server]'") from None
    limits = server.Limits(**{name: getattr(args, name) for name in LIMITS}, batching=not args.no_batching,
                           accept_foreign_token_ids=args.accept_foreign_token_ids)  # fmt: skip
    connections = server.ConnectionLimits(**{name: getattr(args, name) for name in CONNECTIONS})
    server.serve(
        args.model,
        args.reranker,
        **loading(args),
        host=args.host,
        port=args.port,
        api_key=args.api_key if args.api_key is not None else os.environ.get("QWEN3_EMBED_API_KEY") or None,
        served_model_name=args.served_model_name,
        served_reranker_name=args.served_reranker_name,
        limits=limits,
        connections=connections,
    )
