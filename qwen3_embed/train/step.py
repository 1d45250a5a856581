"""One training step's forward and backward on a packed batch: the texts of a batch of examples tokenized as at
inference, every sequence of the batch packed end to end (no padding), the loss computed on the pooled vectors and
its gradients accumulated into the model's parameters. With `cache_tokens`, gradient caching (GradCache): the
vectors are computed without a graph in packed chunks of that many tokens, the loss's gradient with respect to them
is taken once, then each chunk runs again with its graph and takes its share of that gradient; the same gradients,
in the memory of one chunk."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from ..embedder import Embedder
from ..pipeline import DEFAULT_INSTRUCTION
from ..reranker import Reranker
from ..tokenize import batches, pack
from .data import Example
from .losses import DEFAULT_TEMPERATURE, info_nce, reranker_loss


@dataclass
class ExampleIds:
    """The token ids of one example's texts."""

    query: list[int]
    positive: list[int]
    negatives: list[list[int]]

    @property
    def tokens(self) -> int:
        return len(self.query) + len(self.positive) + sum(map(len, self.negatives))


@dataclass
class Tokenized:
    """A batch's token id lists: the queries first, then the positives in the queries' order, then every negative;
    `owners` says which query each document (positive or negative) belongs to."""

    sequences: list[list[int]]
    queries: int
    owners: list[int]

    @property
    def tokens(self) -> int:
        return sum(map(len, self.sequences))


def collate(examples: Sequence[ExampleIds]) -> Tokenized:
    """A batch of tokenized examples laid out for `info_nce`."""
    negatives = [(i, ids) for i, example in enumerate(examples) for ids in example.negatives]
    sequences = [e.query for e in examples] + [e.positive for e in examples] + [ids for _, ids in negatives]
    return Tokenized(sequences, len(examples), list(range(len(examples))) + [i for i, _ in negatives])


def query_ids(embedder: Embedder, texts: Sequence[str], instruction: str | None, max_length: int) -> list[list[int]]:
    """Queries tokenized as `Embedder.encode_query` does: with the instruction, else the checkpoint's "query"
    prompt, else the model card's instruction."""
    if instruction is None and "query" in embedder.prompts:
        return embedder.tokenize(texts, prompt_name="query", max_length=max_length)
    return embedder.tokenize(texts, instruction=instruction or DEFAULT_INSTRUCTION, max_length=max_length)


def document_ids(embedder: Embedder, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Documents tokenized as `Embedder.encode_document` does: the checkpoint's "document" prompt (empty for the
    released models), else none."""
    prompt = "document" if "document" in embedder.prompts else None
    return embedder.tokenize(texts, prompt_name=prompt, max_length=max_length)


def tokenize_examples(
    embedder: Embedder, examples: Sequence[Example], instruction: str | None = None, max_length: int = 512
) -> list[ExampleIds]:
    """The token ids of each example's texts, as at inference: queries with the instruction, documents without."""
    queries = query_ids(embedder, [e.query for e in examples], instruction, max_length)
    positives = document_ids(embedder, [e.positive for e in examples], max_length)
    negatives = document_ids(embedder, [text for e in examples for text in e.negatives], max_length)
    out, used = [], 0
    for example, query, positive in zip(examples, queries, positives):
        out.append(ExampleIds(query, positive, negatives[used : used + len(example.negatives)]))
        used += len(example.negatives)
    return out


def embed(model: torch.nn.Module, sequences: Sequence[list[int]], device: torch.device, autocast: bool) -> torch.Tensor:
    """Pooled vectors [n, hidden] (float32) of the sequences, in their order, from one packed forward pass."""
    batch = pack(sequences, list(range(len(sequences)))).to(device)
    with torch.autocast(device.type, torch.bfloat16) if autocast else nullcontext():
        return model(batch.input_ids, batch.plan(), batch.position_ids).float()


class ContrastiveStep:
    """The embedder's InfoNCE (`info_nce`) on batches of examples: `tokenize` once, `backward` per batch."""

    def __init__(
        self,
        embedder: Embedder,
        temperature: float = DEFAULT_TEMPERATURE,
        same_kind: bool = False,
        cache_tokens: int | None = None,
        autocast: bool = False,
        instruction: str | None = None,
        max_length: int = 512,
    ):
        self.pipeline, self.temperature, self.same_kind = embedder, temperature, same_kind
        self.cache_tokens, self.autocast = cache_tokens, autocast
        self.instruction, self.max_length = instruction, max_length

    def tokenize(self, examples: Sequence[Example]) -> list[ExampleIds]:
        return tokenize_examples(self.pipeline, examples, self.instruction, self.max_length)

    def loss(self, vectors: torch.Tensor, batch: Tokenized) -> torch.Tensor:
        owners = torch.tensor(batch.owners, device=vectors.device)
        return info_nce(vectors[: batch.queries], vectors[batch.queries :], owners, self.temperature, self.same_kind)

    def backward(self, examples: Sequence[ExampleIds]) -> torch.Tensor:
        """The batch's loss (detached); its gradients added to the parameters' `.grad`."""
        batch, model, device = collate(examples), self.pipeline.model, self.pipeline.device
        if self.cache_tokens is None:
            loss = self.loss(embed(model, batch.sequences, device, self.autocast), batch)
            loss.backward()
            return loss.detach()
        chunks = list(batches(batch.sequences, self.cache_tokens))
        vectors = torch.empty(len(batch.sequences), model.config.hidden_size, device=device)
        with torch.no_grad():
            for chunk in chunks:
                vectors[chunk.index] = embed(model, [batch.sequences[i] for i in chunk.index], device, self.autocast)
        vectors.requires_grad_(True)
        loss = self.loss(vectors, batch)
        loss.backward()
        for chunk in chunks:  # each chunk again, with its graph, taking its share of the vectors' gradient
            again = embed(model, [batch.sequences[i] for i in chunk.index], device, self.autocast)
            again.backward(vectors.grad[chunk.index])
        return loss.detach()


@dataclass
class PairIds:
    """One example's (query, document) pairs for the reranker, tokenized with the card's prompt: the positive's pair
    first (label 1), then each negative's (label 0)."""

    sequences: list[list[int]]

    @property
    def tokens(self) -> int:
        return sum(map(len, self.sequences))

    @property
    def labels(self) -> list[int]:
        return [1] + [0] * (len(self.sequences) - 1)


class RerankerStep:
    """The reranker's cross-entropy over its "no"/"yes" logits (`reranker_loss`) on batches of examples, each with
    its negatives."""

    def __init__(
        self, reranker: Reranker, autocast: bool = False, instruction: str | None = None, max_length: int = 512
    ):
        self.pipeline, self.autocast, self.instruction, self.max_length = reranker, autocast, instruction, max_length

    def tokenize(self, examples: Sequence[Example]) -> list[PairIds]:
        pairs = [(e.query, d) for e in examples for d in (e.positive, *e.negatives)]
        ids, out = self.pipeline.tokenize(pairs, self.instruction, self.max_length), []
        for example in examples:
            count = 1 + len(example.negatives)
            out.append(PairIds(ids[:count]))
            del ids[:count]
        return out

    def backward(self, examples: Sequence[PairIds]) -> torch.Tensor:
        sequences = [ids for e in examples for ids in e.sequences]
        labels = torch.tensor([label for e in examples for label in e.labels], device=self.pipeline.device)
        loss = reranker_loss(reranker_logits(self.pipeline, sequences, self.autocast), labels)
        loss.backward()
        return loss.detach()


def reranker_logits(reranker: Reranker, sequences: Sequence[list[int]], autocast: bool = False) -> torch.Tensor:
    """l_yes - l_no [P] of each tokenized pair, with a graph."""
    return reranker.head(embed(reranker.model, sequences, reranker.device, autocast))
