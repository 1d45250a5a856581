"""The HTTP server, started on a free loopback port and spoken to over HTTP with a real client."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from checkpoints import TINY_SHAPES, make_reranker_checkpoint, texts_of_lengths

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from qwen3_embed.reranker import Reranker  # noqa: E402
from qwen3_embed.server import BatchingWorker, create_app  # noqa: E402

QUERY = "What is the capital of China?"
MAX_INPUT = 512


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """uvicorn serving an app in a thread, for the duration of a `with`."""

    def __init__(self, app):
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

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


@pytest.fixture(scope="module")
def reranker(tmp_path_factory):
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
    app = create_app(embedder, reranker, model_id="tiny-embedder", reranker_id="tiny-reranker",
                     max_input_length=MAX_INPUT, max_batch_tokens=4096, max_wait_ms=5)  # fmt: skip
    with Server(app) as base:
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
    assert refused.status_code == 422 and refused.json()["error_type"] == "Validation"
    assert f"max_length={MAX_INPUT}" in refused.json()["error"]
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
        ({"inputs": ["x"], "prompt_name": "nope"}, 422, "Validation"),
    ],
)
def test_embed_bad_input(client, body, status, kind):
    response = client.post("/embed", json=body)
    assert response.status_code == status
    assert response.json()["error_type"] == kind and response.json()["error"]


def test_malformed_json(client):
    response = client.post("/embed", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422


def test_too_many_tokens_in_one_request(embedder, reranker):
    app = create_app(embedder, None, max_input_length=64, max_batch_tokens=100)
    with Server(app) as base:
        response = httpx.post(f"{base}/embed", json={"inputs": ["gravity " * 20] * 8, "truncate": True})
        no_reranker = httpx.post(f"{base}/rerank", json={"query": "q", "texts": ["t"]})
    assert response.status_code == 413 and "more than max_batch_tokens=100" in response.json()["error"]
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


def test_openai_errors(client):
    response = client.post("/v1/embeddings", json={"input": "gravity " * 1000})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and f"max_length={MAX_INPUT}" in error["message"]
    assert client.post("/v1/embeddings", json={"inputs": "x"}).status_code == 400
    assert client.post("/v1/embeddings", json={"input": "x", "encoding_format": "int8"}).status_code == 400


def test_health_and_info(client):
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/info").json()
    assert info["embedding"]["model_id"] == "tiny-embedder" and info["reranker"]["model_id"] == "tiny-reranker"
    assert info["embedding"]["model_dtype"] == "float32" and info["embedding"]["model_device"] == "cpu"
    assert info["max_input_length"] == MAX_INPUT and info["max_batch_tokens"] == 4096
    assert client.get("/openapi.json").json()["paths"].keys() >= {"/embed", "/rerank", "/v1/embeddings"}


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
    worker = BatchingWorker(embedder, lambda last: last.float(), max_batch_tokens=4096, max_wait_ms=200)
    ids = embedder.tokenize(["a", "b c", "d"])
    try:
        good = worker.submit(ids[:1], lambda rows: rows)
        bad = worker.submit(ids[1:2], lambda rows: 1 / 0)
        other = worker.submit(ids[2:], lambda rows: rows)
        torch.testing.assert_close(good.result(60), embedder.run(ids[:1], lambda last: last.float()))
        with pytest.raises(ZeroDivisionError):
            bad.result(60)
        assert other.result(60).shape == (1, embedder.config.hidden_size)
    finally:
        worker.close()


@pytest.mark.filterwarnings("ignore")
def test_schema_fuzzing_gives_no_server_errors(url):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    failures, calls = [], []

    def fuzz(strategy) -> None:
        @given(case=strategy)
        @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def check(case) -> None:
            response = case.call(base_url=url, timeout=60)
            calls.append(response.status_code)
            if response.status_code >= 500:
                failures.append((case.method, case.path, case.body, response.status_code, response.text[:200]))

        check()

    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/embed", "/rerank", "/v1/embeddings", "/health", "/info"}
    for operation in operations:
        fuzz(operation.as_strategy())
    assert len(calls) >= 5 * len(operations) and not failures, failures[:5]


def test_serve_command(tiny):
    port = free_port()
    command = [sys.executable, "-m", "qwen3_embed.cli", "serve", "--model", str(tiny[0]), "--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, process.stdout.read().decode()
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.2)
        response = httpx.post(f"http://127.0.0.1:{port}/embed", json={"inputs": "hello"})
        assert response.status_code == 200 and len(response.json()[0]) == tiny[1].config.hidden_size
    finally:
        process.terminate()
        process.wait(timeout=30)
