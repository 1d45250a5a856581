"""Index: the top-k inner products of queries over stored vectors (store.Vectors: in memory, or a folder of shards
memory-mapped), streamed in blocks of rows, each cut to its top k before the next; exact for float vectors, with
rescoring for quantized ones.

An Index searches its *stored* vectors at a *precision* no higher than theirs. At the stored precision the first
stage streams the stored vectors themselves; at a lower one it runs over a quantized copy held in memory (n x dim/8
bytes for binary). Each block is scored by the scorer of the search's precision (scorers.py). Float search is exact.
Quantized search takes `rescore_multiplier x top_k` candidates by their integer score, then scores them with the
float query against the stored vectors and keeps the best `top_k`. (sentence-transformers quantizes an int8 query
with the corpus's ranges instead, which centres each dimension at the middle of its range and weights it by
1/step^2: on the vectors of benchmarks/search.py its first stage keeps 46% of the true top 10, this one 96%.)
Results are ordered by score, ties by position. Any number of threads may search one Index at once.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from ..checks import check_bools, check_int, resolve_device
from ..store.quantize import FLOATS, PRECISIONS, check_precision, quantization_ranges
from ..store.vectors import BLOCK_ROWS, Vectors
from .scorers import scorer

# Lower is coarser; a search runs at its stored vectors' rank or below.
RANK = {"binary": 0, "ubinary": 0, "int8": 1, "uint8": 1, "float16": 2, "bfloat16": 2, "float32": 3, "float64": 4}
DEFAULT_RESCORE_MULTIPLIER = 4
DEFAULT_TOP_K = 10  # or all of a smaller index: a default is capped, a top_k asked for is checked


class Hits(NamedTuple):
    """Search results, best first: [queries, k] (or [k] for one query given as a 1-D vector)."""

    scores: torch.Tensor  # float32
    positions: torch.Tensor  # int64: rows of the index
    ids: list  # the rows' ids


class Index:
    """Exact (or quantized, with rescoring) inner-product top-k over vectors, streamed in blocks of `block_rows`.

    vectors: [n, dim] float vectors (a tensor or array; used in place, never copied whole), or vectors already
    quantized by `quantize` (then `precision` says which, and int8/uint8 need their `ranges`), or a `Vectors` store
    (with its own ids). ids: one per row (default: the positions 0..n-1). precision: search at a lower precision than
    the vectors' own, over a copy quantized with `ranges`, else those of `calibration` vectors, else those of the
    vectors themselves, then rescore against the vectors. device: where scores are computed (default: the vectors'
    device); blocks held elsewhere are copied to it one at a time.
    """

    def __init__(
        self,
        vectors: torch.Tensor | np.ndarray | Vectors,
        ids: Sequence | None = None,
        *,
        precision: str | None = None,
        ranges: np.ndarray | None = None,
        calibration: torch.Tensor | np.ndarray | None = None,
        device: str | torch.device | None = None,
        block_rows: int = BLOCK_ROWS,
    ):
        if isinstance(vectors, Vectors) and ids is not None:
            raise ValueError("a Vectors store holds its own ids: give them to Vectors.from_array, not to Index")
        if not isinstance(vectors, Vectors):
            vectors = Vectors.from_array(vectors, ids, precision, ranges)
        self.vectors, self.block_rows = vectors, check_int("block_rows", block_rows, 1)
        self.dim, self.stored, self.ids, self.texts = vectors.dim, vectors.precision, vectors.ids, vectors.texts
        self.manifest = vectors.manifest
        self.precision = search_precision(vectors.precision, precision)
        self.device = resolve_device(device) if device is not None else vectors.device
        self.ranges, self._first = vectors.ranges, vectors
        if self.precision != self.stored:  # a coarser copy in memory, quantized block by block
            if self.precision in ("int8", "uint8"):
                self.ranges = np.asarray(self._copy_ranges(ranges, calibration), np.float32)
            self._first = vectors.quantized(self.precision, self.ranges, self.block_rows)
        self._scorer = scorer(self.precision, self.dim, self.device, self.block_rows, self.ranges)

    @classmethod
    def open(
        cls,
        folder: str | os.PathLike,
        *,
        precision: str | None = None,
        ranges: np.ndarray | None = None,
        calibration: torch.Tensor | np.ndarray | None = None,
        verify: bool = True,
        device: str | torch.device | None = None,
        block_rows: int = BLOCK_ROWS,
    ) -> Index:
        """An index over a folder written by `qwen3-embed encode --output DIR`, its vectors memory-mapped. Every shard
        is checked against the manifest first (sizes, counts, dtypes and shapes; sha256 checksums unless
        `verify=False`). precision, ranges, calibration, device, block_rows: as for Index()."""
        check_bools(verify=verify)
        vectors = Vectors.open(folder, verify)
        if vectors.ranges is not None and ranges is not None:
            raise ValueError(
                f"the {vectors.precision} shards of {folder} were quantized with the ranges in its manifest; ranges= "
                "applies to an int8 search of float shards"
            )
        return cls(
            vectors, precision=precision, ranges=ranges, calibration=calibration, device=device, block_rows=block_rows
        )

    def __len__(self) -> int:
        return len(self.vectors)

    @property
    def name(self) -> str:
        """What messages call this index: the folder it was opened from, else "the index"."""
        return str(self.vectors.folder) if self.vectors.folder is not None else "the index"

    @property
    def exact(self) -> bool:
        """Whether a search scores the stored float vectors as they are (else it rescores candidates)."""
        return self.precision == self.stored and self.precision in FLOATS

    def check_search(self, top_k: int | None, rescore_multiplier: int | None = None) -> tuple[int, int | None]:
        """(top_k, rescore_multiplier) checked as `search` checks them, for a caller that checks before it embeds
        its queries: top_k in 1..len(self), default 10 or all of a smaller index; rescore_multiplier (default 4)
        only for a quantized search."""
        if len(self) == 0:
            raise ValueError("the index is empty: it holds no vectors (was its input empty, or every record skipped?)")
        if top_k is None:
            top_k = min(DEFAULT_TOP_K, len(self))
        top_k = check_int("top_k", top_k, 1, len(self), f"the {len(self)} vectors of the index")
        if self.exact:
            if rescore_multiplier is not None:
                raise ValueError(
                    f"rescore_multiplier applies to a quantized search, and {self.name} is searched in "
                    f"{self.precision}; drop it, or give precision='int8' or 'binary'"
                )
            return top_k, None
        if rescore_multiplier is None:
            return top_k, DEFAULT_RESCORE_MULTIPLIER
        return top_k, check_int("rescore_multiplier", rescore_multiplier, 1)

    def search(
        self, queries: torch.Tensor | np.ndarray, top_k: int | None = None, *, rescore_multiplier: int | None = None
    ) -> Hits:
        """The `top_k` rows (default 10, or all of a smaller index) of largest inner product with each query [Q, dim]
        (or [dim]), best first, ties by position. Float precisions are exact; quantized ones rescore
        `rescore_multiplier x top_k` candidates (default 4; an error on an exact search)."""
        top_k, rescore_multiplier = self.check_search(top_k, rescore_multiplier)
        queries = torch.as_tensor(queries)
        single = queries.dim() == 1
        queries = self._checked(torch.atleast_2d(queries).to(self.device, torch.float32))
        if self.exact:
            scores, positions = self._scan(queries, top_k)
        else:
            _, candidates = self._scan(queries, min(top_k * rescore_multiplier, len(self)))
            scores, positions = self._rescore(queries, candidates, top_k)
        scores, positions = scores.cpu(), positions.cpu()
        ids = [[self.ids[p] for p in row] for row in positions.tolist()]
        return Hits(scores[0], positions[0], ids[0]) if single else Hits(scores, positions, ids)

    def _checked(self, queries: torch.Tensor) -> torch.Tensor:
        if queries.dim() != 2 or queries.shape[1] != self.dim:
            raise ValueError(
                f"queries of shape {list(queries.shape)} do not match the index's {self.dim} dimensions: embed them "
                f"with the model that embedded the corpus, at dim={self.dim}"
            )
        if not torch.isfinite(queries).all():
            raise ValueError("queries hold NaN or infinite values")
        return queries

    def _scan(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """First stage: (scores, positions) [Q, k] of the best rows at the search precision, block by block."""
        prepared = self._scorer.prepare(queries)
        best = None
        for start, block in self._first.blocks(self.block_rows):
            values, columns = _top(self._scorer.scores(prepared, block), min(k, len(block)))
            found = values, columns + start
            best = found if best is None else _best(*(torch.cat(x, 1) for x in zip(best, found)), k)
        return best

    def _rescore(self, queries: torch.Tensor, candidates: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, positions) [Q, k]: the candidates scored with the float queries against the stored vectors (int8
        and uint8 dequantized, binary unpacked to 0/1 as sentence-transformers does, float as they are)."""
        chunk = max(1, self.block_rows // candidates.shape[1])  # queries at a time: a block's worth of vectors
        scores = [torch.empty(0, candidates.shape[1], device=self.device)]  # so that no queries give [0, k]
        for i in range(0, len(queries), chunk):
            rows = candidates[i : i + chunk]
            stored = self.vectors.gather(rows.flatten())
            vectors = self.vectors.to_float(stored).to(self.device).view(*rows.shape, self.dim)
            scores.append(torch.einsum("qd,qcd->qc", queries[i : i + chunk], vectors))
        return _best(torch.cat(scores), candidates, k)

    def _copy_ranges(self, ranges: np.ndarray | None, calibration: torch.Tensor | np.ndarray | None) -> np.ndarray:
        """The int8/uint8 ranges of a quantized copy: those given, else those of the calibration vectors, else those
        of the stored vectors themselves."""
        if ranges is not None:
            return ranges
        if calibration is not None:
            return quantization_ranges(calibration)
        return self.vectors.value_ranges(self.block_rows)


def search_precision(stored: str, precision: str | None) -> str:
    """The precision a search of `stored` vectors runs at: theirs, or a coarser one asked for."""
    if precision is None:
        return stored
    check_precision(precision)
    if RANK[precision] > RANK[stored] or (precision != stored and RANK[precision] == RANK[stored]):
        coarser = [p for p in PRECISIONS if RANK[p] < RANK[stored]]
        raise ValueError(
            f"{stored} vectors cannot be searched at precision {precision!r}: choose {stored}"
            + (f" or a coarser one ({', '.join(coarser)})" if coarser else ", the coarsest there is")
        )
    return precision


def _top(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, columns) [Q, k] of each row's k largest scores, ties by the lower column."""
    if not scores.is_floating_point():  # integer scores tie often: rank by (score, -column) packed in one int64
        width = scores.shape[1]
        keys = scores.long() * width + torch.arange(width - 1, -1, -1, device=scores.device)
        keys = keys.topk(k, dim=1).values
        return keys.div(width, rounding_mode="floor"), (width - 1) - keys.remainder(width)
    values, columns = scores.topk(k, dim=1)
    if ((scores >= values[:, -1:]).sum(1) > k).any():  # a tie across the cut: topk may keep either side of it
        values, columns = scores.sort(dim=1, descending=True, stable=True)
        values, columns = values[:, :k], columns[:, :k]
    return values, columns


def _best(scores: torch.Tensor, positions: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best (score, position) pairs of each row: by score, then by the lower position."""
    positions, order = positions.sort(dim=1)
    scores, order = scores.gather(1, order).sort(dim=1, descending=True, stable=True)
    return scores[:, :k], positions.gather(1, order)[:, :k]
