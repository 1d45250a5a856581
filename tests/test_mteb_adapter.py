"""The MTEB adapter end to end on a tiny retrieval task defined here (nothing is downloaded): queries carry the
task's instruction, documents none, and MTEB's scores are those of our own vectors."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from checkpoints import REPO
from qwen3_embed.embedder import format_instruction

mteb = pytest.importorskip("mteb")
pytestmark = pytest.mark.slow  # importing mteb alone takes seconds

from datasets import Dataset  # noqa: E402  (an mteb dependency)
from mteb.abstasks.retrieval import AbsTaskRetrieval  # noqa: E402
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData  # noqa: E402
from mteb.abstasks.task_metadata import TaskMetadata  # noqa: E402
from mteb.types import PromptType  # noqa: E402

from qwen3_embed.mteb_adapter import MTEBEncoder  # noqa: E402

TASK = "Given a question, find the sentence that answers it"
DOCUMENTS = [
    "The capital of China is Beijing.",
    "Gravity is a force that attracts two bodies towards each other.",
    "Paris is the capital of France.",
    "Embeddings map text to vectors.",
    "Qwen3 models use grouped-query attention.",
    "Les modèles multilingues comprennent aussi le français.",
]
QUERIES = ["What is the capital of China?", "Explain gravity", "Where is Paris?", "What do embeddings do?"]
RELEVANT = {0: 0, 1: 1, 2: 2, 3: 3}  # query -> its document


class TinyRetrieval(AbsTaskRetrieval):
    metadata = TaskMetadata(
        name="TinyLocalRetrieval", type="Retrieval", main_score="ndcg_at_10", prompt={"query": TASK},
        description="Six documents and four questions, defined in the test.", reference="https://example.org",
        dataset={"path": "local/tiny-retrieval", "revision": "1"}, category="t2t", eval_splits=["test"],
        eval_langs=["eng-Latn"], date=("2025-01-01", "2025-01-01"), dialect=[], domains=[], task_subtypes=[],
        license="cc-by-4.0", annotations_creators="derived", modalities=["text"], sample_creation="found",
        bibtex_citation="",
    )  # fmt: skip

    def load_data(self, num_proc=None, **kwargs) -> None:
        split = RetrievalSplitData(
            queries=Dataset.from_list([{"id": f"q{i}", "text": q} for i, q in enumerate(QUERIES)]),
            corpus=Dataset.from_list([{"id": f"d{i}", "text": d} for i, d in enumerate(DOCUMENTS)]),
            relevant_docs={f"q{q}": {f"d{d}": 1} for q, d in RELEVANT.items()},
            top_ranked=None,
        )
        self.dataset = {"default": {"test": split}}
        self.data_loaded = True


def test_mteb_evaluates_our_vectors_with_the_task_instruction(embedder, monkeypatch):
    calls = []
    encode = embedder.encode

    def recording(texts, **options):
        calls.append((list(texts), options["instruction"]))
        return encode(texts, **options)

    monkeypatch.setattr(embedder, "encode", recording)
    result = mteb.evaluate(MTEBEncoder(embedder, name="test/tiny"), [TinyRetrieval()], cache=None,
                           show_progress_bar=False)  # fmt: skip
    assert sorted(calls) == sorted([(QUERIES, TASK), (DOCUMENTS, None)])
    scores = result.task_results[0].scores["test"][0]
    similarity = encode(QUERIES, instruction=TASK) @ encode(DOCUMENTS).T
    ranks = [int((similarity[q] > similarity[q, d]).sum()) + 1 for q, d in RELEVANT.items()]
    assert scores["mrr_at_10"] == pytest.approx(sum(1 / r for r in ranks) / len(ranks), abs=1e-5)
    assert scores["recall_at_1"] == pytest.approx(sum(r == 1 for r in ranks) / len(ranks), abs=1e-5)


def test_instructions_are_those_of_mtebs_qwen3_loader(tiny, embedder, monkeypatch):
    """On mteb's mock tasks of every text task type, none with a prompt of its own, each text gets the prompt that
    mteb's registered Qwen3-Embedding loader gives it (on the same checkpoint), and the scores are the loader's."""
    from mteb.mocks import mock_tasks
    from mteb.models.model_implementations.qwen3_models import q3e_instruct_loader

    types = ["classification.Classification", "sts.STS", "pair_classification.PairClassification",
             "retrieval.Retrieval", "bitext_mining.BitextMining", "clustering.Clustering", "reranking.Reranking",
             "regression.Regression", "summarization.Summarization"]  # fmt: skip
    mocks = [getattr(getattr(mock_tasks, t.split(".")[0]), f"Mock{t.split('.')[1]}Task") for t in types]
    assert len(mocks) == 9 and all(mock.metadata.prompt is None for mock in mocks)
    theirs = q3e_instruct_loader(str(tiny[0]), revision=None, device="cpu")
    expected_prompts, prompts = [], []
    st_encode, encode = theirs.model.encode, embedder.encode

    def st_recording(texts, prompt=None, **options):
        expected_prompts.append((tuple(texts), prompt or None))
        return st_encode(texts, prompt=prompt, **options)

    def recording(texts, **options):
        instruction = options["instruction"]
        prompts.append((tuple(texts), None if instruction is None else format_instruction(instruction, "")))
        return encode(texts, **options)

    monkeypatch.setattr(theirs.model, "encode", st_recording)
    monkeypatch.setattr(embedder, "encode", recording)
    expected = mteb.evaluate(theirs, [mock() for mock in mocks], cache=None, show_progress_bar=False)
    result = mteb.evaluate(MTEBEncoder(embedder, name="test/tiny"), [mock() for mock in mocks], cache=None,
                           show_progress_bar=False)  # fmt: skip
    assert sorted(prompts, key=str) == sorted(expected_prompts, key=str)
    used = {prompt for _, prompt in prompts}
    assert "Instruct: Classify user passages.\nQuery:" in used and None in used  # mteb's default; documents: none
    for ours, reference in zip(result.task_results, expected.task_results):
        assert ours.task_name == reference.task_name
        assert ours.get_score() == pytest.approx(reference.get_score(), abs=1e-4), ours.task_name


def test_a_tasks_own_prompt_and_dim(embedder):
    encoder = MTEBEncoder(embedder, dim=32)
    assert encoder.mteb_model_meta.embed_dim == 32
    retrieval = TinyRetrieval.metadata
    assert encoder.instruction(retrieval, PromptType.query) == TASK
    assert encoder.instruction(retrieval, PromptType.document) is None
    sts = SimpleNamespace(name="MySTS", type="STS", prompt="Retrieve semantically similar text")
    assert encoder.instruction(sts, None) == "Retrieve semantically similar text"  # every text of the pair
    vectors = encoder.encode([{"text": ["a b", "c"]}], task_metadata=sts, hf_split="test", hf_subset="default")
    expected = embedder.encode(["a b", "c"], instruction="Retrieve semantically similar text", dim=32)
    torch.testing.assert_close(torch.from_numpy(vectors), expected)


def test_the_evaluation_script_says_it_needs_the_weights(tmp_path):
    command = [sys.executable, "benchmarks/mteb_eval.py", "--model", str(tmp_path / "none"), "--benchmark",
               "MTEB(eng, v2)"]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "this needs the real weights of" in done.stderr
