"""The HTTP server's APIs (TEI, OpenAI, Cohere/Jina, metrics), started on a free loopback port and spoken to over
HTTP with real clients. Its limits under abuse and overload are in test_server_limits.py."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from checkpoints import CORPUS, SHARED_TOKENIZER, TINY_SHAPES, make_reranker_checkpoint, texts_of_lengths

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
prometheus_parser = pytest.importorskip("prometheus_client.parser")

from qwen3_embed.cli import main  # noqa: E402
from qwen3_embed.reranker import Reranker  # noqa: E402
from qwen3_embed.server import BatchingWorker, ConnectionLimits, Limits, create_app, served_name  # noqa: E402
from qwen3_embed.server.connections import Server  # noqa: E402
from qwen3_embed.server.limits import COHERE_ROUTES  # noqa: E402
from qwen3_embed.server.token_ids import RoundTrip  # noqa: E402
from qwen3_embed.tokenize import Tokenizer  # noqa: E402

QUERY = "What is the capital of China?"
MAX_INPUT = 512


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """An app from create_app, served as `qwen3-embed serve` serves it, in a thread, for the duration of a `with`;
    `send_buffer` shrinks the kernel's send buffer of its connections (bytes)."""

    def __init__(self, app, limits: ConnectionLimits | None = None, send_buffer: int | None = None):
        self.app, self.listener = app, socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if send_buffer is not None:
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)  # accepted sockets inherit it
        self.listener.bind(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.server = Server(app, limits or ConnectionLimits(), log_level="warning")
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.listener]}, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.listener.close()


class Gate:
    """Stands in for a worker's pipeline: records the sequences it is given, and holds each run until opened."""

    def __init__(self, pipeline):
        self.pipeline, self.ran = pipeline, []
        self.entered, self.opened = threading.Event(), threading.Event()

    def run(self, ids, head, progress=None):
        self.ran.extend(ids)
        self.entered.set()
        assert self.opened.wait(30)
        return self.pipeline.run(ids, head, progress=progress)


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def scrape(base: str, client=httpx) -> dict[tuple[str, tuple], float]:
    """/metrics parsed by prometheus-client's parser: {(sample name, sorted labels): value}."""
    text = client.get(f"{base}/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in prometheus_parser.text_string_to_metric_families(text) for s in family.samples}  # fmt: skip


@pytest.fixture(scope="module", name="reranker")
def reranker_fixture(tmp_path_factory):
    folder = tmp_path_factory.mktemp("server-reranker")
    make_reranker_checkpoint(folder, TINY_SHAPES["gqa1"], tied=True)
    return Reranker.from_pretrained(folder)


@pytest.fixture(scope="module")
def runs(embedder):
    """Counts the embedding model's calls of Pipeline.run, to see requests share them."""
    calls = []
    run = embedder.run
    embedder.run = lambda ids, *a, **k: calls.append(len(ids)) or run(ids, *a, **k)
    yield calls
    del embedder.run


@pytest.fixture(scope="module")
def url(embedder, reranker, runs):
    limits = Limits(max_input_length=MAX_INPUT, max_batch_tokens=4096, openai_max_batch_tokens=65536,
                    max_queue_tokens=65536, max_wait_ms=5)  # fmt: skip
    app = create_app(embedder, reranker, served_model_name="tiny-embedder", served_reranker_name="tiny-reranker",
                     limits=limits)  # fmt: skip
    with Served(app) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    with httpx.Client(base_url=url, timeout=60) as c:
        yield c


def test_embed_matches_encode(client, embedder):
    texts = ["The capital of China is Beijing.", "", "中文 🙂"]
    response = client.post("/embed", json={"inputs": texts})
    assert response.status_code == 200
    np.testing.assert_allclose(response.json(), embedder.encode(texts).numpy(), rtol=0, atol=1e-5)
    single = client.post("/embed", json={"inputs": "one text"}).json()
    assert len(single) == 1
    np.testing.assert_allclose(single[0], embedder.encode("one text").numpy(), rtol=0, atol=1e-5)


def test_embed_options(client, embedder):
    body = {"inputs": ["a query", "another"], "prompt_name": "query", "dimensions": 16, "normalize": False}
    got = client.post("/embed", json=body).json()
    expected = embedder.encode(["a query", "another"], prompt_name="query", dim=16, normalize=False)
    np.testing.assert_allclose(got, expected.numpy(), rtol=0, atol=1e-5)


def test_embed_truncation(client, embedder):
    long_text = "gravity " * 1000
    refused = client.post("/embed", json={"inputs": [long_text]})
    assert refused.status_code == 413 and refused.json()["error_type"] == "Validation"
    said = refused.json()["error"]  # in the client's terms, with the operator's flag: not the Python API's names
    assert f"longer than the server's --max-input-length={MAX_INPUT} tokens" in said
    assert said.endswith('shorten them, or send "truncate": true in the body') and "max_length" not in said
    cut = client.post("/embed", json={"inputs": [long_text], "truncate": True})
    assert cut.status_code == 200
    with pytest.warns(UserWarning):
        expected = embedder.encode([long_text], max_length=MAX_INPUT)
    np.testing.assert_allclose(cut.json(), expected.numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "body, status, kind",
    [
        ({"input": ["x"]}, 422, "Validation"),
        ({"inputs": 5}, 422, "Validation"),
        ({"inputs": []}, 400, "Empty"),
        ({"inputs": ["x"] * 33}, 413, "Validation"),
        ({"inputs": ["x"], "dimensions": 0}, 422, "Validation"),
        ({"inputs": ["x"], "dimensions": True}, 422, "Validation"),  # no coercion: TEI's types
        ({"inputs": ["x"], "dimensions": "8"}, 422, "Validation"),
        ({"inputs": ["x"], "normalize": "yes"}, 422, "Validation"),
        ({"inputs": ["x"], "prompt_name": "nope"}, 422, "Tokenizer"),
    ],
)
def test_embed_bad_input(client, body, status, kind):
    response = client.post("/embed", json=body)
    assert response.status_code == status
    assert response.json()["error_type"] == kind and response.json()["error"]


@pytest.mark.parametrize(
    "path, request_, status, shape",
    [
        ("/nope", dict(method="GET"), 404, "tei"),
        ("/v1/nope", dict(method="POST", json={}), 404, "openai"),
        ("/embed", dict(method="GET"), 405, "tei"),
        ("/embed", dict(method="POST", content=b"{not json"), 422, "tei"),
        ("/v1/embeddings", dict(method="POST", content=b"{not json"), 400, "openai"),
        ("/embed", dict(method="POST", content=b'{"inputs": "\xff\xfe"}'), 400, "tei"),  # not UTF-8
        ("/embed", dict(method="POST", content=b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"), 400, "tei"),
        ("/embed", dict(method="POST", content=b'{"inputs": ["ok", "\\ud800"]}'), 422, "tei"),  # a lone surrogate
        ("/v2/rerank", dict(method="POST", json={"query": "q", "documents": ["d"], "max_chunks_per_doc": 9}), 400,
         "openai"),
        ("/v2/rerank", dict(method="POST", json={"query": "q", "documents": ["d"], "relevant_spans": {"mode": "on"}}),
         400, "openai"),
    ],
)  # fmt: skip
def test_every_error_has_the_tei_or_openai_shape(client, path, request_, status, shape):
    response = client.request(url=path, headers={"content-type": "application/json"}, **request_)
    assert response.status_code == status, response.text
    body = response.json()
    if shape == "tei":
        assert set(body) == {"error", "error_type"} and body["error"]
    else:
        assert body["error"]["message"] and body["error"]["type"] == "invalid_request_error"
        # Cohere's and Jina's clients read "message" and "detail"
        others = {"message", "detail"} if path in COHERE_ROUTES else set()
        assert set(body) == {"error"} | others and all(body[key] == body["error"]["message"] for key in others)
    if "ud800" in str(request_):
        assert "inputs[1]" in body["error"] and "lone surrogate U+D800" in body["error"]


def test_a_compressed_body_is_415_from_the_head(client):
    """A gzip body with Content-Encoding: gzip was parsed as it came and answered 400 'not valid UTF-8'."""
    import gzip
    import json

    for path, shape in [("/embed", "tei"), ("/v1/embeddings", "openai")]:
        body = gzip.compress(json.dumps({"inputs" if shape == "tei" else "input": "x"}).encode())
        headers = {"content-type": "application/json", "content-encoding": "gzip"}
        response = client.post(path, content=body, headers=headers)
        assert response.status_code == 415 and response.headers["accept-encoding"] == "identity", response.text
        message = response.json()["error"] if shape == "tei" else response.json()["error"]["message"]
        assert message == "Content-Encoding 'gzip' is not accepted: send the body uncompressed"
    identity = {"content-type": "application/json", "content-encoding": "Identity"}
    assert client.post("/embed", content=b'{"inputs": "x"}', headers=identity).status_code == 200
    two = [("content-type", "application/json"), ("content-encoding", "identity"), ("content-encoding", "gzip")]
    assert client.post("/embed", content=gzip.compress(b'{"inputs": "x"}'), headers=two).status_code == 415
    assert client.get("/health", headers={"content-encoding": "gzip"}).status_code == 200  # no body: nothing to refuse


@pytest.mark.parametrize(
    "path, body",
    [
        ("/embed", {"inputs": "a", "normalize": True, "truncate": False, "truncation_direction": "Right",
                    "prompt_name": None, "dimensions": None}),  # TEI
        ("/rerank", {"query": "q", "texts": ["a"], "raw_scores": False, "return_text": False, "truncate": False,
                     "truncation_direction": "Right"}),  # TEI
        ("/v1/embeddings", {"input": "a", "model": "m", "dimensions": 8, "encoding_format": "float", "user": "u"}),
        ("/v1/embeddings", {"input": ["a"], "model": "jina-embeddings-v3", "task": "retrieval.query",
                            "dimensions": 8, "normalized": True, "truncate": True, "embedding_type": "float",
                            "late_chunking": False}),  # Jina
        ("/v2/rerank", {"model": "m", "query": "q", "documents": ["a"], "top_n": 1, "max_tokens_per_doc": 4}),
        ("/v2/rerank", {"model": "m", "query": "q", "documents": ["a"], "priority": 3, "relevant_spans": None}),  # 7.x
        ("/similarity", {"inputs": {"source_sentence": "q", "sentences": ["a"]}, "parameters": {"truncate": True,
                         "truncation_direction": "left", "prompt_name": None}}),  # TEI
        ("/tokenize", {"inputs": ["a"], "add_special_tokens": False, "prompt_name": "query"}),  # TEI
        ("/decode", {"ids": [1, 2], "skip_special_tokens": False}),  # TEI
        ("/", {"inputs": ["a"], "options": {"wait_for_model": True, "use_cache": True}}),  # HF Inference API clients
        ("/v1/rerank", {"model": "m", "query": "q", "documents": [{"text": "a"}], "top_n": 1,
                        "return_documents": True, "rank_fields": None, "max_chunks_per_doc": None}),  # Cohere v1
        ("/v1/rerank", {"model": "jina-reranker-v2", "query": "q", "documents": ["a"], "top_n": 1,
                        "return_documents": False}),  # Jina
        ("/v1/embed", {"texts": ["a"], "model": "m", "input_type": "search_query", "embedding_types": ["float"],
                       "truncate": "END", "images": None}),  # Cohere v1
        ("/v2/embed", {"texts": ["a"], "model": "m", "input_type": "classification", "output_dimension": 8,
                       "embedding_types": ["ubinary"], "truncate": "START", "max_tokens": None, "priority": 0,
                       "inputs": None}),  # Cohere v2
    ],
)  # fmt: skip
def test_every_field_of_the_clients_request_schemas_is_accepted(client, path, body):
    response = client.post(path, json=body)
    assert response.status_code == 200, response.text


def test_a_body_that_is_no_object_is_named_in_jsons_words(client):
    for body, kind in [(b'"text"', "string"), (b"[1]", "array"), (b"3.5", "number"), (b"null", "null")]:
        response = client.post("/embed", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 422, response.text
        assert response.json()["error"] == f"the body is a JSON {kind}; send an object of the route's fields"


def test_an_unknown_field_is_refused_naming_the_closest_known_one(client):
    response = client.post("/v1/embeddings", json={"input": "a", "dimension": 2})
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("unknown field 'dimension' (did you mean 'dimensions'?);")
    response = client.post("/embed", json={"inputs": "a", "normalise": False, "x" * 5000: 1})
    assert response.status_code == 422 and len(response.content) < 1000
    assert response.json()["error"].startswith("unknown field 'normalise' (did you mean 'normalize'?) and 1 more;")


def test_errors_name_what_the_client_sent_in_the_servers_words(client):
    """An integer too long for Python to read, and lone surrogates named by the field the client sent."""
    json_type = {"content-type": "application/json"}
    huge = client.post("/embed", content=b'{"inputs": "a", "dimensions": ' + b"9" * 5000 + b"}", headers=json_type)
    assert huge.status_code == 400 and "set_int_max_str_digits" not in huge.text
    assert huge.json()["error"] == "the body holds an integer of more than 4300 digits; no field takes one that large"
    for path, body, name in [
        ("/rerank", b'{"query": "q", "texts": ["\\ud800"]}', "texts[0]"),
        ("/v1/rerank", b'{"query": "q", "documents": ["d", "\\ud800"]}', "documents[1]"),
        ("/v1/embeddings", b'{"input": ["ok", "\\udfff"]}', "input[1]"),
    ]:
        response = client.post(path, content=body, headers=json_type)
        error = response.json()["error"]
        message = error if path == "/rerank" else error["message"]
        assert response.status_code in (400, 422) and message.startswith(f"{name} is not valid Unicode"), message


@pytest.mark.parametrize(
    "path, body, message",
    [
        ("/embed", {"inputs": [{"text": "a"}]}, "inputs must be a string or a list of strings; inputs[0] is an object"),
        ("/embed", {"inputs": [[1, 2]]}, "inputs must be a string or a list of strings; inputs[0] is a list"),
        ("/embed", {"inputs": None}, "inputs must be a string or a list of strings, not null"),
        ("/embed", {"inputs": "a", "dimensions": "8"}, 'dimensions must be an integer, not "8"'),
        ("/embed", {"inputs": "a", "truncation_direction": "up"},
         'truncation_direction must be "Right", "Left", "right" or "left", not "up"'),
        ("/embed", {"inputs": "a", "options": {"use_cache": "yes"}},
         'options.use_cache must be true or false, not "yes"'),
        ("/embed", {"inputs": 5, "normalize": "yes", "truncate": 1, "dimensions": 1.5},
         'inputs must be a string or a list of strings, not 5; normalize must be true or false, not "yes"; truncate '
         "must be true or false, not 1 (and 1 more)"),
        ("/rerank", {"texts": ["a"]}, "query is missing"),
        ("/rerank", {"query": "q", "texts": ["a", 5]}, "texts[1] must be a string, not 5"),
        ("/similarity", {"inputs": {"source_sentence": "a", "sentences": [1]}},
         "inputs.sentences[0] must be a string, not 1"),
        ("/v1/embeddings", {"input": [{"text": "a"}]}, "input must be a string, a list of strings, a list of token ids "
         "or a list of lists of token ids; input[0] is an object"),
        ("/v1/embeddings", {"input": "a", "late_chunking": True}, "late_chunking must be false, not true"),
        ("/v1/rerank", {"query": "q", "documents": ["d"], "rank_fields": ["text"]},
         "rank_fields is not supported by this server; leave it out"),
        ("/v2/rerank", {"query": "q", "documents": [5]},
         'documents[0] must be a string or an object {"text": ...}, not 5'),
        ("/v2/rerank", {"query": "q", "documents": [{}]}, "documents[0].text is missing"),
        ("/v2/rerank", {"query": "q", "documents": ["d"], "top_n": 0}, "top_n must be greater than or equal to 1"),
        ("/decode", {"ids": "x"}, 'ids must be a list of token ids or a list of lists of token ids, not "x"'),
    ],
)  # fmt: skip
def test_a_body_of_the_wrong_types_is_refused_in_the_requests_terms(client, path, body, message):
    """What a field must be and what was sent, in JSON's words: pydantic's union choices (`inputs.list[str].0`) and
    its phrasing ('Input should be None') were the message."""
    response = client.post(path, json=body)
    assert response.status_code == (422 if path in ("/embed", "/rerank", "/similarity", "/decode") else 400)
    error = response.json()["error"]
    assert (error if isinstance(error, str) else error["message"]) == message


def test_a_websocket_upgrade_is_answered_as_plain_http(url):
    """A request to switch to a WebSocket got uvicorn's bare 403 with an empty body, before the API key and the
    routes were checked: it is the HTTP request it also is, answered by its route in the route's error shape."""
    upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}  # fmt: skip
    with httpx.Client(base_url=url, headers=upgrade) as client:
        refused = client.get("/embed")
        assert refused.status_code == 405 and refused.json() == {
            "error": "GET is not allowed on /embed; use POST", "error_type": "Validation"}  # fmt: skip
        refused = client.get("/v1/embeddings")
        assert refused.status_code == 405 and refused.json()["error"]["type"] == "invalid_request_error"
        assert client.get("/nope").json()["error"] == "no route /nope; /docs lists them"
        assert client.get("/health").json() == {"status": "ok"}
        assert client.post("/embed", json={"inputs": "a"}).status_code == 200


def test_an_unknown_field_named_with_a_lone_surrogate_is_refused_not_a_500(client):
    """The error quoting the field's name writes the surrogate as its escape (UTF-8 cannot hold it)."""
    json_type = {"content-type": "application/json"}
    for path, body, name in [
        ("/embed", b'{"inputs": "a", "\\ud800": 1}', "\\ud800"),
        ("/", b'{"inputs": "a", "x\\udfff": 1}', "x\\udfff"),
        (
            "/similarity",
            b'{"inputs": {"source_sentence": "a", "sentences": ["b"]}, "parameters": {"\\udc00": 1}}',
            "parameters.\\udc00",
        ),
        ("/v1/embeddings", b'{"input": "a", "\\ud800" : 1}', "\\ud800"),
    ]:
        response = client.post(path, content=body, headers=json_type)
        error = response.json()["error"]
        message = error["message"] if path.startswith("/v1/") else error
        assert response.status_code in (400, 422) and message.startswith(f"unknown field '{name}'"), message


def test_a_server_error_tells_only_an_id_that_the_log_has(embedder, caplog):
    class Broken:
        def run(self, *args, **kwargs):
            raise RuntimeError("secret detail of the failure")

    app = create_app(embedder)
    with Served(app) as base, caplog.at_level("ERROR", logger="qwen3_embed.server"):
        app.state.service.workers["embed"].pipeline = Broken()
        for path, body in [("/embed", {"inputs": "x"}), ("/v1/embeddings", {"input": "x"})]:
            response = httpx.post(f"{base}{path}", json=body)
            assert response.status_code == 500
            message = response.json()["error"] if path == "/embed" else response.json()["error"]["message"]
            assert "secret" not in response.text
            error_id = message.split()[2].rstrip(";")
            assert any(error_id in r.getMessage() and r.exc_info for r in caplog.records), error_id


def test_a_request_runs_in_passes_of_the_batch_budget_up_to_what_the_queue_holds(embedder):
    """As in TEI, --max-batch-tokens is a batch's budget, not a request's: texts over it in all run in several
    passes; a request of more tokens than the queue can ever hold is 413 (never 429), naming --max-queue-tokens."""
    limits = Limits(max_input_length=64, max_batch_tokens=64, openai_max_batch_tokens=64, max_queue_tokens=100)
    text = "gravity " * 4
    each = len(embedder.tokenize([text], max_length=64)[0])  # 20 to 33 tokens: 3 or 4 fit
    fits, over = 100 // each, 100 // each + 1
    assert fits * each > 64  # more than one pass
    app = create_app(embedder, None, limits=limits)
    with Served(app) as base:
        ran = httpx.post(f"{base}/embed", json={"inputs": [text] * fits})
        response = httpx.post(f"{base}/embed", json={"inputs": [text] * over})
        no_reranker = httpx.post(f"{base}/rerank", json={"query": "q", "texts": ["t"]})
    assert ran.status_code == 200
    np.testing.assert_allclose(ran.json(), embedder.encode([text] * fits).numpy(), atol=1e-5)
    assert response.status_code == 413 and response.json()["error"] == (
        f"the inputs hold {over * each} tokens, more than the server's --max-queue-tokens=100; send fewer or shorter "
        "inputs per request"
    )
    assert no_reranker.status_code == 424 and "--reranker" in no_reranker.json()["error"]


def test_rerank_matches_score(client, reranker):
    texts = ["The capital of China is Beijing.", "Gravity is a force.", "yes", ""]
    response = client.post("/rerank", json={"query": QUERY, "texts": texts, "return_text": True})
    assert response.status_code == 200
    results = response.json()
    scores = reranker.score(QUERY, texts)
    assert [r["index"] for r in results] == sorted(range(4), key=lambda i: -scores[i])
    for r in results:
        assert r["score"] == pytest.approx(scores[r["index"]].item(), abs=1e-5) and r["text"] == texts[r["index"]]
    raw = client.post("/rerank", json={"query": QUERY, "texts": texts, "raw_scores": True}).json()
    raw_expected = reranker.score(QUERY, texts, raw=True)
    assert all(r["score"] == pytest.approx(raw_expected[r["index"]].item(), abs=1e-4) for r in raw)
    assert "text" not in raw[0]


def test_rerank_bad_input(client):
    assert client.post("/rerank", json={"query": QUERY, "texts": []}).status_code == 400
    assert client.post("/rerank", json={"query": QUERY}).status_code == 422
    assert client.post("/rerank", json={"query": QUERY, "texts": ["x"] * 40}).status_code == 413
    too_long = client.post("/rerank", json={"query": "gravity " * 1000, "texts": ["x"], "truncate": True})
    assert too_long.status_code == 413 and "leaving no room for a document" in too_long.json()["error"]
    assert f"within the server's --max-input-length={MAX_INPUT}: shorten the query" in too_long.json()["error"]


def test_cohere_client_reranks(url, reranker):
    cohere = pytest.importorskip("cohere")
    documents = ["The capital of China is Beijing.", "Gravity is a force.", "yes", "Beijing"]
    scores = reranker.score(QUERY, documents).tolist()
    best = sorted(range(4), key=lambda i: -scores[i])
    v2 = cohere.ClientV2(api_key="unused", base_url=url).rerank(model="any", query=QUERY, documents=documents, top_n=3)
    assert [r.index for r in v2.results] == best[:3]
    assert [r.relevance_score for r in v2.results] == pytest.approx([scores[i] for i in best[:3]], abs=1e-5)
    v1 = cohere.Client(api_key="unused", base_url=url).rerank(
        model="any", query=QUERY, documents=[{"text": d} for d in documents], return_documents=True
    )
    assert [r.index for r in v1.results] == best
    assert [r.document.text for r in v1.results] == [documents[i] for i in best]
    raw = httpx.post(f"{url}/v1/rerank", json={"query": QUERY, "documents": documents}).json()  # Jina's shape
    tokens = sum(map(len, reranker.tokenize([(QUERY, d) for d in documents])))
    assert raw["model"] == "tiny-reranker" and raw["usage"] == {"total_tokens": tokens} and raw["id"]
    assert "document" not in raw["results"][0]


def test_openai_embeddings(client, embedder):
    texts = ["first", "second text"]
    response = client.post("/v1/embeddings", json={"input": texts, "model": "anything"})
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list" and body["model"] == "tiny-embedder"
    assert [d["index"] for d in body["data"]] == [0, 1] and body["data"][0]["object"] == "embedding"
    expected = embedder.encode(texts)
    np.testing.assert_allclose([d["embedding"] for d in body["data"]], expected.numpy(), rtol=0, atol=1e-5)
    tokens = sum(len(ids) for ids in embedder.tokenize(texts))
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}

    encoded = client.post("/v1/embeddings", json={"input": "first", "encoding_format": "base64", "dimensions": 8})
    vector = np.frombuffer(base64.b64decode(encoded.json()["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(vector, embedder.encode("first", dim=8).numpy(), rtol=0, atol=1e-5)


def test_openai_token_ids(client, embedder):
    """OpenAI's token-id inputs ([int] and [[int]], as LangChain sends): the model's own token ids give the same
    vectors as their text; ids outside the embedding table, empty lists and over-long ones are refused."""
    texts = ["first", "second text"]
    ids = [embedder.tokenizer.ids(t) for t in texts]
    batch = client.post("/v1/embeddings", json={"input": ids}).json()
    np.testing.assert_allclose([d["embedding"] for d in batch["data"]], embedder.encode(texts).numpy(), atol=1e-5)
    assert batch["usage"]["total_tokens"] == sum(len(i) + 1 for i in ids)
    one = client.post("/v1/embeddings", json={"input": ids[0]}).json()
    assert len(one["data"]) == 1
    np.testing.assert_allclose(one["data"][0]["embedding"], batch["data"][0]["embedding"], atol=1e-5)
    rows = embedder.config.vocab_size
    for bad, status in [([[1, rows]], 400), ([[-1]], 400), ([[]], 400), ([[True]], 400), ([[1] * MAX_INPUT], 413)]:
        response = client.post("/v1/embeddings", json={"input": bad})
        assert response.status_code == status and response.json()["error"]["message"], bad


def test_openai_errors(client):
    response = client.post("/v1/embeddings", json={"input": "gravity " * 1000})
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and "truncate=True" not in error["message"]
    assert f"longer than the server's --max-input-length={MAX_INPUT} tokens" in error["message"]
    similarity = client.post("/similarity", json={"inputs": {"source_sentence": "gravity " * 1000, "sentences": ["x"]}})
    assert similarity.status_code == 413
    assert similarity.json()["error"].endswith('or send "parameters": {"truncate": true} in the body')
    assert client.post("/v1/embeddings", json={"inputs": "x"}).status_code == 400
    assert client.post("/v1/embeddings", json={"input": "x", "encoding_format": "int8"}).status_code == 400


def test_health_info_and_models(client):
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/info").json()
    assert info["model_id"] == "tiny-embedder" and info["reranker"]["model_id"] == "tiny-reranker"
    assert info["model_dtype"] == "float32" and info["model_device"] == "cpu"
    assert info["model_type"] == {"embedding": {"pooling": "last_token"}}
    assert info["max_input_length"] == MAX_INPUT and info["max_batch_tokens"] == 4096
    assert info["max_concurrent_requests"] == 512 and info["payload_limit"] == 2_000_000
    models = client.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["tiny-embedder", "tiny-reranker"]
    paths = client.get("/openapi.json").json()["paths"].keys()
    assert paths >= {"/embed", "/rerank", "/v1/embeddings", "/v1/rerank", "/v2/rerank", "/v1/models", "/metrics"}


def test_served_name_is_never_a_local_path(tmp_path):
    assert served_name("Qwen/Qwen3-Embedding-0.6B") == "Qwen/Qwen3-Embedding-0.6B"
    assert served_name(str(tmp_path / "my-model")) == str(tmp_path / "my-model")  # not a folder: a hub id
    (tmp_path / "my-model").mkdir()
    assert served_name(str(tmp_path / "my-model")) == "my-model"
    snapshot = tmp_path / "models--Qwen--Qwen3-Embedding-0.6B" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    assert served_name(str(snapshot)) == "Qwen/Qwen3-Embedding-0.6B"


def test_metrics_count_the_requests_sent(url, embedder):
    before = scrape(url)
    texts = ["one", "two words"]
    for _ in range(3):
        assert httpx.post(f"{url}/embed", json={"inputs": texts}).status_code == 200
    assert httpx.post(f"{url}/embed", json={"inputs": []}).status_code == 400
    assert httpx.post(f"{url}/embed", content=b"x" * 2_000_001).status_code == 413
    after = scrape(url)

    def grew(name: str, **labels) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert grew("qwen3_embed_requests_total", route="/embed", status="200") == 3
    assert grew("qwen3_embed_requests_total", route="/embed", status="400") == 1
    assert grew("qwen3_embed_requests_total", route="/embed", status="413") == 1
    assert grew("qwen3_embed_requests_total", route="/metrics", status="200") == 1
    assert grew("qwen3_embed_rejected_total", cause="payload_too_large") == 1
    tokens = sum(map(len, embedder.tokenize(texts)))
    assert grew("qwen3_embed_tokens_total", model="embed") == 3 * tokens
    assert grew("qwen3_embed_batch_tokens_sum", model="embed") == 3 * tokens
    assert grew("qwen3_embed_queue_seconds_count", model="embed") == 3
    assert 1 <= grew("qwen3_embed_inference_seconds_count", model="embed") <= 3
    assert after[("qwen3_embed_queue_requests", (("model", "embed"),))] == 0
    assert after[("qwen3_embed_queue_tokens", (("model", "rerank"),))] == 0


def test_concurrent_clients_get_exactly_their_own_results(url, embedder, runs):
    """16 clients x 20 requests of mixed sizes: every answer is right and complete, nothing lost or swapped."""
    requests = [texts_of_lengths(1 + (i * 7) % 5, seed=100 + i, max_words=30) for i in range(16 * 20)]
    expected = [embedder.encode(texts) for texts in requests]
    calls_before = len(runs)

    def client_work(client_index: int) -> list[tuple[int, list]]:
        with httpx.Client(base_url=url, timeout=120) as c:
            mine = range(client_index, len(requests), 16)
            return [(i, c.post("/embed", json={"inputs": requests[i]}).json()) for i in mine]

    with ThreadPoolExecutor(16) as pool:
        answers = [a for chunk in pool.map(client_work, range(16)) for a in chunk]
    assert sorted(i for i, _ in answers) == list(range(len(requests)))
    for i, got in answers:
        np.testing.assert_allclose(got, expected[i].numpy(), rtol=0, atol=1e-5, err_msg=f"request {i}")
    assert len(runs) - calls_before < len(requests)  # requests shared forward passes


def test_a_failing_request_does_not_take_down_its_batch(embedder):
    worker = BatchingWorker(embedder, lambda last: last.float(), max_batch_tokens=4096, max_queue_tokens=4096,
                            max_wait_ms=200)  # fmt: skip
    ids = embedder.tokenize(["a", "b c", "d"])
    try:
        good = worker.submit(ids[:1], lambda rows: rows)
        bad = worker.submit(ids[1:2], lambda rows: 1 / 0)
        other = worker.submit(ids[2:], lambda rows: rows)
        torch.testing.assert_close(good.future.result(60), embedder.run(ids[:1], lambda last: last.float()))
        with pytest.raises(ZeroDivisionError):
            bad.future.result(60)
        assert other.future.result(60).shape == (1, embedder.config.hidden_size)
    finally:
        worker.close()


class Launching:
    """Stands in for a pipeline on a GPU: each forward pass is reported (update) as soon as it is launched, and its
    rows reach the host `seconds` later."""

    def __init__(self, pipeline, seconds: float):
        self.pipeline, self.seconds = pipeline, seconds

    def run(self, ids, head, progress=None):
        progress.update(len(ids), sum(map(len, ids)))
        time.sleep(self.seconds)
        return self.pipeline.run(ids, head)


def test_the_rate_is_measured_until_the_rows_are_on_the_host(embedder):
    """tokens_per_s (and so drain_seconds and Retry-After) counts the time until a batch's rows are on the host, not
    the launch: timed at launch, these 0.3 s batches would measure thousands of times faster."""
    worker = BatchingWorker(Launching(embedder, 0.3), lambda last: last.float(), max_batch_tokens=4096,
                            max_queue_tokens=4096, max_wait_ms=0)  # fmt: skip
    ids = embedder.tokenize(["gravity " * 40, "a short one"])
    try:
        for _ in range(2):
            worker.submit(ids, lambda rows: rows).future.result(60)
    finally:
        worker.close()
    assert 0 < worker.tokens_per_s <= sum(map(len, ids)) / 0.3


def test_each_model_is_warmed_up_before_the_server_takes_requests(embedder, reranker, caplog, monkeypatch):
    """On a device where first passes compile and autotune (CUDA; here the CPU made one), one forward pass per power
    of two from 1024 tokens up to the largest the worker can run (here the CPU's batch budget of 2048), and one of
    that size, of inputs up to max_input_length, before the server is up; the time it took is logged. On the CPU,
    none."""
    from qwen3_embed.server import worker

    passes, served = {"embed": [], "rerank": []}, None

    def recording(name: str, run):
        def run_(ids, *args, **kwargs):
            passes[name].append((sum(map(len, ids)), max(map(len, ids)), served.server.started))
            return run(ids, *args, **kwargs)

        return run_

    for name, model in (("embed", embedder), ("rerank", reranker)):
        monkeypatch.setattr(model, "run", recording(name, model.run))
    limits = Limits(max_input_length=600, max_batch_tokens=4096, openai_max_batch_tokens=4096, max_queue_tokens=4096)
    for devices in (worker.WARM_UP_DEVICES, ("cuda", "cpu")):
        monkeypatch.setattr(worker, "WARM_UP_DEVICES", devices)
        served, passes["embed"], passes["rerank"] = Served(create_app(embedder, reranker, limits=limits)), [], []
        with caplog.at_level("INFO", logger="qwen3_embed.server"), served as base:
            assert httpx.post(f"{base}/embed", json={"inputs": "x"}).status_code == 200
        if "cpu" not in devices:
            assert len(passes["embed"]) == 1 and passes["rerank"] == []  # the request only
            assert not any("warmed up" in r.getMessage() for r in caplog.records)
    for name in passes:
        warm_up = passes[name][:2]
        assert [(tokens, longest) for tokens, longest, _ in warm_up] == [(1024, 600), (2048, 600)]
        assert not any(started for _, _, started in warm_up)  # before the server was up
        assert any(f"warmed up the {name} model in " in r.getMessage() for r in caplog.records)
    assert len(passes["embed"]) == 3 and passes["embed"][2][2] and len(passes["rerank"]) == 2  # then the request


@pytest.mark.parametrize(
    "largest, batching, sizes",
    [(16384, True, [1024, 2048, 4096, 8192, 16384]), (3000, True, [1024, 2048, 4096, 5999]), (64, True, [127]),
     (64, False, [64]), (1024, False, [1024])],
)  # fmt: skip
def test_the_warm_up_meets_every_power_of_two_a_pass_can_reach(embedder, largest, batching, sizes):
    """A drain holds up to max_batch_tokens plus one request (2x - 1 tokens), cut into passes of the batch budget
    (here 16384, as on CUDA)."""
    seen = []

    class Recording:
        tokenizer, device = embedder.tokenizer, torch.device("cuda")

        def batch_tokens(self, batch_tokens):
            return 16384

        def run(self, ids, head, progress=None):
            seen.append(sum(map(len, ids)))

    worker = BatchingWorker(Recording(), None, max_batch_tokens=largest, max_queue_tokens=2 * largest,
                            max_wait_ms=0, batching=batching)  # fmt: skip
    try:
        worker.warm_up(8192, largest)
    finally:
        worker.close()
    assert seen == sizes


def test_the_server_modules_import_each_other_without_a_circle():
    """The admission gate (guard.py) depends on an interface, not on the service; limits.py imports neither."""
    import ast
    from pathlib import Path

    import qwen3_embed.server

    paths = list(Path(qwen3_embed.server.__file__).parent.glob("*.py"))
    graph: dict[str, set[str]] = {path.stem: set() for path in paths}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names = [node.module] if node.module else [alias.name for alias in node.names]
                graph[path.stem] |= {name for name in names if name in graph}

    def below(module: str) -> set[str]:
        """The modules that `module` imports, directly or through others."""
        found, todo = set(), list(graph[module])
        while todo:
            if (name := todo.pop()) not in found:
                found.add(name)
                todo += graph[name]
        return found

    assert graph["limits"].isdisjoint({"service", "guard", "worker"}) and "service" not in below("guard")
    assert [module for module in graph if module in below(module)] == []


@pytest.mark.filterwarnings("ignore")
def test_schema_fuzzing_gives_no_server_errors(url):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    failures, calls = [], []

    def fuzz(strategy) -> None:
        @given(case=strategy)
        @settings(max_examples=20, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def check(case) -> None:
            response = case.call(base_url=url, timeout=60)
            calls.append(response.status_code)
            if response.status_code >= 500:
                failures.append((case.method, case.path, case.body, response.status_code, response.text[:200]))

        check()

    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/embed", "/rerank", "/v1/embeddings", "/v1/rerank", "/health"}
    for operation in operations:
        fuzz(operation.as_strategy())
    assert len(calls) >= 5 * len(operations) and not failures, failures[:5]


def test_serve_refuses_a_max_input_length_the_reranker_prompt_does_not_fit(tiny, tmp_path):
    make_reranker_checkpoint(tmp_path, TINY_SHAPES["gqa1"], tied=True)
    arguments = ["serve", "--model", str(tiny[0]), "--reranker", str(tmp_path), "--port", str(free_port())]
    with pytest.raises(SystemExit, match="--max-input-length=8 leaves no room for a document in the reranker's"):
        main([*arguments, "--max-input-length", "8", "--max-batch-tokens", "64", "--max-queue-tokens", "64",
              "--openai-max-batch-tokens", "64"])  # fmt: skip


def test_serve_checks_the_limits_against_the_models_before_they_load(tiny, monkeypatch):
    """max_batch_tokens must hold one input of the default max_input_length too (8192, the tiny model allowing
    32768), and max_input_length must fit every model served: both said before any weights load."""

    def fail(*args, **kwargs):
        raise AssertionError("the model was loaded before the limits were checked")

    monkeypatch.setattr("qwen3_embed.pipeline.load_model", fail)
    arguments = ["serve", "--model", str(tiny[0]), "--port", str(free_port())]
    for option, message in [
        (["--max-batch-tokens", "4096"], "--max-batch-tokens=4096 must be at least "
         "--max-input-length=8192"),
        (["--reranker", str(tiny[0]), "--max-input-length", "40000", "--max-batch-tokens", "40000"],
         "--max-input-length=40000 is outside 2..32768, the model's maximum sequence length"),
    ]:  # fmt: skip
        with pytest.raises(SystemExit, match=message):
            main([*arguments, *option])


def test_serve_command(tiny, embedder, tmp_path):
    """The CLI: settings checked before the model loads, the API key from the environment, the folder's name
    served, and SIGTERM ending the process."""
    folder = tmp_path / "my-embedder"
    folder.symlink_to(tiny[0], target_is_directory=True)
    port = free_port()
    arguments = ["serve", "--model", str(tmp_path / "not-loaded"), "--port", str(port)]
    with socket.socket() as taken, pytest.raises(SystemExit, match=f"cannot listen on 127.0.0.1:{port}"):
        taken.bind(("127.0.0.1", port))
        taken.listen()
        main(arguments)
    big = ["--max-input-length", "1000000", "--max-batch-tokens", "1000000", "--max-queue-tokens", "1000000"]
    for option, message in [
        (["--max-queue-tokens", "10"], "--max-queue-tokens=10 must be at least --max-batch-tokens=16384"),
        (
            ["--max-queue-tokens", "200000"],
            "--max-queue-tokens=200000 must be at least --openai-max-batch-tokens=300000",
        ),  # a request of OpenAI's size must fit the queue: 413 past the route's limit, never 429
        (["--read-timeout-s", "0"], "--read-timeout-s=0.0 must be positive and finite"),
        (["--keep-alive-s", "inf"], "--keep-alive-s=inf must be positive and finite"),
        (["--health-stall-s", "nan"], "--health-stall-s=nan must be positive and finite"),
        (["--max-wait-ms", "nan"], "--max-wait-ms=nan must be a finite number of at least 0"),
        (["--api-key", "two words"], "the API key must be non-empty printable ASCII without spaces"),
        (["--device", "cuda:7"], "cuda:7"),
        (["--model", str(tiny[0]), *big], r"--max-input-length=1000000 is outside 2\.\.\d+, the model's maximum"),
    ]:
        with pytest.raises(SystemExit, match=message):
            main([*arguments, *option])

    command = [sys.executable, "-m", "qwen3_embed.cli", "serve", "--model", str(folder), "--port", str(port)]

    env = os.environ | {"QWEN3_EMBED_API_KEY": "s3cret"}
    flags = ["--max-connections", "4", "--openai-max-client-batch-size", "3", "--accept-foreign-token-ids"]
    process = subprocess.Popen([*command, *flags], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    base, key = f"http://127.0.0.1:{port}", {"Authorization": "Bearer s3cret"}
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, process.stdout.read().decode()
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.2)
        assert httpx.get(f"{base}/info").status_code == 401
        assert httpx.get(f"{base}/info", headers=key).json()["model_id"] == "my-embedder"
        response = httpx.post(f"{base}/embed", json={"inputs": "hello"}, headers=key)
        assert response.status_code == 200 and len(response.json()[0]) == tiny[1].config.hidden_size
        four = httpx.post(f"{base}/v1/embeddings", json={"input": ["a"] * 4}, headers=key).json()["error"]["message"]
        assert (
            four == "input holds 4 inputs, more than the server's --openai-max-client-batch-size=3; send fewer "
            "inputs per request"
        )
        foreign = [foreign_ids(embedder.tokenizer, CORPUS[0])]  # refused without the flag
        assert RoundTrip(embedder.tokenizer.backend).foreign(foreign) == [0]
        assert httpx.post(f"{base}/v1/embeddings", json={"input": foreign}, headers=key).status_code == 200
        flood = [socket.create_connection(("127.0.0.1", port)) for _ in range(30)]  # 26 over --max-connections
        with httpx.Client(headers=key) as client:
            assert client.get(f"{base}/health").status_code == 200
            closed = scrape(base, client)[("qwen3_embed_rejected_total", (("cause", "connection_limit"),))]
        assert closed >= 26
    finally:
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=30)
    log = process.stdout.read().decode()
    assert returncode == -signal.SIGTERM, log
    assert log.count("over max_connections") == 1 and "Traceback" not in log, log  # one line for the burst
    for sock in flood:
        sock.close()


def test_tei_similarity_tokenize_and_decode(client, embedder):
    """TEI's /similarity (cosines to the source sentence), /tokenize (ids, the text of each token by its character
    offsets, and the EOS the model pools as a special token) and /decode, in TEI's shapes."""
    documents = ["The capital of China is Beijing.", "Gravity is a force.", "中文 🙂"]
    similarity = client.post("/similarity", json={"inputs": {"source_sentence": QUERY, "sentences": documents}})
    expected = embedder.encode(documents) @ embedder.encode(QUERY)
    np.testing.assert_allclose(similarity.json(), expected.numpy(), atol=1e-5)
    misspelt = client.post("/similarity", json={"inputs": {"source_sentence": "a", "sentences": ["b"]},
                                                "parameters": {"truncat": True}})  # fmt: skip
    assert misspelt.status_code == 422
    said = misspelt.json()["error"]
    assert said.startswith("unknown field 'parameters.truncat' (did you mean 'parameters.truncate'?)")

    text = "héllo <|im_start|> 中文 🙂 42"
    [tokens] = client.post("/tokenize", json={"inputs": text}).json()
    assert [t["id"] for t in tokens] == embedder.tokenizer.ids(text) + [embedder.tokenizer.eos_id]
    assert tokens[-1] == {"id": embedder.tokenizer.eos_id, "text": "<|endoftext|>", "special": True, "start": None,
                          "stop": None}  # fmt: skip
    assert all(t["text"] == text[t["start"] : t["stop"]] and not t["special"] for t in tokens[:-1])
    assert "".join(dict((t["start"], t["text"]) for t in tokens[:-1]).values()) == text
    plain = client.post("/tokenize", json={"inputs": [text, "a"], "add_special_tokens": False}).json()
    assert [[t["id"] for t in ts] for ts in plain] == [embedder.tokenizer.ids(text), embedder.tokenizer.ids("a")]

    ids = [t["id"] for t in tokens]
    assert client.post("/decode", json={"ids": ids}).json() == [text.replace("<|im_start|>", "")]  # specials skipped
    both = client.post("/decode", json={"ids": [ids, ids[:1]], "skip_special_tokens": False}).json()
    assert both == [text + "<|endoftext|>", "h"]
    outside = client.post("/decode", json={"ids": [[1, 10**6]]})
    assert outside.status_code == 422 and "ids[0] holds the token id 1000000" in outside.json()["error"]


def test_post_root_routes_by_the_models_kind(client, embedder, reranker):
    """TEI's POST /: /embed's body (or /similarity's) on a server with an embedder, /rerank's on a reranker-only
    one."""
    vectors = client.post("/", json={"inputs": "one text"}).json()
    np.testing.assert_allclose(vectors, embedder.encode(["one text"]).numpy(), atol=1e-5)
    similarity = client.post("/", json={"inputs": {"source_sentence": QUERY, "sentences": ["x"]}, "parameters": {}})
    np.testing.assert_allclose(similarity.json(), embedder.encode(["x"]) @ embedder.encode(QUERY), atol=1e-5)
    misspelt = client.post("/", json={"inputs": "x", "normalise": True}).json()["error"]
    assert misspelt.startswith("unknown field 'normalise' (did you mean 'normalize'?)")
    assert client.get("/").status_code == 405 and client.post("/embed/", json={"inputs": "x"}).status_code == 404
    with Served(create_app(None, reranker)) as base:
        ranked = httpx.post(f"{base}/", json={"query": QUERY, "texts": ["a", "b"]}).json()
    scores = reranker.score(QUERY, ["a", "b"])
    assert {r["index"]: r["score"] for r in ranked} == pytest.approx(dict(enumerate(scores.tolist())), abs=1e-5)


def test_truncation_direction_left_keeps_the_end(client, embedder, reranker):
    """truncation_direction "Left" (or huggingface_hub's "left") cuts a text's start: the vector is that of its last
    max_input_length - 1 tokens and the EOS; on /rerank a document's start, the query and prompt kept."""
    text = "alpha beta " * 300 + "omega gamma " * 300
    ids = embedder.tokenizer.ids(text)
    kept = ids[len(ids) - (MAX_INPUT - 1) :] + [embedder.tokenizer.eos_id]
    expected = torch.nn.functional.normalize(embedder.run([kept], lambda last: last.float()), dim=-1)
    for direction in ("Left", "left"):
        body = {"inputs": [text], "truncate": True, "truncation_direction": direction}
        np.testing.assert_allclose(client.post("/embed", json=body).json(), expected.numpy(), atol=1e-5)
    right = client.post("/embed", json={"inputs": [text], "truncate": True}).json()
    assert not np.allclose(right, expected.numpy(), atol=1e-3)

    pair = reranker.tokenize([(QUERY, text)], max_length=8192)[0]
    head = len(pair) - len(reranker.suffix) - len(reranker.tokenizer.ids(" " + text))
    cut = pair[:head] + pair[head + len(pair) - MAX_INPUT :]
    score = torch.sigmoid(reranker.run([cut], reranker.head)).item()
    body = {"query": QUERY, "texts": [text], "truncate": True, "truncation_direction": "Left"}
    assert client.post("/rerank", json=body).json()[0]["score"] == pytest.approx(score, abs=1e-5)


def foreign_ids(tokenizer, text: str) -> list[int]:
    """The ids of `text` under a tokenizer of the same tokens in reverse order: ids of another tokenizer, as
    OpenAI's tiktoken ids are to Qwen's."""
    special = set(tokenizer.backend.get_added_tokens_decoder())
    regular = [i for i in range(tokenizer.backend.get_vocab_size(with_added_tokens=True)) if i not in special]
    other = dict(zip(regular, reversed(regular)))
    return [other.get(i, i) for i in tokenizer.ids(text)]  # special tokens kept


def test_foreign_token_ids_are_refused_unless_accepted(embedder):
    """Token ids that change when decoded and tokenized again are refused (400) when a quarter of a request's lists
    do; --accept-foreign-token-ids embeds them as they are. The model's own ids always pass (test_openai_token_ids)."""
    texts = CORPUS[:4]
    foreign = [foreign_ids(embedder.tokenizer, t) for t in texts]
    own = [embedder.tokenizer.ids(t) for t in texts]
    with Served(create_app(embedder)) as base:
        refused = httpx.post(f"{base}/v1/embeddings", json={"input": foreign})
        assert refused.status_code == 400
        message = refused.json()["error"]["message"]
        assert message.startswith("4 of the 4 token-id lists (first input[0]) change when decoded and tokenized")
        assert "--accept-foreign-token-ids" in message and "check_embedding_ctx_length=False" in message
        mixed = httpx.post(f"{base}/v1/embeddings", json={"input": [foreign[0], *own, *own]})
        assert mixed.status_code == 200  # one list in nine: not a clear share
        assert httpx.post(f"{base}/v1/embeddings", json={"input": foreign[1]}).status_code == 400
    with Served(create_app(embedder, limits=Limits(accept_foreign_token_ids=True))) as base:
        accepted = httpx.post(f"{base}/v1/embeddings", json={"input": foreign}).json()
    eos = embedder.tokenizer.eos_id
    expected = torch.nn.functional.normalize(embedder.run([[*f, eos] for f in foreign], lambda x: x.float()), dim=-1)
    np.testing.assert_allclose([d["embedding"] for d in accepted["data"]], expected.numpy(), atol=1e-5)


@pytest.mark.skipif(
    not (SHARED_TOKENIZER / "tokenizer.json").exists(), reason=f"no Qwen3 tokenizer at {SHARED_TOKENIZER}"
)
def test_the_real_tokenizers_ids_and_their_windows_survive_the_round_trip():
    """Every window of real Qwen3 ids of varied texts comes back (windows cut inside a UTF-8 character, or
    between "'" and "s", included); ids of the same texts under another order of the vocabulary mostly do not.
    benchmarks/foreign_ids.py measures this on thousands of texts."""
    tokenizer = Tokenizer(SHARED_TOKENIZER / "tokenizer.json", 151669)
    trip = RoundTrip(tokenizer.backend)
    texts = [
        "`/rerank`'s query is tokenized once",
        "中文分词测试，日本語のテキスト。한국어 텍스트",
        "👩‍👩‍👧 🇫🇷 e\u0301 x²",
        "def f(x):\n    return x ** 2  # 12345678901234567890",
        "<|im_start|>user\nhi<|im_end|>  \t end",
    ]
    for text in texts:
        ids = tokenizer.ids(text)
        assert all(trip.survives(ids[a:b]) for a in range(len(ids)) for b in range(a + 1, len(ids) + 1)), text
    foreign = [foreign_ids(tokenizer, t) for t in texts]
    assert len(trip.foreign(foreign)) >= 4


def test_each_api_family_has_its_own_batch_limit_and_models_route(client, reranker):
    """TEI's 32 inputs on TEI's routes, Cohere's 1,000 documents on /v1/rerank and /v2/rerank (whose errors Cohere's
    and Jina's clients read as "message" and "detail"), OpenAI's 2,048 on /v1/embeddings; GET /v1/models/{model},
    counted under its template."""
    assert client.post("/embed", json={"inputs": ["x"] * 33}).json()["error"] == (
        "inputs holds 33 inputs, more than the server's --max-client-batch-size=32; send fewer inputs per request"
    )
    documents = [f"document {i}" for i in range(100)]  # what a RAG pipeline reranks, past TEI's 32
    scores = reranker.score("q", documents).tolist()
    for path in ("/v1/rerank", "/v2/rerank"):
        results = client.post(path, json={"query": "q", "documents": documents}).json()["results"]
        assert {r["index"]: r["relevance_score"] for r in results} == pytest.approx(dict(enumerate(scores)), abs=1e-5)
        too_many = client.post(path, json={"query": "q", "documents": documents * 10 + ["one more"]})
        message = (
            "documents holds 1001 inputs, more than the server's --cohere-max-client-batch-size=1000; send fewer "
            "inputs per request"
        )
        assert too_many.status_code == 413
        assert too_many.json() == {"error": {"message": message, "type": "invalid_request_error", "param": None,
                                             "code": None}, "message": message, "detail": message}  # fmt: skip
    assert len(client.post("/v1/embeddings", json={"input": ["x"] * 1000}).json()["data"]) == 1000
    too_many = client.post("/v1/embeddings", json={"input": ["x"] * 2049})
    assert too_many.status_code == 413
    assert too_many.json()["error"]["message"] == (
        "input holds 2049 inputs, more than the server's --openai-max-client-batch-size=2048; send fewer inputs per "
        "request"
    )
    assert client.get("/v1/models/tiny-embedder").json()["id"] == "tiny-embedder"
    missing = client.get("/v1/models/gpt-4")
    assert missing.status_code == 404 and "the model 'gpt-4' is not served here" in missing.json()["error"]["message"]
    routes = {dict(labels).get("route") for _, labels in scrape(str(client.base_url), client)}
    assert "/v1/models/{model:path}" in routes and "/v1/models/gpt-4" not in routes
