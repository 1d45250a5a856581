"""Real third-party clients (the openai SDK, huggingface_hub's InferenceClient, the cohere SDK, LangChain's
OpenAIEmbeddings) against a real server (test_server's Served: uvicorn as `qwen3-embed serve` runs it, in a thread,
on a loopback port) of random 2-layer checkpoints; each client's numbers are compared with Embedder.encode and
Reranker.score. Heavier clients (LlamaIndex, Chroma, Haystack, ...) are in benchmarks/clients.py, run by hand."""

from __future__ import annotations

import base64
import warnings

import numpy as np
import pytest

from checkpoints import texts_of_lengths

openai = pytest.importorskip("openai")
pytest.importorskip("uvicorn")

from test_server import QUERY, Served, reranker_fixture  # noqa: E402, F401 (a fixture)

from qwen3_embed.server import Limits, create_app  # noqa: E402
from qwen3_embed.server.token_ids import RoundTrip  # noqa: E402
from qwen3_embed.store.quantize import quantize  # noqa: E402

EMBEDDER, RERANKER = "tiny/embedder", "tiny-reranker"  # a slash, as in a hub id
TEXTS = texts_of_lengths(100, max_words=30)
# cl100k_base's split pattern (tiktoken_ext.openai_public)
CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|"""
    r"""\s+(?!\S)|\s"""
)
DOCUMENTS = ["The capital of China is Beijing.", "Gravity is a force that attracts two bodies.", "yes", "Beijing"]


@pytest.fixture(scope="module")
def url(embedder, reranker):
    app = create_app(embedder, reranker, served_model_name=EMBEDDER, served_reranker_name=RERANKER, limits=Limits())
    with Served(app) as base:
        yield base


@pytest.fixture(scope="module")
def sdk(url):
    with openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as client:
        yield client


def test_openai_sdk_embeds_a_hundred_texts_at_once(sdk, embedder):
    """OpenAI takes 2,048 inputs per request, and its clients send 100 or 1,000 at once (TEI's 32 refused them)."""
    response = sdk.embeddings.create(model=EMBEDDER, input=TEXTS)  # the SDK asks for base64 and decodes it
    assert [d.index for d in response.data] == list(range(100)) and response.model == EMBEDDER
    np.testing.assert_allclose([d.embedding for d in response.data], embedder.encode(TEXTS).numpy(), atol=1e-6)


def test_openai_sdk_embedding_options(sdk, embedder):
    one = sdk.embeddings.create(model=EMBEDDER, input="one text", encoding_format="float")
    assert len(one.data) == 1
    np.testing.assert_allclose(one.data[0].embedding, embedder.encode("one text").numpy(), atol=1e-5)
    short = sdk.embeddings.create(model=EMBEDDER, input=TEXTS[:3], dimensions=16, encoding_format="float")
    np.testing.assert_allclose([d.embedding for d in short.data], embedder.encode(TEXTS[:3], dim=16), atol=1e-5)
    encoded = sdk.embeddings.create(model=EMBEDDER, input=TEXTS[:2], encoding_format="base64")
    vectors = [np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in encoded.data]
    np.testing.assert_array_equal(vectors, embedder.encode(TEXTS[:2]).numpy())


def test_a_bad_dimensions_is_named_as_the_client_sent_it(sdk, url):
    """The request's field is `dimensions` (OpenAI's and TEI's), not the Python API's `dim`."""
    import httpx

    with pytest.raises(openai.BadRequestError, match=r"^Error code: 400 - dimensions=0 is outside 1\.\."):
        sdk.embeddings.create(model=EMBEDDER, input="x", dimensions=0)
    tei = httpx.post(f"{url}/embed", json={"inputs": "x", "dimensions": 100_000})
    assert tei.status_code == 422 and tei.json()["error"].startswith("dimensions=100000 is outside 1..")


def test_openai_sdk_embeds_a_langchain_sized_batch_of_ordinary_texts(sdk, embedder):
    """LangChain's OpenAIEmbeddings sends 1,000 texts per request by default: 1,000 texts of up to 30 words (70,915
    tokens with the tests' tokenizer) must embed under the default flags, as OpenAI's API takes 300,000 tokens."""
    texts = texts_of_lengths(1000, seed=1, max_words=30)
    response = sdk.embeddings.create(model=EMBEDDER, input=texts)
    np.testing.assert_allclose([d.embedding for d in response.data], embedder.encode(texts).numpy(), atol=1e-5)


def test_openai_sdk_lists_and_retrieves_the_models(sdk):
    assert [m.id for m in sdk.models.list()] == [EMBEDDER, RERANKER]
    assert sdk.models.retrieve(EMBEDDER).id == EMBEDDER  # the SDK sends tiny%2Fembedder
    assert sdk.models.retrieve(RERANKER).object == "model"
    with pytest.raises(openai.NotFoundError, match="not served here"):
        sdk.models.retrieve("gpt-4")


def test_inference_client_at_the_base_url(url, embedder, monkeypatch):
    """huggingface_hub's InferenceClient pointed at the server posts feature_extraction and sentence_similarity to
    POST / (TEI routes it by the model's kind). CI sets HF_HUB_OFFLINE=1, which blocks even this local server."""
    hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", False)
    client = hub.InferenceClient(model=url)
    vectors = client.feature_extraction("one text")
    np.testing.assert_allclose(vectors, embedder.encode(["one text"]).numpy(), atol=1e-5)
    similarities = client.sentence_similarity(QUERY, other_sentences=DOCUMENTS)
    expected = embedder.encode(DOCUMENTS) @ embedder.encode(QUERY)
    np.testing.assert_allclose(similarities, expected.numpy(), atol=1e-5)


def test_cohere_sdk_v1_v2_and_max_tokens_per_doc(url, reranker):
    cohere = pytest.importorskip("cohere")
    scores = reranker.score(QUERY, DOCUMENTS).tolist()
    best = sorted(range(len(DOCUMENTS)), key=lambda i: -scores[i])
    v1 = cohere.Client(api_key="unused", base_url=url).rerank(model=RERANKER, query=QUERY, documents=DOCUMENTS)
    v2 = cohere.ClientV2(api_key="unused", base_url=url)
    for response in (v1, v2.rerank(model=RERANKER, query=QUERY, documents=DOCUMENTS, max_tokens_per_doc=4096)):
        assert [r.index for r in response.results] == best
        assert [r.relevance_score for r in response.results] == pytest.approx([scores[i] for i in best], abs=1e-5)
    cut = v2.rerank(model=RERANKER, query=QUERY, documents=DOCUMENTS, max_tokens_per_doc=3)
    expected = [score_of_first_tokens(reranker, d, 3) for d in DOCUMENTS]
    assert {r.index: r.relevance_score for r in cut.results} == pytest.approx(dict(enumerate(expected)), abs=1e-5)
    assert expected != pytest.approx(scores, abs=1e-3)  # the cut changed the longer documents' scores


def test_cohere_sdk_embeds_queries_and_documents(url, embedder):
    """Cohere's embed (v1 and v2, as LangChain's CohereEmbeddings sends it): a search_query gets encode_query's
    prompt, a search_document none; output_dimension is Matryoshka's dim; binary and ubinary are
    quantize_embeddings' (sentence-transformers', after Cohere's); int8 and uint8 are refused, naming the types."""
    cohere = pytest.importorskip("cohere")
    v1, v2 = cohere.Client(api_key="unused", base_url=url), cohere.ClientV2(api_key="unused", base_url=url)
    queries = v1.embed(texts=TEXTS, model=EMBEDDER, input_type="search_query")
    assert queries.response_type == "embeddings_floats" and queries.meta.billed_units.input_tokens > len(TEXTS)
    np.testing.assert_allclose(queries.embeddings, embedder.encode_query(TEXTS).numpy(), atol=1e-5)
    # LangChain's CohereEmbeddings' call: its truncate, None unless set, comes as null (Cohere's default, END)
    langchain = v1.embed(texts=TEXTS, model=EMBEDDER, input_type="search_document", embedding_types=["float"],
                         truncate=None)  # fmt: skip
    np.testing.assert_allclose(langchain.embeddings.float_, embedder.encode(TEXTS).numpy(), atol=1e-5)
    documents = v2.embed(texts=TEXTS[:5], model=EMBEDDER, input_type="search_document", output_dimension=32,
                         embedding_types=["float", "ubinary", "binary"])  # fmt: skip
    expected = embedder.encode(TEXTS[:5], dim=32)
    np.testing.assert_allclose(documents.embeddings.float_, expected.numpy(), atol=1e-5)
    assert documents.embeddings.ubinary == quantize(expected, "ubinary").tolist()
    assert documents.embeddings.binary == quantize(expected, "binary").tolist()
    with pytest.raises(cohere.core.ApiError) as refused:
        v2.embed(texts=["a"], model=EMBEDDER, input_type="clustering", embedding_types=["int8"])
    message = 'embedding_types[0] must be "float", "binary" or "ubinary", not "int8"'
    assert refused.value.status_code == 400 and message in refused.value.body["message"]


def test_cohere_v2_cuts_a_long_document_by_default(url, reranker):
    """Cohere v2's max_tokens_per_doc defaults to 4,096: a document over --max-input-length (8192) is cut to its first
    4,096 tokens on /v2/rerank, where /v1/rerank refuses it without "truncate" (413, saying how in the body's
    terms)."""
    import httpx

    cohere = pytest.importorskip("cohere")
    document = "gravity pulls " * 1000
    assert len(reranker.tokenizer.ids(document)) > 8192
    v2 = cohere.ClientV2(api_key="unused", base_url=url).rerank(model=RERANKER, query=QUERY, documents=[document])
    assert v2.results[0].relevance_score == pytest.approx(score_of_first_tokens(reranker, document, 4096), abs=1e-5)
    v1 = httpx.post(f"{url}/v1/rerank", json={"query": QUERY, "documents": [document]}, timeout=60)
    assert v1.status_code == 413, v1.text
    assert v1.json()["error"]["message"].endswith('shorten them, or send "truncate": true in the body')


def score_of_first_tokens(reranker, document: str, tokens: int) -> float:
    """The score of the query with the document's first `tokens` tokens (" " + document, as the prompt joins
    them): its pair cut by Reranker.score's own truncation to the length that leaves exactly those."""
    pair = reranker.tokenize([(QUERY, document)], max_length=reranker.config.max_position_embeddings)[0]
    extra = max(0, len(reranker.tokenizer.ids(" " + document)) - tokens)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the cut is the point
        return reranker.score(QUERY, [document], max_length=len(pair) - extra).item()


@pytest.fixture
def cl100k_stand_in(embedder, monkeypatch):
    """A tiktoken Encoding registered as cl100k_base, which tiktoken would download (there is no network here nor in
    CI). It stands for cl100k as LangChain uses it against this server: a byte-level BPE over the same bytes as the
    served model's tokenizer whose ids name other tokens, here its tokens ordered by length, then bytes."""
    tiktoken = pytest.importorskip("tiktoken")
    backend = embedder.tokenizer.backend
    special = set(backend.get_added_tokens_decoder())
    pieces = {b for i, b in enumerate(RoundTrip(backend).bytes) if i not in special}
    ranks = {piece: rank for rank, piece in enumerate(sorted(pieces, key=lambda b: (len(b), b)))}
    encoding = tiktoken.Encoding("cl100k_base", pat_str=CL100K_PATTERN, mergeable_ranks=ranks, special_tokens={})
    monkeypatch.setitem(tiktoken.registry.ENCODINGS, "cl100k_base", encoding)
    return encoding


def test_langchain_openai_embeddings(url, embedder, cl100k_stand_in):
    """LangChain's OpenAIEmbeddings sends tiktoken ids by default, which this model would embed as its own ids of
    other tokens: refused, saying how to send texts; with texts its vectors are the model's."""
    langchain_openai = pytest.importorskip("langchain_openai")
    options = dict(model=EMBEDDER, base_url=f"{url}/v1", api_key="unused", max_retries=0)
    assert cl100k_stand_in.encode_ordinary(TEXTS[0]) != embedder.tokenizer.ids(TEXTS[0])
    with pytest.raises(openai.BadRequestError, match="look like another tokenizer's ids") as refused:
        langchain_openai.OpenAIEmbeddings(**options).embed_documents(TEXTS)
    assert "check_embedding_ctx_length=False" in str(refused.value)
    texts = langchain_openai.OpenAIEmbeddings(**options, check_embedding_ctx_length=False)
    np.testing.assert_allclose(texts.embed_documents(TEXTS), embedder.encode(TEXTS).numpy(), atol=1e-5)
    np.testing.assert_allclose(texts.embed_query(QUERY), embedder.encode(QUERY).numpy(), atol=1e-5)
