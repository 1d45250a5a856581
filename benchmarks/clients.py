"""A matrix of real third-party clients against `qwen3-embed serve`: for each client and call, its version, whether
it works, and whether its numbers are the model's (Embedder.encode, Reranker.score, within 1e-4). Run by hand; the
README's client matrix is its last run (benchmarks/results/clients.md). tests/test_clients.py covers the light
clients in CI.

The server runs in its own process on random-weight 2-layer checkpoints with the real Qwen3 tokenizer (so that
LangChain's default, OpenAI's cl100k ids, meets the real vocabulary), served under the hub ids. Each client runs in
a child process of this file that imports only numpy and the client, compares with the expected numbers it is
handed, and reports; a client that is not installed is reported so. Heavy clients pin versions the project's
environment must not take (chromadb wants huggingface_hub < 2): give them an interpreter of their own with
--clients-python, run after the project's own (a client that one lacks is tried there).

    python benchmarks/clients.py [--clients-python /path/to/venv/bin/python ...]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from importlib import metadata, util
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
EMBEDDER, RERANKER = "Qwen/Qwen3-Embedding-0.6B", "Qwen/Qwen3-Reranker-0.6B"
TEXTS = [f"Document {i}: the capital of China is Beijing, and {i} is a number." for i in range(100)]
QUERY = "What is the capital of China?"
DOCUMENTS = ["The capital of China is Beijing.", "Gravity is a force.", "Paris is in France.", "yes"]
ATOL = 1e-4
CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"


def cl100k_from_a_copy(path: str | None = None) -> str | None:
    """Point tiktoken at a local copy of cl100k_base (`path`, or the one bpe-openai's package holds), checked
    against tiktoken's sha256, as if it had downloaded it: the name of the copy, or None without one."""
    candidates = {path: path} if path else {}
    spec = util.find_spec("bpe_openai")
    if spec is not None and spec.origin is not None:
        candidates[str(Path(spec.origin).parent / "data" / "cl100k_base.tiktoken.gz")] = "bpe-openai's copy"
    for candidate, name in candidates.items():
        if not Path(candidate).exists():
            continue
        data = Path(candidate).read_bytes()
        data = gzip.decompress(data) if candidate.endswith(".gz") else data
        if hashlib.sha256(data).hexdigest() != CL100K_SHA256:
            raise SystemExit(f"{candidate} is not OpenAI's cl100k_base.tiktoken (its sha256 differs)")
        cache = Path(tempfile.mkdtemp(prefix="tiktoken-"))
        (cache / hashlib.sha1(CL100K_URL.encode()).hexdigest()).write_bytes(data)
        os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
        return name
    return None


# The calls: (distribution, call, function(url) -> (numbers, key of the expected numbers) or None when there are no
# numbers to compare). A call that refuses as designed raises Refused.
class Refused(Exception):
    """The server refused the call, as it should (said in the row)."""


def openai_sdk(url: str, call: str):
    from openai import OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    if call == "embeddings.create, 100 texts":
        return [d.embedding for d in client.embeddings.create(model=EMBEDDER, input=TEXTS).data], "texts"
    assert client.models.retrieve(EMBEDDER).id == EMBEDDER and [m.id for m in client.models.list()] == [
        EMBEDDER,
        RERANKER,
    ]


def langchain_openai(url: str, call: str):
    import openai
    from langchain_openai import OpenAIEmbeddings

    options = dict(model=EMBEDDER, base_url=f"{url}/v1", api_key="unused", max_retries=0)
    if call == "OpenAIEmbeddings() (tiktoken ids)":
        try:
            OpenAIEmbeddings(**options).embed_documents(TEXTS)
        except openai.BadRequestError as e:
            if "look like another tokenizer's ids" in str(e):
                raise Refused("refused (400) saying how to send texts") from None
            raise
        return None
    embeddings = OpenAIEmbeddings(**options, check_embedding_ctx_length=False)
    return embeddings.embed_documents(TEXTS), "texts"


def huggingface_hub(url: str, call: str):
    from huggingface_hub import InferenceClient

    client = InferenceClient(model=url)
    if call == "InferenceClient.feature_extraction":
        return client.feature_extraction(TEXTS[0])[0], "text0"
    return client.sentence_similarity(QUERY, other_sentences=DOCUMENTS), "similarity"


def cohere(url: str, call: str):
    import cohere

    if call == "Client.rerank (v1)":
        response = cohere.Client(api_key="unused", base_url=url).rerank(
            model=RERANKER, query=QUERY, documents=DOCUMENTS
        )
    else:
        response = cohere.ClientV2(api_key="unused", base_url=url).rerank(
            model=RERANKER, query=QUERY, documents=DOCUMENTS, max_tokens_per_doc=4096
        )
    return by_index([(r.index, r.relevance_score) for r in response.results]), "scores"


def requests_tei(url: str, call: str):
    import requests

    if call == "POST /embed (TEI's README)":
        return requests.post(f"{url}/embed", json={"inputs": TEXTS[0]}, timeout=60).json()[0], "text0"
    ranked = requests.post(f"{url}/rerank", json={"query": QUERY, "texts": DOCUMENTS}, timeout=60).json()
    return by_index([(r["index"], r["score"]) for r in ranked]), "scores"


def llama_index(url: str, call: str):
    from llama_index.embeddings.openai import OpenAIEmbedding

    embedding = OpenAIEmbedding(model_name=EMBEDDER, api_base=f"{url}/v1", api_key="unused", max_retries=0)
    return embedding.get_text_embedding_batch(TEXTS), "texts"


def chromadb(url: str, call: str):
    import chromadb
    from chromadb.utils import embedding_functions

    texts = TEXTS
    if call.startswith("HuggingFaceEmbeddingServer"):
        function, texts = embedding_functions.HuggingFaceEmbeddingServer(url=url), TEXTS[:32]  # TEI's 32
    else:
        os.environ.setdefault("CHROMA_OPENAI_API_KEY", "unused")
        function = embedding_functions.OpenAIEmbeddingFunction(
            api_key="unused", api_base=f"{url}/v1", model_name=EMBEDDER
        )
    collection = chromadb.EphemeralClient().create_collection(f"c{time.monotonic_ns()}", embedding_function=function)
    collection.add(ids=[str(i) for i in range(len(texts))], documents=texts)
    stored = collection.get(ids=[str(i) for i in range(len(texts))], include=["embeddings"])["embeddings"]
    return stored, "texts" if len(texts) == len(TEXTS) else "texts32"


def haystack(url: str, call: str):
    from haystack import Document
    from haystack.components.embedders import OpenAIDocumentEmbedder, OpenAITextEmbedder
    from haystack.utils import Secret

    options = dict(api_key=Secret.from_token("unused"), api_base_url=f"{url}/v1", model=EMBEDDER)
    if call == "OpenAITextEmbedder":
        return OpenAITextEmbedder(**options).run(text=TEXTS[0])["embedding"], "text0"
    documents = OpenAIDocumentEmbedder(**options).run(documents=[Document(content=t) for t in TEXTS])["documents"]
    return [d.embedding for d in documents], "texts"


def litellm(url: str, call: str):
    import litellm

    if call == "embedding (openai/)":
        response = litellm.embedding(model=f"openai/{EMBEDDER}", api_base=f"{url}/v1", api_key="unused", input=TEXTS)
        return [d["embedding"] for d in response.data], "texts"
    response = litellm.rerank(model=f"cohere/{RERANKER}", api_base=url, api_key="unused", query=QUERY,
                              documents=DOCUMENTS)  # fmt: skip
    return by_index([(r["index"], r["relevance_score"]) for r in response.results]), "scores"


def langchain_huggingface(url: str, call: str):
    from langchain_huggingface import HuggingFaceEndpointEmbeddings

    return HuggingFaceEndpointEmbeddings(model=url).embed_documents(TEXTS[:32]), "texts32"


def langchain_community(url: str, call: str):
    from langchain_community.embeddings import HuggingFaceInferenceAPIEmbeddings

    embeddings = HuggingFaceInferenceAPIEmbeddings(api_key="unused", api_url=url)
    return embeddings.embed_documents(TEXTS[:32]), "texts32"  # TEI's 32 per request


def llama_index_tei(url: str, call: str):
    from llama_index.embeddings.text_embeddings_inference import TextEmbeddingsInference

    return TextEmbeddingsInference(model_name=EMBEDDER, base_url=url).get_text_embedding_batch(TEXTS), "texts"


def langchain_cohere(url: str, call: str):
    from langchain_cohere import CohereEmbeddings, CohereRerank
    from langchain_core.documents import Document

    if call.startswith("CohereRerank"):
        rerank = CohereRerank(model=RERANKER, base_url=url, cohere_api_key="unused", top_n=len(TEXTS))
        documents = [Document(page_content=text, metadata={"index": i}) for i, text in enumerate(TEXTS)]
        ranked = rerank.compress_documents(documents, QUERY)
        return by_index([(d.metadata["index"], d.metadata["relevance_score"]) for d in ranked]), "scores100"
    embeddings = CohereEmbeddings(model=EMBEDDER, base_url=url, cohere_api_key="unused")
    if call.startswith("CohereEmbeddings.embed_query"):
        return embeddings.embed_query(QUERY), "query"
    return embeddings.embed_documents(TEXTS), "texts"


def jina_rerank(url: str, call: str):
    from llama_index.core.schema import NodeWithScore, TextNode
    from llama_index.postprocessor.jinaai_rerank import JinaRerank

    texts = TEXTS if call.endswith("100 nodes") else [f"Document {i}." for i in range(1001)]  # Cohere's most + 1
    nodes = [NodeWithScore(node=TextNode(text=text, id_=str(i))) for i, text in enumerate(texts)]
    rerank = JinaRerank(base_url=f"{url}/v1", api_key="unused", top_n=len(nodes))
    try:
        ranked = rerank.postprocess_nodes(nodes, query_str=QUERY)
    except RuntimeError as e:  # JinaRerank raises the body's "detail"
        if len(texts) > 1000 and "--cohere-max-client-batch-size" in str(e):
            raise Refused(f"refused (413), the server's message shown: {e}") from None
        raise
    if len(texts) > 1000:
        raise AssertionError(f"{len(texts)} documents were not refused")
    return by_index([(int(n.node.id_), n.score) for n in ranked]), "scores100"


CALLS = [
    ("openai", "embeddings.create, 100 texts", openai_sdk),
    ("openai", "models.list, models.retrieve", openai_sdk),
    ("langchain-openai", "OpenAIEmbeddings() (tiktoken ids)", langchain_openai),
    ("langchain-openai", "OpenAIEmbeddings(check_embedding_ctx_length=False)", langchain_openai),
    ("huggingface_hub", "InferenceClient.feature_extraction", huggingface_hub),
    ("huggingface_hub", "InferenceClient.sentence_similarity", huggingface_hub),
    ("cohere", "Client.rerank (v1)", cohere),
    ("cohere", "ClientV2.rerank, max_tokens_per_doc", cohere),
    ("requests", "POST /embed (TEI's README)", requests_tei),
    ("requests", "POST /rerank (TEI's README)", requests_tei),
    ("llama-index-embeddings-openai", "OpenAIEmbedding.get_text_embedding_batch, 100 texts", llama_index),
    ("chromadb", "OpenAIEmbeddingFunction, collection.add of 100", chromadb),
    ("chromadb", "HuggingFaceEmbeddingServer, collection.add of 32", chromadb),
    ("haystack-ai", "OpenAITextEmbedder", haystack),
    ("haystack-ai", "OpenAIDocumentEmbedder, 100 documents", haystack),
    ("litellm", "embedding (openai/)", litellm),
    ("litellm", "rerank (cohere/)", litellm),
    ("langchain-huggingface", "HuggingFaceEndpointEmbeddings", langchain_huggingface),
    ("langchain-community", "HuggingFaceInferenceAPIEmbeddings, 32 texts", langchain_community),
    (
        "llama-index-embeddings-text-embeddings-inference",
        "TextEmbeddingsInference.get_text_embedding_batch, 100 texts",
        llama_index_tei,
    ),
    ("langchain-cohere", "CohereRerank.compress_documents, 100 documents", langchain_cohere),
    ("langchain-cohere", "CohereEmbeddings.embed_documents, 100 texts", langchain_cohere),
    ("langchain-cohere", "CohereEmbeddings.embed_query (the query prompt)", langchain_cohere),
    ("llama-index-postprocessor-jinaai-rerank", "JinaRerank.postprocess_nodes, 100 nodes", jina_rerank),
    ("llama-index-postprocessor-jinaai-rerank", "JinaRerank.postprocess_nodes, 1,001 nodes (an error)", jina_rerank),
]


def by_index(pairs: list[tuple[int, float]]) -> list[float]:
    """Scores in the documents' order from (index, score) pairs in rank order."""
    return [score for _, score in sorted(pairs)]


def run_clients(url: str, expected: dict) -> list[dict]:
    """Every call of CALLS whose client this interpreter has: {client, version, call, works, match, note}."""
    cl100k_from_a_copy()
    rows = []
    for distribution, call, function in CALLS:
        row = {"client": distribution, "call": call, "version": None, "works": False, "match": None, "note": ""}
        rows.append(row)
        try:
            row["version"] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            row["note"] = "not installed"
            continue
        try:
            result = function(url, call)
            if result is not None:
                got, key = result
                want = np.asarray(expected[key])
                got = np.asarray(got, dtype=np.float64).reshape(want.shape)
        except Refused as e:
            row["works"], row["note"] = True, str(e)
            continue
        except Exception as e:
            row["note"] = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
            traceback.print_exc()
            continue
        row["works"] = True
        if result is not None:
            row["match"] = bool(np.allclose(got, want, atol=ATOL, rtol=0))
            row["note"] = f"largest difference {np.abs(got - want).max():.1e}"
    return rows


def expected_numbers(embedder_folder: Path, reranker_folder: Path) -> dict:
    from qwen3_embed import Embedder, Reranker

    embedder, reranker = Embedder.from_pretrained(embedder_folder), Reranker.from_pretrained(reranker_folder)
    texts = embedder.encode(TEXTS)
    return {
        "texts": texts.tolist(),
        "texts32": texts[:32].tolist(),
        "text0": texts[0].tolist(),
        "similarity": (embedder.encode(DOCUMENTS) @ embedder.encode(QUERY)).tolist(),
        "scores": reranker.score(QUERY, DOCUMENTS).tolist(),
        "scores100": reranker.score(QUERY, TEXTS).tolist(),
        "query": embedder.encode_query(QUERY).tolist(),
    }


def checkpoints(tokenizer: Path) -> tuple[Path, Path]:
    """Random-weight 2-layer checkpoints of the full Qwen3 vocabulary with the real tokenizer (in local/)."""
    from dataclasses import replace

    from common import ROOT, write_checkpoint
    from qwen3_embed import Qwen3Config

    config = replace(Qwen3Config.preset("0.6B"), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=16)  # fmt: skip
    embedder = write_checkpoint(ROOT / "local" / "clients-embedder", config, tokenizer)
    reranker = write_checkpoint(ROOT / "local" / "clients-reranker", config, tokenizer, reranker=True)
    return embedder, reranker


def serve(embedder: Path, reranker: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "qwen3_embed.cli", "serve", "--model", str(embedder), "--reranker",
               str(reranker), "--port", str(port), "--served-model-name", EMBEDDER, "--served-reranker-name", RERANKER,
               "--device", "cpu"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    import httpx

    for _ in range(600):
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("the server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients-python", nargs="*", default=[], help="more interpreters to run clients in")
    parser.add_argument("--run", nargs=3, metavar=("URL", "EXPECTED", "OUT"), help=argparse.SUPPRESS)  # a child
    args = parser.parse_args()
    if args.run:
        url, expected, out = args.run
        Path(out).write_text(json.dumps(run_clients(url, json.loads(Path(expected).read_text()))))
        return
    from common import RESULTS, SHARED_TOKENIZER, machine, write_results

    embedder, reranker = checkpoints(SHARED_TOKENIZER)
    work = Path(tempfile.mkdtemp(prefix="clients-"))
    (work / "expected.json").write_text(json.dumps(expected_numbers(embedder, reranker)))
    process, url = serve(embedder, reranker)
    rows: dict[tuple[str, str], dict] = {}
    try:
        for python in [sys.executable, *args.clients_python]:
            out = work / "rows.json"
            env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
            subprocess.run([python, __file__, "--run", url, str(work / "expected.json"), str(out)], env=env,
                           check=True, timeout=1800)  # fmt: skip
            for row in json.loads(out.read_text()):
                key = (row["client"], row["call"])
                if key not in rows or rows[key]["version"] is None:
                    rows[key] = row | {"python": python}
    finally:
        process.terminate()
        process.wait(30)
    table = report(list(rows.values()), machine())
    write_results("clients", {"machine": machine(), "rows": list(rows.values())}, table, RESULTS)
    print(table)


def report(rows: list[dict], m: dict) -> str:
    def cell(row: dict) -> str:
        if row["version"] is None:
            return "not installed"
        return "yes" if row["works"] else "no"

    lines = [
        f"Clients against `qwen3-embed serve` (random 2-layer checkpoints with the real Qwen3 tokenizer) on "
        f"{m['cpu']}, {m['cores']} cores; numbers compared with Embedder.encode and Reranker.score within {ATOL:g}.",
        "",
        "| client | version | call | works | numbers match | note |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        match = "" if r["match"] is None else ("yes" if r["match"] else "**no**")
        lines.append(f"| {r['client']} | {r['version'] or ''} | {r['call']} | {cell(r)} | {match} | {r['note']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
