"""Running the app under uvicorn with what it lacks for abuse: a deadline for receiving each request, a cap on open
connections, a graceful shutdown that fails the queue at once, and logs that do not flood.

uvicorn times out only idle keep-alive connections (and re-arms that timer on every byte received), so a client that
never sends a request, trickles one byte at a time, or never reads its answer, holds its connection (and its
request's place) forever; its h11 protocol gets the rest here (`Protocol`).
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import math
import resource
import socket
import time
from dataclasses import dataclass

import h11
import uvicorn
from uvicorn.config import LOGGING_CONFIG
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("qwen3_embed.server.connections")
SPARE_FILES = 256  # file descriptors beyond the connections: checkpoint files, threads, logs


@dataclass(frozen=True)
class ConnectionLimits:
    """How connections are kept. Each field is a `qwen3-embed serve` flag of the same name."""

    keep_alive_s: float = 5.0  # an idle connection between requests is closed after this
    read_timeout_s: float = 30.0  # a request must arrive within this from its first byte; an answer's reader may
    # stall this long
    max_connections: int = 1024  # open connections; past it the longest-idle one is closed
    graceful_shutdown_s: float = 20.0  # on SIGTERM: how long running requests may take before the process exits

    def __post_init__(self):
        for name, value in vars(self).items():
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name}={value} must be positive and finite")


def check_port(host: str, port: int) -> None:
    """That the address can be listened on (checked before any model loads), or a clear error."""
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is outside 1..65535")
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ValueError(f"cannot listen on host {host!r}: {e.strerror}") from None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn's own socket does
            try:
                s.bind(address)
            except OSError as e:
                raise ValueError(f"cannot listen on {host}:{port}: {e.strerror}; choose another --port") from None


def reserve_files(max_connections: int) -> None:
    """Raise the soft limit on open files to what `max_connections` needs, or say what to do."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = max_connections + SPARE_FILES
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise ValueError(
                f"max_connections={max_connections} needs {needed} open files, but this process may open at most "
                f"{hard} (ulimit -Hn); lower --max-connections or raise the limit"
            )
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


class Config(uvicorn.Config):
    """uvicorn's settings for an app from create_app, with the connection limits."""

    def __init__(self, app, *, limits: ConnectionLimits, **options):
        super().__init__(app, http=Protocol, timeout_keep_alive=limits.keep_alive_s, lifespan="on",
                         timeout_graceful_shutdown=limits.graceful_shutdown_s, access_log=False, **options)  # fmt: skip
        self.limits, self.metrics = limits, app.state.metrics

    def reject(self, cause: str, message: str) -> None:
        """A connection was closed by a limit: count it, and log it (repeats held back)."""
        self.metrics.reject(cause)
        log.warning(message)


class Protocol(H11Protocol):
    """uvicorn's h11 protocol, with a deadline for receiving each request in full (armed when a connection opens
    and at the first byte of each later request, disarmed once the request is in), one for a client that stops
    taking its answer, and a cap on open connections that closes the longest-idle one (never one with a request in
    progress), or refuses the new one."""

    config: Config

    def __init__(self, config: Config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        self.deadline: asyncio.TimerHandle | None = None  # for receiving the request
        self.write_deadline: asyncio.TimerHandle | None = None  # for a client that stopped taking its answer
        self.idle_since = time.monotonic()

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()
        if len(self.connections) > self.config.limits.max_connections:
            idle = (c for c in self.connections if c.idle() and not c.transport.is_closing())
            victim = min(idle, key=lambda c: c.idle_since, default=self)
            self.config.reject("connection_limit", "closed connections over max_connections")
            victim.transport.close()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow_request()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may start a pipelined request
        self.idle_since = time.monotonic()
        self._follow_request()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self.write_deadline is not None:
            self.write_deadline.cancel()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        """The client stopped taking its answer (the buffers are full): it has read_timeout_s to take more, or the
        connection is dropped and its handler freed."""
        super().pause_writing()
        if self.write_deadline is None:
            self.write_deadline = self.loop.call_later(self.config.limits.read_timeout_s, self._stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.write_deadline is not None:
            self.write_deadline.cancel()
            self.write_deadline = None

    def idle(self) -> bool:
        """No response owed: no request or part of a request head received, or a request answered (one refused
        from its head may still be sending a body, which is dropped)."""
        return self.cycle is None or self.cycle.response_complete

    def _should_upgrade(self) -> bool:
        """Never: the server takes no WebSocket (nor h2c), so a request asking to switch is answered as the plain HTTP
        request it also is, by its route (an error in the route's shape), not with uvicorn's bare 403."""
        return False

    def send_400_response(self, msg: str) -> None:
        """The 400 for a request h11 cannot parse, in TEI's error shape."""
        body = json.dumps({"error": "the request is not valid HTTP/1.1", "error_type": "Validation"}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]  # fmt: skip
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body),
                      h11.EndOfMessage()):  # fmt: skip
            self.transport.write(self.conn.send(event))
        self.transport.close()

    def _arm(self) -> None:
        self._disarm()
        self.deadline = self.loop.call_later(self.config.limits.read_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _follow_request(self) -> None:
        """The deadline runs while part of a request is in (its head, or its head and part of its body)."""
        state = self.conn.their_state
        if state is h11.SEND_BODY or (state is h11.IDLE and self.conn.trailing_data[0]):
            if self.deadline is None:
                self._arm()
        else:
            self._disarm()

    def _stalled(self) -> None:
        self.write_deadline = None
        self.config.reject("write_timeout", "dropped connections whose client stopped taking its answer")
        self.transport.abort()  # close() would wait for the buffered answer to be taken

    def _expired(self) -> None:
        self.deadline = None
        if not self.transport.is_closing():
            self.config.reject("read_timeout", "closed connections that did not send a request within read_timeout_s")
            self.transport.close()  # a handler reading the body sees a disconnect


class Server(uvicorn.Server):
    """uvicorn serving an app from create_app; its shutdown first drains the app's service (new and queued
    requests get 503 at once), then waits up to graceful_shutdown_s for the running ones."""

    def __init__(self, app, limits: ConnectionLimits, **options):
        super().__init__(Config(app, limits=limits, **options))
        self.service = app.state.service

    async def shutdown(self, sockets=None) -> None:
        self.service.drain(self.config.limits.graceful_shutdown_s)
        await super().shutdown(sockets)


class Repeats(logging.Filter):
    """Lets the first of each message through, then at most one a `window` saying how many it held back, with
    tracebacks cut to their last line: a flood of connections makes one line per burst, not one per socket."""

    def __init__(self, window: float = 10.0):
        super().__init__()
        self.window, self.seen = window, {}

    def filter(self, record: logging.LogRecord) -> bool:
        now, key = time.monotonic(), (record.name, str(record.msg))
        shown, held = self.seen.get(key, (-self.window, 0))
        if now - shown < self.window:
            self.seen[key] = (shown, held + 1)
            return False
        self.seen[key] = (now, 0)
        if record.exc_info and record.exc_info[1] is not None:
            record.msg, record.args = f"{record.getMessage()} ({record.exc_info[1]!r})", None
            record.exc_info = None
        if held:
            record.msg, record.args = f"{record.getMessage()} (and {held} more like it)", None
        return True


def logging_config() -> dict:
    """uvicorn's logging, with this package's loggers on its handler, repeats held back, and no access log (a
    line per request floods under load; /metrics counts requests)."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {"repeats": {"()": Repeats}}
    config["loggers"]["qwen3_embed"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    for name in ("uvicorn.error", "asyncio", "qwen3_embed.server.connections"):
        config["loggers"].setdefault(name, {}).update(filters=["repeats"])
    config["loggers"]["asyncio"].update(handlers=["default"], propagate=False)
    return config


def run(app, host: str, port: int, limits: ConnectionLimits) -> None:
    """Serve an app from create_app until SIGINT or SIGTERM, then shut down gracefully."""
    Server(app, limits, host=host, port=port, log_config=logging_config()).run()
