"""The server's limits and errors: what a request may hold, the error bodies, and the Guard in front of every route
(API key, admission, body size, 500s with an id)."""

from __future__ import annotations

import hmac
import logging
import math
import uuid
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .metrics import Metrics

if TYPE_CHECKING:
    from .service import Service

log = logging.getLogger("qwen3_embed.server")


@dataclass(frozen=True)
class Limits:
    """What one server accepts. Each field is a `qwen3-embed serve` flag of the same name."""

    max_input_length: int | None = None  # tokens per input (default 8192, at most the model's maximum)
    max_batch_tokens: int = 16384  # tokens per request, and per drain of the queue
    max_client_batch_size: int = 32  # inputs per request
    payload_limit: int = 2_000_000  # bytes per request body
    max_concurrent_requests: int = 512  # requests in flight (POST) before 429
    max_queue_tokens: int = 131072  # tokens waiting for a model before 429
    health_stall_s: float = 60.0  # with work pending and no progress for this long, /health answers 503

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{f.name}={value} must be positive and finite")
        if self.max_input_length is not None and self.max_input_length < 2:
            raise ValueError(f"max_input_length={self.max_input_length} must be at least 2 (a token and the EOS)")
        if self.max_input_length is not None and self.max_batch_tokens < self.max_input_length:
            raise ValueError(
                f"max_batch_tokens={self.max_batch_tokens} must be at least max_input_length={self.max_input_length}"
            )
        if self.max_queue_tokens < self.max_batch_tokens:
            raise ValueError(
                f"max_queue_tokens={self.max_queue_tokens} must be at least max_batch_tokens={self.max_batch_tokens}, "
                "or a request of that size could never be queued"
            )


def check_api_key(key: str | None) -> None:
    """An API key must be printable ASCII without spaces: it travels in a header."""
    if key is not None and not (key.isascii() and key.isprintable() and key and " " not in key):
        raise ValueError("the API key must be non-empty printable ASCII without spaces (it travels in a header)")


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
    ({"error": {"message", "type", "param", "code"}}) with 400 where TEI answers 422."""
    if openai_style(path):
        status = 400 if status == 422 else status
        body = {"message": message, "type": "invalid_request_error" if status < 500 else "server_error",
                "param": None, "code": None}  # fmt: skip
        return JSONResponse({"error": body}, status, headers)
    return JSONResponse({"error": message, "error_type": kind}, status, headers)


def internal_error(path: str, error: BaseException) -> JSONResponse:
    """A 500 that tells the client only an id; the log has the id with the traceback."""
    error_id = uuid.uuid4().hex[:16]
    log.error("internal error %s on %s", error_id, path, exc_info=error)
    return error_response(path, 500, f"internal error {error_id}; the server's log has the details", "Backend")


@dataclass
class Guard:
    """The ASGI layer in front of every route, in this order: the API key (all routes but /health), admission of
    POST requests (429 past `max_concurrent_requests`, 503 while shutting down), the body read in full up to
    `payload_limit` before anything parses it (413), and a generic 500 with a logged id for any unexpected error.
    It counts every answer by route and status."""

    app: ASGIApp
    service: Service
    metrics: Metrics
    payload_limit: int
    api_key: str | None
    routes: set[str] = field(default_factory=set)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        status = 499  # until a response starts: the client left first

        async def send_(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._handle(scope, receive, send_, lambda: status != 499)
        finally:
            self.metrics.requests.labels(path if path in self.routes else "other", str(status)).inc()

    async def _handle(self, scope: Scope, receive: Receive, send: Send, started) -> None:
        path = scope["path"]
        admitted = False
        try:
            self._authorize(scope)
            if scope["method"] == "POST":
                self.service.admit()
                admitted = True
            body = await read_body(scope, receive, self.payload_limit)
            if body is not None:  # None: the client left while sending it
                await self.app(scope, replay(body, receive), send)
        except ApiError as e:
            if e.cause:
                self.metrics.reject(e.cause)
            await error_response(path, e.status, e.message, e.kind, e.headers)(scope, receive, send)
        except ClientGone:
            self.metrics.reject("client_gone")
        except Exception as e:
            if started():
                log.error("error on %s after the response started", path, exc_info=e)
            else:
                await internal_error(path, e)(scope, receive, send)
        finally:
            if admitted:
                self.service.release()

    def _authorize(self, scope: Scope) -> None:
        if self.api_key is None or scope["path"] == "/health":
            return
        given = next((value for name, value in scope["headers"] if name == b"authorization"), b"")
        scheme, _, token = given.partition(b" ")  # the scheme's case does not matter (RFC 9110)
        if scheme.lower() != b"bearer" or not hmac.compare_digest(token, self.api_key.encode()):
            raise ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                           "Unauthorized", cause="unauthorized", headers={"WWW-Authenticate": "Bearer"})  # fmt: skip


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes | None:
    """The request body, read in full unless it passes `limit` bytes (413, said before reading when the
    Content-Length announces it); None when the client disconnects first."""
    declared = next((value for name, value in scope["headers"] if name == b"content-length"), None)
    if declared is not None and int(declared) > limit:  # h11 has checked that it is a number
        raise too_large(f"{int(declared)} bytes", limit)
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(f"more than {limit} bytes", limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def too_large(size: str, limit: int) -> ApiError:
    return ApiError(413, f"the request body holds {size}, over this server's payload limit of {limit} bytes",
                    cause="payload_too_large")  # fmt: skip


def replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the body that was read, then what the client sends next (its disconnect)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive_() -> Message:
        return pending.pop() if pending else await receive()

    return receive_


def check_text(text: str, name: str, max_chars: int | None, truncate: bool) -> str:
    """A text checked before it is tokenized: valid Unicode (no lone surrogate), and at most `max_chars`
    characters, the most that can fit in the token limit; a longer one is cut to that when `truncate`, else
    refused with 413. `name` says which text it is in the errors."""
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
            return text[:max_chars]
        raise ApiError(
            413, f"{name} has {len(text)} characters; at most {max_chars} can fit in this server's max_input_length "
            "(its tokens x the longest token); shorten it or ask for truncation",
        )  # fmt: skip
    return text
