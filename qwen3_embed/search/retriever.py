"""Retrieve, then rerank: queries embedded with their instruction, the nearest documents of an Index, and
Qwen3-Reranker over them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

from ..checks import check_int
from .index import Index


class Hit(NamedTuple):
    id: object
    score: float  # the reranker's when reranked, else the inner product
    text: str | None  # None when the index keeps no texts and none were given


class Retriever:
    """Queries -> the nearest documents of an index, reranked with Qwen3-Reranker when a reranker is given.

    texts: the documents' texts by id (a dict, or a list when the ids are the positions); default: those the index
    keeps (`encode --store-text`). A reranker needs them.
    """

    def __init__(self, embedder, index: Index, reranker=None, texts: Mapping | Sequence | None = None):
        if index.dim > embedder.config.hidden_size:
            raise ValueError(
                f"the index holds {index.dim}-dimensional vectors, more than the embedder's hidden size "
                f"{embedder.config.hidden_size}: use the model that embedded the corpus"
            )
        if reranker is not None and texts is None and index.texts is None:
            raise ValueError(
                "a reranker reads the documents' texts, and this index keeps none: encode the corpus with "
                "--store-text, or pass texts= (a mapping from id to text)"
            )
        self.embedder, self.index, self.reranker, self.texts = embedder, index, reranker, texts

    def search(
        self,
        queries: str | Sequence[str],
        top_k: int = 10,
        *,
        candidates: int = 100,
        instruction: str | None = None,
        rescore_multiplier: int = 4,
    ) -> list[Hit] | list[list[Hit]]:
        """The best `top_k` documents for each query, best first. The queries are embedded with the instruction (the
        model card's web-search task by default) by `Embedder.encode_query`; with a reranker, the `candidates`
        nearest (all, in a smaller index) are scored by `Reranker.score` with the same instruction and reordered
        (ties in retrieval order)."""
        single = isinstance(queries, str)
        queries = [queries] if single else list(queries)
        top_k = check_int("top_k", top_k, 1, len(self.index), f"the {len(self.index)} vectors of the index")
        if self.reranker is not None:
            candidates = check_int("candidates", candidates, top_k, None)
        vectors = self.embedder.encode_query(queries, instruction=instruction, dim=self.index.dim)
        n = top_k if self.reranker is None else min(candidates, len(self.index))
        found = self.index.search(vectors, n, rescore_multiplier=rescore_multiplier)
        results = []
        for query, scores, positions, ids in zip(queries, found.scores.tolist(), found.positions.tolist(), found.ids):
            texts = [self._text(p, i) for p, i in zip(positions, ids)]
            if self.reranker is not None:
                scores = self.reranker.score(query, texts, instruction=instruction).tolist()
                order = sorted(range(n), key=lambda j: -scores[j])[:top_k]
                scores, ids, texts = ([x[j] for j in order] for x in (scores, ids, texts))
            results.append([Hit(*hit) for hit in zip(ids, scores, texts)])
        return results[0] if single else results

    def _text(self, position: int, id) -> str | None:
        if self.texts is not None:
            try:
                return self.texts[id]
            except (KeyError, IndexError):
                raise KeyError(f"no text for document id {id!r} in the texts given to the Retriever") from None
        return self.index.texts[position] if self.index.texts is not None else None
