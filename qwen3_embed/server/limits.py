"""The server's limits and errors: what a server accepts and how it batches (every `qwen3-embed serve` flag's
check, made before any model loads), what a request may hold, and the error bodies."""

from __future__ import annotations

import logging
import math
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, fields

from starlette.responses import JSONResponse

from ..checks import DEFAULT_MAX_LENGTH, check_int
from ..config import Qwen3Config

log = logging.getLogger("qwen3_embed.server")
MESSAGE_CHARS = 2000  # of an error message
COHERE_ROUTES = ("/v1/rerank", "/v2/rerank", "/v1/embed", "/v2/embed")  # also Jina's /v1/rerank


@dataclass(frozen=True)
class Limits:
    """What one server accepts, and how it batches. Each field is a `qwen3-embed serve` flag of the same name
    (`batching`: not --no-batching); each is checked when the Limits are made, and against the models' configs by
    `input_length`, all before any model loads."""

    max_input_length: int | None = None  # tokens per input (default 8192, at most the model's maximum)
    max_batch_tokens: int = 16384  # tokens per drain of the queue (TEI's batch budget): an input must fit in it
    max_client_batch_size: int = 32  # inputs per request on TEI's routes (TEI's default)
    cohere_max_client_batch_size: int = 1000  # documents or texts per request on Cohere's (and Jina's) routes
    openai_max_client_batch_size: int = 2048  # inputs per request on /v1/embeddings (OpenAI's limit)
    openai_max_batch_tokens: int = 300_000  # tokens per request on /v1/embeddings (OpenAI's limit)
    payload_limit: int = 2_000_000  # bytes per request body
    max_concurrent_requests: int = 512  # requests in flight (POST) before 429
    # Tokens waiting for a model before 429 (two of OpenAI's largest requests); a request of more tokens, which could
    # never be queued, is 413 (on every route but /v1/embeddings, whose own limit is lower).
    max_queue_tokens: int = 600_000
    health_stall_s: float = 60.0  # with work pending and no progress for this long, /health answers 503
    max_wait_ms: float = 2.0  # how long an idle worker waits for more requests to batch
    batching: bool = True  # False: each request runs alone (for comparison)
    accept_foreign_token_ids: bool = False  # True: embed token ids that look like another tokenizer's as they are

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("max_wait_ms", "batching", "accept_foreign_token_ids") or value is None:
                continue  # max_wait_ms may be 0 (checked below)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{f.name}={value} must be positive and finite")
        if not (math.isfinite(self.max_wait_ms) and self.max_wait_ms >= 0):
            raise ValueError(f"max_wait_ms={self.max_wait_ms:g} must be a finite number of at least 0")
        if self.max_input_length is not None and self.max_input_length < 2:
            raise ValueError(f"max_input_length={self.max_input_length} must be at least 2 (a token and the EOS)")
        for limit in ("max_batch_tokens", "openai_max_batch_tokens"):
            if self.max_queue_tokens < getattr(self, limit):
                raise ValueError(
                    f"max_queue_tokens={self.max_queue_tokens} must be at least {limit}={getattr(self, limit)}, or a "
                    "request of that size could never be queued"
                )

    def input_length(self, configs: Sequence[Qwen3Config]) -> int:
        """The tokens an input may hold on a server of models of these configs: max_input_length (default 8192), at
        most each model's maximum sequence length; each route's tokens per request must hold an input of that length."""
        positions = [config.max_position_embeddings for config in configs]
        if self.max_input_length is None:
            length = min(DEFAULT_MAX_LENGTH, *positions)
        else:
            for limit in positions:
                check_int("max_input_length", self.max_input_length, 2, limit, "the model's maximum sequence length")
            length = self.max_input_length
        for limit in ("max_batch_tokens", "openai_max_batch_tokens"):
            if getattr(self, limit) < length:
                raise ValueError(f"{limit}={getattr(self, limit)} must be at least max_input_length={length}")
        return length

    def check_request_tokens(self, tokens: int, limit: str = "max_queue_tokens") -> None:
        """413 for a request of more tokens than its route's `limit` (max_queue_tokens, openai_max_batch_tokens on
        /v1/embeddings, max_batch_tokens on /tokenize): it may never run (nor wait in a queue, which holds
        max_queue_tokens, at least any other)."""
        if tokens > getattr(self, limit):
            raise ApiError(413, f"the inputs hold {tokens} tokens, more than {limit}={getattr(self, limit)}; send "
                           "fewer or shorter inputs per request")  # fmt: skip


def check_api_key(key: str | None) -> None:
    """An API key must be printable ASCII without spaces: it travels in a header."""
    if key is not None and not (key.isascii() and key.isprintable() and key and " " not in key):
        raise ValueError("the API key must be non-empty printable ASCII without spaces (it travels in a header)")


# A limit as the library or a Limits field names it with its value, and the serve flag of a library name.
FLAG_OF = {"max_length": "max_input_length"}
LIMIT_NAMED = re.compile(rf"(?<![\w-])({'|'.join([*FLAG_OF, *(f.name for f in fields(Limits))])})=([\d.]+\d|\d)")


class ApiError(Exception):
    """An error answered with `status`; `kind` is TEI's error_type; `cause` (a Metrics.reject cause) counts it as
    a refusal."""

    def __init__(self, status: int, message: str, kind: str = "Validation", *, cause: str | None = None,
                 headers: dict[str, str] | None = None):  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.kind, self.cause = status, message, kind, cause
        self.headers = headers or {}


class ClientGone(Exception):
    """The client closed its connection before its answer was ready."""


def openai_style(path: str) -> bool:
    """Routes under /v1/ and /v2/ (OpenAI, Cohere, Jina) answer errors in OpenAI's shape."""
    return path.startswith(("/v1/", "/v2/"))


def error_response(path: str, status: int, message: str, kind: str, headers: dict[str, str] | None = None):
    """TEI's error body ({"error", "error_type"}), or under /v1/ and /v2/ OpenAI's
    ({"error": {"message", "type", "param", "code"}}) with 400 where TEI answers 422, and on Cohere's (and Jina's)
    routes the message too as Cohere's "message" and Jina's "detail" (which their clients read); the message
    in an HTTP client's terms (`for_clients`). A message past MESSAGE_CHARS (one that quotes what a client sent) is
    cut there, after a lone surrogate it quotes (JSON's \\ud800, which UTF-8 cannot hold) is written as its escape."""
    message = for_clients(message, path).encode("utf-8", "backslashreplace").decode("utf-8")
    if len(message) > MESSAGE_CHARS:
        message = f"{message[:MESSAGE_CHARS]}... (cut)"
    if openai_style(path):
        status = 400 if status == 422 else status
        body = {"message": message, "type": "invalid_request_error" if status < 500 else "server_error",
                "param": None, "code": None}  # fmt: skip
        others = {"message": message, "detail": message} if path in COHERE_ROUTES else {}
        return JSONResponse({"error": body, **others}, status, headers)
    return JSONResponse({"error": message, "error_type": kind}, status, headers)


def for_clients(message: str, path: str) -> str:
    """A message of the library or the server in the terms of an HTTP client: the library's advice as what the
    client can send (`"truncate": true`, not `truncate=True`; the server's limit is not the client's to raise), and a
    limit named as the server's flag for its operator (`max_batch_tokens=16384`: `the server's
    --max-batch-tokens=16384`; the library's max_length is the server's --max-input-length)."""
    truncate = '"parameters": {"truncate": true}' if path == "/similarity" else '"truncate": true'
    message = message.replace("raise max_length, or pass truncate=True", f"or send {truncate} in the body")
    return LIMIT_NAMED.sub(lambda m: f"the server's --{FLAG_OF.get(m[1], m[1]).replace('_', '-')}={m[2]}", message)


def internal_error(path: str, error: BaseException) -> JSONResponse:
    """A 500 that tells the client only an id; the log has the id with the traceback."""
    error_id = uuid.uuid4().hex[:16]
    log.error("internal error %s on %s", error_id, path, exc_info=error)
    return error_response(path, 500, f"internal error {error_id}; the server's log has the details", "Backend")


def check_text(text: str, name: str, max_chars: int | None, truncate: bool, left: bool = False) -> str:
    """A text checked before it is tokenized: valid Unicode (no lone surrogate), and at most `max_chars`
    characters, the most that can fit in the token limit; a longer one is cut to that when `truncate` (its start
    when `left`, else its end), else refused with 413. `name` says which text it is in the errors."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ApiError(
                422, f"{name} is not valid Unicode: it holds the lone surrogate U+{ord(text[e.start]):04X} at "
                f"character {e.start}; send UTF-8 text", "Tokenizer",
            ) from None  # fmt: skip
    if max_chars is not None and len(text) > max_chars:
        if truncate:
            return text[-max_chars:] if left else text[:max_chars]
        raise ApiError(
            413, f"{name} has {len(text)} characters; at most {max_chars} can fit in this server's max_input_length "
            "(its tokens x the longest token); shorten it or ask for truncation",
        )  # fmt: skip
    return text
