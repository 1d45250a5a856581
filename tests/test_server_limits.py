"""The server under abuse and overload, over real HTTP against servers the tests start: body and input limits,
backpressure (429), abandoned requests, slow and idle connections, the connection cap, graceful shutdown, the API
key; and the exactness of tokenizing a rerank query once."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import threading
import time
import unicodedata
from concurrent.futures import ThreadPoolExecutor

import pytest

from checkpoints import SHARED_TOKENIZER

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from test_server import Gate, Served, reranker_fixture, scrape, wait_until  # noqa: E402, F401 (a fixture)

from qwen3_embed.reranker import Reranker, pairs  # noqa: E402
from qwen3_embed.server import ConnectionLimits, Limits, create_app  # noqa: E402
from qwen3_embed.server.service import Service  # noqa: E402
from qwen3_embed.tokenize import NFC_FOLD, TextTooLong, Tokenizer  # noqa: E402

MAX_INPUT = 512


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


class PeakRss:
    """The highest resident memory of this process (client and server threads) while the `with` runs."""

    def __enter__(self) -> PeakRss:
        self.start = self.peak = rss_bytes()
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.002)

    def __exit__(self, *exc) -> None:
        self.running = False
        self.thread.join()

    @property
    def growth(self) -> int:
        return self.peak - self.start


def figure(record_property, what: str, measured: float, bound: float, unit: str) -> None:
    """Assert that `measured` is under the test's `bound`, and record both for benchmarks/limits.py (which gathers
    them from pytest's JUnit XML into the README's limits table)."""
    record_property(what, json.dumps({"measured": measured, "bound": bound, "unit": unit}))
    assert measured < bound, (what, measured, bound)


def raw_exchange(port: int, head: bytes, chunks=()) -> tuple[int, bytes, float]:
    """Send a request head and then body chunks from a thread, while reading the answer as it comes, as a client
    that reads while it sends does: (status, body, seconds until the answer was complete)."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(10)

    def send() -> None:
        try:
            sock.sendall(head)
            for chunk in chunks:
                sock.sendall(chunk)
        except OSError:
            pass  # the server answered and closed, or this side closed: sending is over

    start = time.perf_counter()
    threading.Thread(target=send, daemon=True).start()
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    header, body = data.split(b"\r\n\r\n", 1)
    fields = dict(line.lower().split(b": ", 1) for line in header.split(b"\r\n")[1:])
    length = int(fields[b"content-length"])
    while len(body) < length:
        body += sock.recv(65536)
    seconds = time.perf_counter() - start
    sock.close()
    return int(header.split()[1]), body, seconds


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """Whether the server closes this connection within `timeout` seconds (whatever it sends first is read)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_a_50_mb_body_is_refused_at_once_in_bounded_memory(embedder, record_property):
    with Served(create_app(embedder)) as base:
        port = int(base.rsplit(":", 1)[1])
        assert httpx.post(f"{base}/embed", json={"inputs": "warm up"}).status_code == 200
        chunk = b"a" * 1_000_000
        head = b"POST /embed HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        declared = head + b"Content-Length: 50000000\r\n\r\n"
        chunked = head + b"Transfer-Encoding: chunked\r\n\r\n"
        framed = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
        for way, request_head, body in [("declared", declared, [chunk] * 50),
                                        ("chunked", chunked, [framed] * 50 + [b"0\r\n\r\n"])]:  # fmt: skip
            with PeakRss() as rss:
                status, answer, seconds = raw_exchange(port, request_head, body)
            assert status == 413 and b"over this server's payload limit of 2000000 bytes" in answer
            figure(record_property, f"a 50 MB {way} body: seconds to its 413", seconds, 0.5, "s")
            # the body is 47.7 MiB: a server holding it once fails
            figure(record_property, f"a 50 MB {way} body: memory growth", rss.growth / 2**20, 12, "MiB")
        assert httpx.get(f"{base}/health").status_code == 200


def test_an_input_over_the_character_cap_is_refused_or_cut_before_tokenizing(embedder, monkeypatch):
    limits = Limits(max_input_length=MAX_INPUT, max_batch_tokens=4096)
    cap = embedder.tokenizer.max_chars(MAX_INPUT)
    assert cap == MAX_INPUT * embedder.tokenizer.longest_token * NFC_FOLD
    seen = []
    tokenize = embedder.tokenize
    monkeypatch.setattr(embedder, "tokenize", lambda texts, *a, **k: seen.extend(texts) or tokenize(texts, *a, **k))
    with Served(create_app(embedder, limits=limits)) as base:
        refused = httpx.post(f"{base}/embed", json={"inputs": ["short", "a" * (cap + 1)]})
        assert refused.status_code == 413 and f"inputs[1] has {cap + 1} characters; at most {cap}" in refused.text
        assert seen == []  # refused before the tokenizer saw it
        text = "gravity pulls " * (cap // 10)
        cut = httpx.post(f"{base}/embed", json={"inputs": [text], "truncate": True})
        assert cut.status_code == 200 and seen == [text[:cap]]
    with pytest.warns(UserWarning):  # the whole text tokenized, then cut to the token limit: the same vector
        expected = tokenize([text], max_length=MAX_INPUT)
    assert tokenize([text[:cap]], max_length=MAX_INPUT, truncate=True, warn=False) == expected


def test_nfc_folds_at_most_nfc_fold_characters_into_one():
    longest = max(
        len(unicodedata.normalize("NFD", chr(c)))
        for c in range(0x30000)
        if unicodedata.normalize("NFC", unicodedata.normalize("NFD", chr(c))) == chr(c)
    )
    assert longest == NFC_FOLD


def tokenizers_to_check(reranker):
    yield reranker
    if (SHARED_TOKENIZER / "tokenizer.json").exists():
        real = Reranker.__new__(Reranker)
        Reranker.__init__(real, reranker.model, Tokenizer(SHARED_TOKENIZER / "tokenizer.json", 151669), None)
        yield real


PIECES = ["", " ", "  ", "\n", "\n\n", " \n", "\t", "\r\n", "中文", "日本語のテキスト", "word", "Word", "'s", "123",
          "...", ":", ">", "<|endoftext|>", "<think>", "\u0301", "e\u0301", "🙂", " x ", "—", "ﬁ", "\u1100\u1161",
          "a\u0313\u0300\u0345", "<Document>:", "  leading", "trailing  ", "\u00a0", "\u3000", "Ġ"]  # fmt: skip


def test_a_rerank_query_tokenized_once_gives_the_ids_of_each_whole_pair(reranker):
    """Reranker.tokenize_query (what /rerank uses) against Reranker.tokenize of each whole pair, with the tests'
    tokenizer and the real Qwen3 one (when present): queries and documents that start or end with spaces or
    newlines, empty ones, CJK, combining marks that NFC composes, special tokens typed in; and truncation."""
    rng = random.Random(0)
    checked = 0
    for r in tokenizers_to_check(reranker):
        for _ in range(400):
            query = "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 4)))
            documents = ["".join(rng.choice(PIECES) for _ in range(rng.randint(0, 6))) for _ in range(3)]
            assert r.tokenize_query(query, documents, max_length=4096) == r.tokenize(
                pairs(query, documents), None, 4096
            ), (query, documents)
            checked += 1
        long_docs = ["gravity " * 60, "中文 " * 80, ""]
        room = len(r.tokenize([("q", "")], None, 4096)[0]) + 20
        with pytest.warns(UserWarning):
            expected = r.tokenize(pairs("q \n", long_docs), None, room)
        with pytest.warns(UserWarning):
            assert r.tokenize_query("q \n", long_docs, max_length=room) == expected
        with pytest.raises(TextTooLong, match="leaving no room for a document"):
            r.tokenize_query("gravity " * 40, ["d"], max_length=room)
    assert checked >= 400


def test_max_chars_bounds_what_fits(reranker):
    """No text holding more than max_chars(n) characters tokenizes to n tokens or fewer: the densest texts (the
    longest tokens repeated, NFC-composable sequences) come close to the bound and stay under it."""
    for r in tokenizers_to_check(reranker):
        tokenizer = r.tokenizer
        vocab = tokenizer._tokenizer.get_vocab(with_added_tokens=True)
        longest = max(vocab, key=len)
        dense = [tokenizer._tokenizer.decode([vocab[longest]]) * 5, "a\u0313\u0300\u0345" * 50, "\u1100\u1161" * 50,
                 " " * 1000, "<|endoftext|>" * 20]  # fmt: skip
        for text in dense:
            tokens = len(tokenizer.ids(text))
            assert len(text) <= tokenizer.max_chars(tokens), (text[:20], tokens)


def overloaded_app(embedder, **limits):
    app = create_app(embedder, limits=Limits(**limits, max_wait_ms=1))
    return app, Gate(embedder)


def post_in_thread(url: str, body: dict, results: list, timeout: float = 30) -> threading.Thread:
    def post() -> None:
        try:
            results.append(httpx.post(url, json=body, timeout=timeout))
        except httpx.TimeoutException as e:
            results.append(e)

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    return thread


def test_overload_answers_429_with_retry_after_and_recovers(embedder):
    limits = dict(max_input_length=40, max_batch_tokens=64, openai_max_batch_tokens=64, max_queue_tokens=64,
                  max_concurrent_requests=3)  # fmt: skip
    app, gate = overloaded_app(embedder, **limits)
    ids = lambda n: {"input": [[7] * (n - 1)]}  # noqa: E731 (n tokens with the EOS)
    with Served(app) as base:
        worker = app.state.service.workers["embed"]
        worker.pipeline = gate
        answers: list = []
        threads = [post_in_thread(f"{base}/v1/embeddings", ids(20), answers)]
        assert gate.entered.wait(10)  # the first request holds the model
        threads.append(post_in_thread(f"{base}/v1/embeddings", ids(30), answers))
        wait_until(lambda: worker.queued_tokens == 30)
        queue_full = httpx.post(f"{base}/v1/embeddings", json=ids(40))  # 30 + 40 > max_queue_tokens=64
        assert queue_full.status_code == 429 and "limit of 64" in queue_full.json()["error"]["message"]
        threads.append(post_in_thread(f"{base}/embed", {"inputs": "x"}, answers))
        wait_until(lambda: worker.queued_requests == 2)
        for path, body in [("/embed", {"inputs": "y"}), ("/v1/embeddings", ids(2))]:
            refused = httpx.post(f"{base}{path}", json=body)
            assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
            error = refused.json()["error"]
            message = error if path == "/embed" else error["message"]
            assert "limit of 3 concurrent requests" in message
            assert path != "/embed" or refused.json()["error_type"] == "Overloaded"
        gate.opened.set()
        for thread in threads:
            thread.join(30)
        assert [a.status_code for a in answers] == [200, 200, 200]
        assert httpx.post(f"{base}/embed", json={"inputs": "again"}).status_code == 200  # service resumed
        metrics = scrape(base)
    assert metrics[("qwen3_embed_rejected_total", (("cause", "overloaded"),))] == 2
    assert metrics[("qwen3_embed_rejected_total", (("cause", "queue_full"),))] == 1
    assert metrics[("qwen3_embed_requests_total", (("route", "/v1/embeddings"), ("status", "429")))] == 2


def test_an_abandoned_request_never_reaches_the_model_and_health_sees_a_stall(embedder):
    app, gate = overloaded_app(embedder, health_stall_s=0.3)
    with Served(app) as base:
        worker = app.state.service.workers["embed"]
        worker.pipeline = gate
        answers: list = []
        running = post_in_thread(f"{base}/embed", {"inputs": "the request that runs"}, answers)
        assert gate.entered.wait(10)
        abandoned = post_in_thread(f"{base}/embed", {"inputs": "the request whose client gives up"}, answers, 0.3)
        abandoned.join(10)
        assert isinstance(answers.pop(), httpx.TimeoutException)
        wait_until(lambda: worker.queued_requests == 0)  # dropped from the queue when its client left
        time.sleep(0.3)
        stalled = httpx.get(f"{base}/health")
        assert stalled.status_code == 503 and "no progress" in stalled.json()["error"]
        gate.opened.set()
        running.join(30)
        assert answers[0].status_code == 200
        assert httpx.get(f"{base}/health").status_code == 200
        metrics = scrape(base)
    assert embedder.tokenize(["the request whose client gives up"])[0] not in gate.ran
    assert embedder.tokenize(["the request that runs"])[0] in gate.ran
    assert metrics[("qwen3_embed_rejected_total", (("cause", "client_gone"),))] == 1
    assert metrics[("qwen3_embed_requests_total", (("route", "/embed"), ("status", "499")))] == 1


def test_slow_and_idle_connections_are_closed_while_health_answers(embedder):
    limits = ConnectionLimits(read_timeout_s=0.5, keep_alive_s=0.5)
    with Served(create_app(embedder), limits) as base:
        port = int(base.rsplit(":", 1)[1])
        connect = lambda: socket.create_connection(("127.0.0.1", port))  # noqa: E731
        idle, slow_head, slow_body, kept = connect(), connect(), connect(), connect()
        slow_head.sendall(b"POST /embed HTTP/1.1\r\nHost: t\r\n")
        slow_body.sendall(b"POST /embed HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n")
        kept.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        assert kept.recv(65536).startswith(b"HTTP/1.1 200")

        def trickle() -> None:  # a byte at a time, each sooner than the keep-alive timeout
            try:
                for _ in range(30):
                    slow_head.sendall(b"X")
                    slow_body.sendall(b"a")
                    time.sleep(0.1)
            except OSError:
                pass

        threading.Thread(target=trickle, daemon=True).start()
        with httpx.Client(base_url=base) as client:
            for _ in range(3):
                start = time.perf_counter()
                assert client.get("/health").status_code == 200 and time.perf_counter() - start < 1.0
                time.sleep(0.1)
        for sock in (idle, slow_head, slow_body, kept):
            assert closed_by_server(sock, 1.5)
            sock.close()
        garbage = connect()
        garbage.sendall(b"NOT HTTP\r\n\r\n")
        answer = b"".join(iter(lambda: garbage.recv(65536), b""))
        assert answer.startswith(b"HTTP/1.1 400")
        assert json.loads(answer.split(b"\r\n\r\n")[1]) == {"error": "the request is not valid HTTP/1.1",
                                                              "error_type": "Validation"}  # fmt: skip
        metrics = scrape(base)
    assert metrics[("qwen3_embed_rejected_total", (("cause", "read_timeout"),))] == 3


def test_a_client_that_stops_taking_its_answer_is_dropped(reranker):
    """A client that sends a request and never reads its (1.3 MB) answer frees its place after read_timeout_s."""
    app = create_app(None, reranker, limits=Limits(max_input_length=MAX_INPUT, payload_limit=3_000_000))
    with Served(app, ConnectionLimits(read_timeout_s=0.5), send_buffer=4096) as base:
        body = json.dumps({"query": "q", "documents": ["gravity " * 5000] * 32, "truncate": True,
                           "return_documents": True}).encode()  # fmt: skip
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", int(base.rsplit(":", 1)[1])))
        head = b"POST /v1/rerank HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        sock.sendall(head % len(body) + body)
        registry = app.state.metrics.registry
        wait_until(lambda: registry.get_sample_value("qwen3_embed_rejected_total", {"cause": "write_timeout"}) == 1,
                   timeout=20)  # fmt: skip
        wait_until(lambda: app.state.service.in_flight == 0)
        assert httpx.get(f"{base}/health").status_code == 200
        sock.close()


def test_past_max_connections_the_longest_idle_is_closed(embedder):
    with Served(create_app(embedder), ConnectionLimits(max_connections=4)) as base:
        port = int(base.rsplit(":", 1)[1])
        idle = []
        for _ in range(4):
            idle.append(socket.create_connection(("127.0.0.1", port)))
            time.sleep(0.02)
        with httpx.Client(base_url=base) as client:  # the fifth connection
            assert client.get("/health").status_code == 200
            assert closed_by_server(idle[0], 1.0)
            assert not any(closed_by_server(s, 0.05) for s in idle[1:])
            metrics = scrape(base, client)
    assert metrics[("qwen3_embed_rejected_total", (("cause", "connection_limit"),))] == 1
    for s in idle:
        s.close()


@pytest.mark.parametrize("wedged", [False, True])
def test_graceful_shutdown_finishes_the_running_fails_the_queued_and_keeps_its_deadline(embedder, wedged):
    """SIGTERM's path: the queued request is answered 503 while the running one still holds the model; the
    running one then finishes and the server exits, or, when it never finishes, the server exits at the deadline."""
    app, gate = overloaded_app(embedder)
    deadline = 1.0 if wedged else 5.0
    served = Served(app, ConnectionLimits(graceful_shutdown_s=deadline))
    base = served.__enter__()
    worker = app.state.service.workers["embed"]
    worker.pipeline = gate
    answers: list = []
    running = post_in_thread(f"{base}/embed", {"inputs": "running"}, answers)
    assert gate.entered.wait(10)
    queued = post_in_thread(f"{base}/embed", {"inputs": "queued"}, answers)
    wait_until(lambda: worker.queued_requests == 1)
    start = time.monotonic()
    served.server.should_exit = True  # what SIGTERM does
    queued.join(10)  # answered while the gate still holds the running request
    refused = answers.pop()
    assert refused.status_code == 503 and refused.json() == {"error": "the server is shutting down",
                                                             "error_type": "Unhealthy"}  # fmt: skip
    if not wedged:
        gate.opened.set()
    served.thread.join(10)
    stopped = time.monotonic() - start
    gate.opened.set()  # lets a wedged worker go
    running.join(10)
    if wedged:
        assert deadline <= stopped < deadline + 1.5, stopped  # the deadline, not the batch, ended it
    else:
        assert stopped < deadline and answers[0].status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base}/health")
    served.listener.close()


def test_the_api_key_guards_every_route_but_health(embedder, reranker):
    app = create_app(embedder, reranker, api_key="k3y")
    with Served(app) as base, httpx.Client(base_url=base) as client:
        schema = client.get("/openapi.json", headers={"Authorization": "Bearer k3y"}).json()
        routes = [(method.upper(), path) for path, item in schema["paths"].items() for method in item]
        routes += [("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/redoc"), ("GET", "/nope")]
        assert len(routes) >= 12
        for method, path in routes:
            for header in [None, "Bearer wrong", "k3y", "Bearer k3y2", "Basic k3y"]:
                response = client.request(method, path, headers={"Authorization": header} if header else {})
                if path == "/health":
                    assert response.status_code == 200
                    continue
                assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer", (path, header)
                error = response.json()["error"]
                assert "API key" in (error["message"] if path.startswith(("/v1/", "/v2/")) else error)
            for header in ["Bearer k3y", "bearer k3y"]:
                assert client.request(method, path, headers={"Authorization": header}).status_code != 401, path


def statuses(sockets: list[socket.socket], timeout: float) -> list[int | None]:
    """The status of the answer the server sends on each socket within `timeout` seconds in all; None where it
    sends none (or closes the connection first)."""
    deadline, found = time.monotonic() + timeout, []
    for sock in sockets:
        data = b""
        try:
            while b"\r\n" not in data:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                if not (chunk := sock.recv(65536)):
                    break
                data += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        found.append(int(data.split()[1]) if b"\r\n" in data else None)
    return found


def connect_all(port: int, heads: list[bytes]) -> list[socket.socket]:
    sockets = []
    for head in heads:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(head)
        sockets.append(sock)
    return sockets


def test_clients_without_the_key_take_no_place_a_keyed_client_needs(embedder, record_property):
    """512 sockets each send POST /health (the route open to all) with a Content-Length of 1000 and 3 bytes of body,
    and more send a keyed route without the key, a method a route does not take, or a GET with a body: each is
    answered from its head (none is admitted, none has its body read), and a keyed /embed is served; then 200 more
    such sockets, past --max-connections, close answered ones rather than refuse the keyed client."""
    key = {"Authorization": "Bearer k3y"}
    app = create_app(embedder, api_key="k3y")
    with Served(app, ConnectionLimits(max_connections=900)) as base, httpx.Client(base_url=base, headers=key) as client:
        port = int(base.rsplit(":", 1)[1])
        flood = [b"POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\nabc"] * 512
        flood += [b"POST /embed HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\nabc"] * 100
        flood += [b"GET /health HTTP/1.1\r\nHost: t\r\nContent-Length: 2000000\r\n\r\nabc"] * 100
        flood += [b"PUT /embed HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer k3y\r\nContent-Length: 1000\r\n\r\n"] * 100
        sockets = connect_all(port, flood)
        assert statuses(sockets, 5) == [401] * 612 + [400] * 100 + [405] * 100
        assert app.state.service.in_flight == 0
        start = time.perf_counter()
        assert client.post("/embed", json={"inputs": "hello"}, timeout=5).status_code == 200
        held = "812 sockets without the key or with a wrong method held open: a keyed /embed's seconds"
        figure(record_property, held, time.perf_counter() - start, 5, "s")
        sockets += connect_all(port, flood[:200])
        with httpx.Client(base_url=base, headers=key) as fresh:  # a new connection, past max_connections
            assert fresh.post("/embed", json={"inputs": "hello"}, timeout=5).status_code == 200
        assert client.get("/health").status_code == 200
    for sock in sockets:
        sock.close()


def test_a_body_on_a_method_other_than_post_is_refused_from_the_head(embedder, record_property):
    """400 connections each announce a 2 MB body on GET /health: each is answered (400) before it sends a byte of
    it, and the bodies they then send are dropped as they arrive."""
    with Served(create_app(embedder)) as base:
        port = int(base.rsplit(":", 1)[1])
        sockets = connect_all(port, [b"GET /health HTTP/1.1\r\nHost: t\r\nContent-Length: 2000000\r\n\r\n"] * 400)
        with PeakRss() as rss:
            assert statuses(sockets, 5) == [400] * 400
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda sock: sock.sendall(b"a" * 2_000_000), sockets))
            assert httpx.get(f"{base}/health").status_code == 200
        figure(record_property, "400 GET /health with 2 MB bodies each: memory growth", rss.growth / 2**20, 100, "MiB")
    for sock in sockets:
        sock.close()


def test_bodies_waiting_to_be_parsed_are_held_once(embedder, record_property, monkeypatch):
    """100 sockets each POST /embed with 2 MB of junk (no API key), all read before the first is parsed: each body
    is held once, so memory grows by not much more than the 191 MiB sent (it grew by 420 MiB, and by 540 MiB without
    holding them back, when the server kept the chunks read joined, Starlette's join of that, and for each refused
    body the text the JSON parser had decoded, as the context of the 422)."""
    count, junk = 100, (bytes(range(256)) * 7813)[:2_000_000]
    with Served(create_app(embedder)) as base:
        port = int(base.rsplit(":", 1)[1])
        assert httpx.post(f"{base}/embed", json={"inputs": "warm up"}).status_code == 200
        read, parse_later = [], Service._in_thread

        async def all_read_first(threads, work, gone):  # each body waits here, read, until all are
            read.append(1)
            while len(read) < count:
                await asyncio.sleep(0.01)
            return await parse_later(threads, work, gone)

        monkeypatch.setattr(Service, "_in_thread", staticmethod(all_read_first))
        sockets = connect_all(port, [b"POST /embed HTTP/1.1\r\nHost: t\r\nContent-Length: 2000000\r\n\r\n"] * count)
        with PeakRss() as rss:
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda sock: sock.sendall(junk), sockets))
            assert statuses(sockets, 60) == [422] * count and len(read) == count
        sent = count * len(junk) / 2**20
        figure(record_property, f"{count} POST /embed of 2 MB each, all held: memory growth over the {sent:.0f} MiB "
               "sent", rss.growth / 2**20, 1.5 * sent, "MiB")  # fmt: skip
    for sock in sockets:
        sock.close()


def test_a_body_of_a_million_elements_is_refused_at_once_in_few_words(embedder, record_property):
    """Three 2 MB bodies at once of a million token ids and a string (OpenAI's route), and one of a million ids
    where TEI takes texts: each is refused within seconds with an error of a few hundred bytes while /health keeps
    answering; a body within the counts whose every element is wrong names its first wrong one."""
    million = b",".join([b"1"] * 985_000)
    bodies = [("/v1/embeddings", b'{"input": [' + million + b', "a"]}')] * 3
    bodies.append(("/embed", b'{"inputs": [' + b",".join([b"1"] * 990_000) + b"]}"))
    with Served(create_app(embedder)) as base, PeakRss() as rss:
        answers: list = []

        def post(path: str, body: bytes) -> None:
            start = time.perf_counter()
            response = httpx.post(f"{base}{path}", content=body, headers={"Content-Type": "application/json"},
                                  timeout=60)  # fmt: skip
            answers.append((response, time.perf_counter() - start))

        threads = [threading.Thread(target=post, args=body, daemon=True) for body in bodies]
        for thread in threads:
            thread.start()
        slowest_health = 0.0
        while any(thread.is_alive() for thread in threads):
            start = time.perf_counter()
            assert httpx.get(f"{base}/health", timeout=60).status_code == 200
            slowest_health = max(slowest_health, time.perf_counter() - start)
            time.sleep(0.02)
        wrong = httpx.post(f"{base}/v1/embeddings", json={"input": [["a"] * 8000, ["b"] * 8000]})
    assert sorted(response.status_code for response, _ in answers) == [413] * 4
    four = "four 2 MB bodies of a million token ids at once"
    figure(record_property, f"{four}: the slowest 413's seconds", max(seconds for _, seconds in answers), 5, "s")
    figure(record_property, f"{four}: the longest answer", max(len(r.content) for r, _ in answers), 1000, "bytes")
    for response, _ in answers:
        error = response.json()["error"]
        message = error if response.request.url.path == "/embed" else error["message"]
        assert message in ("input[0] holds 985001 token ids; with the EOS that is more than the server's "
                           "--max-input-length=8192", "inputs holds 990000 inputs, more than the server's "
                           "--max-client-batch-size=32; send fewer inputs per request")  # fmt: skip
    figure(record_property, f"{four}: the slowest /health meanwhile", slowest_health, 2, "s")
    figure(record_property, f"{four}: memory growth (client too)", rss.growth / 2**20, 300, "MiB")
    assert wrong.status_code == 400 and len(wrong.content) < 1000
    assert wrong.json()["error"]["message"] == ('input must be a string, a list of strings, a list of token ids or a '
                                                'list of lists of token ids; input[0][0] is "a"')  # fmt: skip


def test_token_ids_count_toward_the_token_budget(embedder):
    """Token ids are held to the route's tokens per request (OpenAI's 300,000 on /v1/embeddings) as texts are: 37 or
    48 lists of 8191 ids (with their EOS, 303,104 and 393,216 tokens) are refused with 413 before they are queued; a
    request that can never run is never a 429."""
    with Served(create_app(embedder)) as base:
        for n in (37, 48):
            response = httpx.post(f"{base}/v1/embeddings", json={"input": [[100] * 8191] * n}, timeout=10)
            assert response.status_code == 413, response.text
            message = (f"the inputs hold {n * 8192} tokens, more than the server's --openai-max-batch-tokens=300000; "
                       "send fewer or shorter inputs per request")  # fmt: skip
            assert response.json()["error"]["message"] == message
        fits = httpx.post(f"{base}/v1/embeddings", json={"input": [[100] * 8191, [100] * 10]}, timeout=60)
        assert fits.status_code == 200 and fits.json()["usage"]["total_tokens"] == 8192 + 11


def test_a_dead_worker_answers_503_at_once(embedder, record_property):
    """When the model's thread dies (here a SystemExit in the model call), the request it was running and the one
    queued behind it are answered 503, and so is every later request, at once; /health says why."""

    class Dying:
        def __init__(self):
            self.entered, self.go = threading.Event(), threading.Event()

        def run(self, ids, head, progress=None):
            self.entered.set()
            assert self.go.wait(10)
            raise SystemExit(1)

    app = create_app(embedder, limits=Limits(max_wait_ms=1))
    with Served(app) as base:
        worker = app.state.service.workers["embed"]
        worker.pipeline = dying = Dying()
        answers: list = []
        threads = [post_in_thread(f"{base}/embed", {"inputs": "running"}, answers, timeout=5)]
        assert dying.entered.wait(10)
        threads.append(post_in_thread(f"{base}/embed", {"inputs": "queued"}, answers, timeout=5))
        wait_until(lambda: worker.queued_requests == 1)
        dying.go.set()
        for thread in threads:
            thread.join(10)
        stopped = "the embed worker stopped (SystemExit); restart the server"
        assert [(a.status_code, a.json()["error"]) for a in answers] == [(503, stopped)] * 2, answers
        start = time.perf_counter()
        later = httpx.post(f"{base}/v1/embeddings", json={"input": "later"}, timeout=5)
        assert later.status_code == 503 and later.json()["error"]["message"] == stopped
        died = "a request after the model's thread died: seconds to its 503"
        figure(record_property, died, time.perf_counter() - start, 1, "s")
        health = httpx.get(f"{base}/health")
        assert health.status_code == 503 and health.json()["error"] == "the embed worker stopped"


def test_work_for_clients_that_left_is_dropped_from_the_tokenizing_threads(embedder, record_property):
    """Thirty 1.9 MB requests (32 texts of 60 KB each) sent and dropped: their places are freed at once, the
    tokenizing threads finish only what they had started, and a following request is answered within seconds
    (31 s on this 2-core machine while every dropped request was still tokenized)."""
    app = create_app(embedder)
    body = json.dumps({"inputs": ["gravity pulls " * 4285] * 32}).encode()
    head = b"POST /embed HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    with Served(app) as base:
        service = app.state.service
        sockets = connect_all(int(base.rsplit(":", 1)[1]), [head % len(body) + body] * 30)
        wait_until(lambda: service.in_flight == 30)
        time.sleep(0.2)
        for sock in sockets:
            sock.close()
        wait_until(lambda: service.in_flight == 0, timeout=1)
        start = time.perf_counter()
        assert httpx.post(f"{base}/embed", json={"inputs": "hello"}, timeout=60).status_code == 200
        dropped = "thirty 1.9 MB requests sent and dropped: a following /embed's seconds"
        figure(record_property, dropped, time.perf_counter() - start, 6, "s")


def test_texts_of_a_token_a_character_are_tokenized_only_as_far_as_they_can_fit(embedder, record_property):
    """A text of a token a character ("7 7 7 ...") under the character cap, which allows a token its vocabulary's
    longest (128 characters in Qwen's), was tokenized whole only to be refused or cut (an attacker trial reported
    four 2 MB ones at once to /tokenize and /embed taking the server from 0.68 to 2.8 GB with the real tokenizer).
    Now read in pieces (Tokenizer.tokens_within): refused, or cut, having tokenized about what can fit."""
    text = "7 " * 200_000  # under both routes' caps with the tests' tokenizer
    bodies = [("/tokenize", {"inputs": text})] * 2 + [
        ("/embed", {"inputs": text}),
        ("/embed", {"inputs": text, "truncate": True}),
    ]
    with Served(create_app(embedder)) as base, PeakRss() as rss, ThreadPoolExecutor(4) as pool:
        start = time.perf_counter()
        answers = list(pool.map(lambda b: httpx.post(f"{base}{b[0]}", json=b[1], timeout=60), bodies))
        seconds = time.perf_counter() - start
    assert [a.status_code for a in answers] == [413, 413, 413, 200], [a.text[:200] for a in answers]
    assert "inputs[0] holds more than the server's --max-batch-tokens=16384 tokens" in answers[0].json()["error"]
    assert "the longest has at least" in answers[2].json()["error"]
    four = "four 0.4 MB texts of a token a character at once (/tokenize and /embed)"
    figure(record_property, f"{four}: seconds", seconds, 10, "s")
    growth = rss.growth / 2**20  # 474 MiB when each was tokenized whole
    figure(record_property, f"{four}: memory growth (client too)", growth, 250, "MiB")
