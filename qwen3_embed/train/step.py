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
from .losses import DEFAULT_TEMPERATURE, info_nce


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
) -> Tokenized:
    """The token ids of a batch of examples, laid out for `info_nce`."""
    negatives = [(i, text) for i, example in enumerate(examples) for text in example.negatives]
    queries = query_ids(embedder, [e.query for e in examples], instruction, max_length)
    documents = document_ids(embedder, [e.positive for e in examples] + [t for _, t in negatives], max_length)
    owners = list(range(len(examples))) + [i for i, _ in negatives]
    return Tokenized(queries + documents, len(examples), owners)


def embed(model: torch.nn.Module, sequences: Sequence[list[int]], device: torch.device, autocast: bool) -> torch.Tensor:
    """Pooled vectors [n, hidden] (float32) of the sequences, in their order, from one packed forward pass."""
    batch = pack(sequences, list(range(len(sequences)))).to(device)
    with torch.autocast(device.type, torch.bfloat16) if autocast else nullcontext():
        return model(batch.input_ids, batch.plan(), batch.position_ids).float()


class ContrastiveStep:
    """The embedder's InfoNCE (`info_nce`) on batches of examples, forward and backward."""

    def __init__(
        self,
        embedder: Embedder,
        temperature: float = DEFAULT_TEMPERATURE,
        same_kind: bool = False,
        cache_tokens: int | None = None,
        autocast: bool = False,
    ):
        self.embedder, self.temperature, self.same_kind = embedder, temperature, same_kind
        self.cache_tokens, self.autocast = cache_tokens, autocast

    def loss(self, vectors: torch.Tensor, batch: Tokenized) -> torch.Tensor:
        owners = torch.tensor(batch.owners, device=vectors.device)
        return info_nce(vectors[: batch.queries], vectors[batch.queries :], owners, self.temperature, self.same_kind)

    def backward(self, batch: Tokenized) -> torch.Tensor:
        """The batch's loss (detached); its gradients added to the parameters' `.grad`."""
        model, device = self.embedder.model, self.embedder.device
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


def pair_ids(reranker: Reranker, pairs: Sequence[tuple[str, str]], instruction: str | None, max_length: int):
    """(query, document) pairs tokenized as `Reranker.score` does: the model card's prompt."""
    return reranker.tokenize(pairs, instruction, max_length)


def reranker_logits(reranker: Reranker, sequences: Sequence[list[int]], autocast: bool = False) -> torch.Tensor:
    """l_yes - l_no [P] of each tokenized pair, with a graph."""
    return reranker.head(embed(reranker.model, sequences, reranker.device, autocast))
