"""Retrieve, then rerank: queries embedded with their instruction, the nearest documents of an Index, and
Qwen3-Reranker over them."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import torch

from .. import checkpoint
from ..checks import UsageError, check_int, check_str
from ..embedder import Embedder
from ..reranker import Reranker
from ..store.fingerprint import model_fingerprint
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

    def __init__(
        self,
        embedder: Embedder,
        index: Index,
        reranker: Reranker | None = None,
        texts: Mapping | Sequence | None = None,
    ):
        check_parts(index, texts)
        check_model("embedder", embedder, Embedder)
        if reranker is not None:
            check_model("reranker", reranker, Reranker)
        check_width(index, "the embedder", embedder.config.hidden_size)
        if reranker is not None:
            check_texts(index, texts)
        self.embedder, self.index, self.reranker, self.texts = embedder, index, reranker, texts

    @classmethod
    def from_pretrained(
        cls,
        index: Index,
        model: str | os.PathLike | None = None,
        reranker: str | os.PathLike | None = None,
        *,
        texts: Mapping | Sequence | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        check_kind: bool = True,
    ) -> Retriever:
        """A Retriever over `index` with an embedding model (a hub id or local folder; default: the one the index's
        manifest names) and a reranker, checked against the index before either loads: a model that makes narrower
        vectors than the index holds, or a reranker over an index that keeps no texts (and no `texts` given), is an
        error; another model than the one that embedded the index (by content) is a warning. device, dtype,
        check_kind: as for Embedder.from_pretrained and Reranker.from_pretrained."""
        check_parts(index, texts)
        if reranker is not None:
            check_texts(index, texts)
        embedded_by = index.manifest["model_name"] if index.manifest is not None else None
        model = model if model is not None else embedded_by
        if model is None:
            raise ValueError("an index of vectors in memory names no model: give model=, the one that embedded them")
        folder = checkpoint.resolve(model)
        check_width(index, str(model), checkpoint.read_config(folder).hidden_size)
        if index.manifest is not None and model_fingerprint(folder) != index.manifest["settings"]["model"]:
            warnings.warn(
                f"{model} is not the model that embedded {index.name} ({embedded_by}, by content): its scores against "
                "these vectors mean little",
                stacklevel=2,
            )
        loading = dict(device=device, dtype=dtype, check_kind=check_kind)
        embedder = Embedder.from_pretrained(folder, **loading)
        return cls(
            embedder, index, Reranker.from_pretrained(reranker, **loading) if reranker is not None else None, texts
        )

    def search(
        self,
        queries: str | Sequence[str],
        top_k: int | None = None,
        *,
        candidates: int = 100,
        instruction: str | None = None,
        rescore_multiplier: int | None = None,
    ) -> list[Hit] | list[list[Hit]]:
        """The best `top_k` documents for each query, best first. The queries are embedded with the instruction (the
        model card's web-search task by default) by `Embedder.encode_query`; with a reranker, the `candidates`
        nearest (all, in a smaller index) are scored by `Reranker.score` with the same instruction and reordered
        (ties in retrieval order). Every argument is checked before the queries are embedded.
        top_k: default 10, or all of a smaller index."""
        single = isinstance(queries, str)
        queries = check_queries(queries)
        if instruction is not None:
            check_str("instruction", instruction)
        top_k, rescore_multiplier = self.index.check_search(top_k, rescore_multiplier)
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


def check_parts(index: object, texts: object) -> None:
    """The index and the texts of the types a Retriever takes, else a TypeError that says what to pass."""
    if not isinstance(index, Index):
        raise TypeError(f"index is {type(index).__name__}, not an Index: pass Index.open(DIR) or Index(vectors, ids)")
    if texts is not None and (isinstance(texts, (str, bytes)) or not hasattr(texts, "__getitem__")):
        raise TypeError(
            f"texts is {type(texts).__name__}: pass a mapping from id to text, or a list when the ids are the positions"
        )


def check_model(name: str, model: object, kind: type) -> None:
    """A loaded model of class `kind`, else a TypeError that says how to load one."""
    if not isinstance(model, kind):
        raise TypeError(
            f"{name} is {type(model).__name__}, not {kind.__name__}: pass {kind.__name__}.from_pretrained(...), or "
            "give its name to Retriever.from_pretrained"
        )


def check_queries(queries: object) -> list[str]:
    """A query (str) or queries (any iterable of str) as a list, each valid Unicode."""
    if isinstance(queries, str):
        return [check_str("the query", queries)]
    if isinstance(queries, (bytes, Mapping)) or not isinstance(queries, Iterable):
        raise TypeError(f"queries is {type(queries).__name__}: pass a query (str) or a list of them")
    return [check_str(f"queries[{i}]", query) for i, query in enumerate(queries)]


def check_width(index: Index, model: str, hidden_size: int) -> None:
    """A model makes vectors of at most its hidden size: an index of wider ones was embedded by another model."""
    if index.dim > hidden_size:
        fix = "use the model that embedded them"
        if index.manifest is not None:
            fix = f"search it with {index.manifest['model_name']}, which embedded it"
        raise ValueError(
            f"{index.name} holds {index.dim}-dimensional vectors, more than {model} makes ({hidden_size}): {fix}"
        )


def check_texts(index: Index, texts: Mapping | Sequence | None) -> None:
    """A reranker reads the documents' texts: given, or kept by the index."""
    if texts is None and index.texts is None:
        keeps_none = f"a reranker reads the documents' texts, and {index.name} keeps none"
        raise UsageError(
            f"{keeps_none}: encode the corpus again with --store-text, or pass texts= (a mapping from id to text)",
            f"{keeps_none}: encode the corpus again with `qwen3-embed encode --store-text`, or search it without "
            "--reranker",
        )
