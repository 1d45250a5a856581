"""The Guard in front of every route: the API key, the route and method, admission (429, 503), the body read within
its size limit (413), and a 500 with a logged id for anything unexpected. Everything before the body is said from the
request's head, so that a client without the key, or with a request no route takes, never holds a request's place
nor has its body read. It admits requests through a small interface, `Admission`, which the Service provides."""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass, field
from typing import Protocol

from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .limits import ApiError, ClientGone, error_response, internal_error
from .metrics import Metrics

log = logging.getLogger("qwen3_embed.server")


class Admission(Protocol):
    """Counts the requests in flight: `admit` one (or raise the ApiError that refuses it), `release` it when done."""

    def admit(self) -> None: ...

    def release(self) -> None: ...


@dataclass
class Guard:
    """The ASGI layer in front of every route, in this order: the API key (all but GET /health), the route and
    its methods (404, 405, 400 for a body sent with a method other than POST, 415 for a compressed one), admission
    of POST requests (429 past `max_concurrent_requests`, 503 while shutting down), the body read in full up to
    `payload_limit` before anything parses it (413), and a generic 500 with a logged id for any unexpected error. It
    counts every answer by route and status. `routes`: each route's methods, by its path (or path template:
    `/v1/models/{model:path}`)."""

    app: ASGIApp
    service: Admission
    metrics: Metrics
    payload_limit: int
    api_key: str | None
    routes: dict[str, set[str]] = field(default_factory=dict)

    def __post_init__(self):
        self.templates = [(compile_path(path)[0], path) for path in self.routes if "{" in path]

    def route_of(self, path: str) -> str | None:
        """The route that takes `path`: its own, or the template it fits; None when none does."""
        if path in self.routes:
            return path
        return next((template for regex, template in self.templates if regex.match(path)), None)

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
            self.metrics.requests.labels(self.route_of(path) or "other", str(status)).inc()

    async def _handle(self, scope: Scope, receive: Receive, send: Send, started) -> None:
        path = scope["path"]
        admitted = False
        try:
            self._authorize(scope)
            self._route(scope)
            if scope["method"] == "POST":
                self.service.admit()
                admitted = True
            received = await read_body(scope, receive, self.payload_limit)
            if received is not None:  # None: the client left while sending it
                await self.app(scope, received, send)
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
        if self.api_key is None or (scope["method"], scope["path"]) == ("GET", "/health"):
            return
        given = next((value for name, value in scope["headers"] if name == b"authorization"), b"")
        scheme, _, token = given.partition(b" ")  # the scheme's case does not matter (RFC 9110)
        if scheme.lower() != b"bearer" or not hmac.compare_digest(token, self.api_key.encode()):
            raise ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                           "Unauthorized", cause="unauthorized", headers={"WWW-Authenticate": "Bearer"})  # fmt: skip

    def _route(self, scope: Scope) -> None:
        """404 for no such route, 405 for a method it does not take, 400 for a body on a method other than POST, 415
        for a compressed body (any Content-Encoding but identity)."""
        path, method = scope["path"], scope["method"]
        route = self.route_of(path)
        if route is None:
            raise ApiError(404, f"no route {path}; /docs lists them")
        if method not in self.routes[route]:
            allowed = ", ".join(sorted(self.routes[route]))
            raise ApiError(405, f"{method} is not allowed on {path}; use {allowed}", headers={"Allow": allowed})
        if method != "POST" and any(
            name == b"transfer-encoding" or (name == b"content-length" and int(value))
            for name, value in scope["headers"]
        ):
            raise ApiError(400, f"{method} {path} takes no body; send the request without one")
        codings = [value for name, value in scope["headers"] if name == b"content-encoding"]  # each header line
        coding = b", ".join(codings)
        if method == "POST" and any(c.strip().lower() not in (b"identity", b"") for c in coding.split(b",")):
            raise ApiError(415, f"Content-Encoding {coding.decode('latin-1')!r} is not accepted: send the body "
                           "uncompressed", headers={"Accept-Encoding": "identity"})  # fmt: skip


async def read_body(scope: Scope, receive: Receive, limit: int) -> Receive | None:
    """A receive that gives the request body, read in full unless it passes `limit` bytes (413, said before reading
    when the Content-Length announces it), then what the client sends next; None when the client disconnects first.
    The body is held once, in a buffer grown as it arrives (at most an eighth over what was sent)."""
    declared = next((value for name, value in scope["headers"] if name == b"content-length"), None)
    if declared is not None and int(declared) > limit:  # h11 has checked that it is a number
        raise too_large(f"{int(declared)} bytes", limit)
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        if len(body) + len(chunk) > limit:
            raise too_large(f"more than {limit} bytes", limit)
        body += chunk
        if not message.get("more_body", False):
            return replay(body, receive)


def too_large(size: str, limit: int) -> ApiError:
    return ApiError(413, f"the request body holds {size}, over this server's payload limit of {limit} bytes",
                    cause="payload_too_large")  # fmt: skip


def replay(body: bytearray, receive: Receive) -> Receive:
    """A receive that gives the body that was read, once (keeping no reference to it), then what the client sends
    next (its disconnect)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive_() -> Message:
        return pending.pop() if pending else await receive()

    return receive_
