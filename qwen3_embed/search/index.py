"""Index: the top-k inner products of queries over vectors in memory or over a folder of shards (memory-mapped,
streamed in blocks of rows, each cut to its top k before the next), exact for float vectors, with rescoring for
quantized ones.

An Index holds its *stored* vectors (float, or quantized) and searches at a *precision* no higher than theirs. At the
stored precision the first stage streams the stored vectors themselves; at a lower one it runs over a quantized copy
held in memory (n x dim/8 bytes for binary). Float search is exact. Quantized search takes `rescore_multiplier x
top_k` candidates by an integer score, then scores them with the float query against the stored vectors (int8 and
uint8 dequantized, binary unpacked to 0/1 as sentence-transformers does, float as they are) and keeps the best
`top_k`. The integer score of binary is the number of equal bits less the number of unequal ones (minus twice the
Hamming distance, plus a constant). That of int8 and uint8 is the dot product of the stored codes with the query
weighted by each dimension's step and rounded to int8: the float query against the dequantized vectors, but for that
rounding. (sentence-transformers quantizes the query with the corpus's ranges instead, which centres each dimension
at the middle of its range and weights it by 1/step^2: on the vectors of benchmarks/search.py its first stage keeps
46% of the true top 10, this one 96%.) Results are ordered by score, ties by position. One search at a time per
Index (it reuses a conversion buffer).
"""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ..checks import check_int, resolve_device
from ..corpus.shards import SAFETENSORS_DTYPES, DamagedShard, read_manifest, verify_corpus
from .quantize import FLOATS, PRECISIONS, check_precision, code_grid, quantization_ranges, quantize

# Lower is coarser; a search runs at its stored vectors' rank or below.
RANK = {"binary": 0, "ubinary": 0, "int8": 1, "uint8": 1, "float16": 2, "bfloat16": 2, "float32": 3, "float64": 4}
DEFAULT_BLOCK_ROWS = 16384  # rows scored, then cut to the top k, at a time
PIECE_BYTES = 1 << 20  # x 4 for float32: the rows converted at a time on the CPU, to stay in the cache


class Hits(NamedTuple):
    """Search results, best first: [queries, k] (or [k] for one query given as a 1-D vector)."""

    scores: torch.Tensor  # float32
    positions: torch.Tensor  # int64: rows of the index
    ids: list  # the rows' ids


class Index:
    """Exact (or quantized, with rescoring) inner-product top-k over vectors, streamed in blocks of `block_rows`.

    vectors: [n, dim] float vectors (a tensor or array; used in place, never copied whole), or vectors already
    quantized by `quantize` (then `precision` says which, and int8/uint8 need their `ranges`). ids: one per row
    (default: the positions 0..n-1). precision: search at a lower precision than the vectors' own, over a copy
    quantized with `ranges`, else those of `calibration` vectors, else those of the vectors themselves, then rescore
    against the vectors. device: where scores are computed (default: the vectors' device); blocks held elsewhere are
    copied to it one at a time.
    """

    def __init__(
        self,
        vectors: torch.Tensor | np.ndarray,
        ids: Sequence | None = None,
        *,
        precision: str | None = None,
        ranges: np.ndarray | None = None,
        calibration: torch.Tensor | np.ndarray | None = None,
        device: str | torch.device | None = None,
        block_rows: int = DEFAULT_BLOCK_ROWS,
    ):
        vectors = vectors if isinstance(vectors, torch.Tensor) else torch.from_numpy(np.asarray(vectors))
        if vectors.dim() != 2:
            raise ValueError(f"vectors must be a matrix [n, dim], not of shape {list(vectors.shape)}")
        if vectors.is_floating_point():
            stored, dim = str(vectors.dtype).removeprefix("torch."), vectors.shape[1]
            if not all(torch.isfinite(vectors[s : s + block_rows]).all() for s in range(0, len(vectors), block_rows)):
                raise ValueError("vectors hold NaN or infinite values; embed them again (or drop those rows)")
        else:
            if precision not in ("int8", "uint8", "binary", "ubinary"):
                raise ValueError(
                    f"{vectors.dtype} vectors are quantized: say which way with precision='int8', 'uint8', 'binary' "
                    f"or 'ubinary', not {precision!r} (and give the ranges of int8 and uint8 vectors)"
                )
            stored, dim = precision, vectors.shape[1] * (8 if precision.endswith("binary") else 1)
            expected = torch.int8 if precision in ("int8", "binary") else torch.uint8
            if vectors.dtype != expected:
                raise ValueError(f"{precision} vectors are {expected}, not {vectors.dtype}")
        if ids is None:
            ids = range(len(vectors))
        elif len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors: give one id per row")
        self._setup([vectors], ids, stored, dim, precision, ranges, calibration, device, block_rows)
        self.texts = self.manifest = None

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
        block_rows: int = DEFAULT_BLOCK_ROWS,
    ) -> Index:
        """An index over a folder written by `qwen3-embed encode --output DIR`, its vectors memory-mapped. Every shard
        is checked against the manifest first (sizes, counts, dtypes and shapes; sha256 checksums unless
        `verify=False`). precision, ranges, calibration, device, block_rows: as for Index()."""
        folder = Path(folder)
        manifest = read_manifest(folder)
        problems = verify_corpus(folder, checksums=verify)
        if problems:
            listed = "\n  ".join(problems)
            raise DamagedShard(
                f"{folder} fails verification ({len(problems)} problem(s)):\n  {listed}\nrerun the encode command "
                "that wrote it: a rerun embeds the damaged shards again"
            )
        settings = manifest["settings"]
        records = [record for record in manifest["shards"] if record["rows"] > 0]
        parts = [torch.from_numpy(map_vectors(folder / record["files"]["vectors"]["name"])) for record in records]
        if settings.get("ranges") is not None:
            if ranges is not None:
                raise ValueError(
                    f"the {settings['vector_dtype']} shards of {folder} were quantized with the ranges in its "
                    "manifest; ranges= applies to an int8 search of float shards"
                )
            ranges = settings["ranges"]
        index = cls.__new__(cls)
        starts = np.cumsum([0] + [record["rows"] for record in records])
        ids = ShardColumn(folder, records, starts, "ids")
        index._setup(parts, ids, settings["vector_dtype"], manifest["dim"], precision, ranges, calibration, device,
                     block_rows)  # fmt: skip
        stored_texts = all("texts" in record["files"] for record in records)
        index.texts = ShardColumn(folder, records, starts, "texts") if stored_texts else None
        index.manifest = manifest
        return index

    def _setup(self, parts, ids, stored, dim, precision, ranges, calibration, device, block_rows) -> None:
        self.block_rows = check_int("block_rows", block_rows, 1)
        self.dim, self.ids, self.stored = dim, ids, stored
        if precision is not None:
            check_precision(precision)
        self.precision = stored if precision is None else precision
        if RANK[self.precision] > RANK[stored] or (self.precision != stored and RANK[self.precision] == RANK[stored]):
            coarser = [p for p in PRECISIONS if RANK[p] < RANK[stored]]
            raise ValueError(
                f"{stored} vectors cannot be searched at precision {self.precision!r}: choose {stored}"
                + (f" or a coarser one ({', '.join(coarser)})" if coarser else ", the coarsest there is")
            )
        default = parts[0].device if parts else torch.device("cpu")
        self.device = resolve_device(device) if device is not None else default
        self._parts = parts
        self._starts = np.cumsum([0] + [len(p) for p in parts])
        self.ranges = None
        if stored in ("int8", "uint8"):
            if ranges is None:
                raise ValueError(f"{stored} vectors need the ranges they were quantized with ([2, dim])")
            self.ranges = np.asarray(ranges, np.float32)
            code_grid(self.ranges, dim)
        if self.precision == stored:
            self._first = parts
        else:  # a coarser copy in memory, quantized block by block
            if self.precision in ("int8", "uint8") and ranges is None:
                ranges = self._ranges_of_stored() if calibration is None else quantization_ranges(calibration)
            if self.precision in ("int8", "uint8"):
                self.ranges = np.asarray(ranges, np.float32)
            copy, start = None, 0
            for block in self._blocks(parts):
                codes = quantize(self._float(block), self.precision, ranges=self.ranges)
                copy = np.empty((len(self), codes.shape[1]), codes.dtype) if copy is None else copy
                copy[start : start + len(codes)] = codes
                start += len(codes)
            self._first = [torch.from_numpy(copy) if copy is not None else torch.empty(0, dim)]
        self._buffer = None

    def __len__(self) -> int:
        return int(self._starts[-1])

    def search(self, queries: torch.Tensor | np.ndarray, top_k: int = 10, *, rescore_multiplier: int = 4) -> Hits:
        """The `top_k` rows of largest inner product with each query [Q, dim] (or [dim]), best first, ties by
        position. Float precisions are exact; quantized ones rescore `rescore_multiplier x top_k` candidates."""
        queries = torch.as_tensor(queries)
        single = queries.dim() == 1
        queries = torch.atleast_2d(queries).to(self.device, torch.float32)
        if len(self) == 0:
            raise ValueError("the index is empty: it holds no vectors (was its input empty, or every record skipped?)")
        if queries.dim() != 2 or queries.shape[1] != self.dim:
            raise ValueError(
                f"queries of shape {list(queries.shape)} do not match the index's {self.dim} dimensions: embed them "
                f"with the model that embedded the corpus, at dim={self.dim}"
            )
        if not torch.isfinite(queries).all():
            raise ValueError("queries hold NaN or infinite values")
        top_k = check_int("top_k", top_k, 1, len(self), f"the {len(self)} vectors of the index")
        if self.precision == self.stored and self.precision in FLOATS:
            scores, positions = self._scan(queries, top_k)
        else:
            rescore_multiplier = check_int("rescore_multiplier", rescore_multiplier, 1)
            _, candidates = self._scan(queries, min(top_k * rescore_multiplier, len(self)))
            scores, positions = self._rescore(queries, candidates, top_k)
        scores, positions = scores.cpu(), positions.cpu()
        ids = [[self.ids[p] for p in row] for row in positions.tolist()]
        return Hits(scores[0], positions[0], ids[0]) if single else Hits(scores, positions, ids)

    def _scan(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """First stage: (scores, positions) [Q, k] of the best rows at the search precision, block by block."""
        queries = self._prepare(queries)
        best = None
        start = 0
        for part in self._first:
            for s in range(0, len(part), self.block_rows):
                block = part[s : s + self.block_rows]
                values, columns = _top(self._block_scores(queries, block), min(k, len(block)))
                found = values, columns + start + s
                best = found if best is None else _best(*(torch.cat(x, 1) for x in zip(best, found)), k)
            start += len(part)
        return best

    def _prepare(self, queries: torch.Tensor) -> torch.Tensor:
        """The queries as the first stage scores them: float32, int8 codes (centred), or +-1 bits."""
        if self.precision in FLOATS:
            return queries
        if self.precision in ("int8", "uint8"):  # the query weighted by each dimension's step, rounded to int8
            weights = queries * torch.from_numpy(code_grid(self.ranges, self.dim)[1]).to(self.device)
            scale = 127 / weights.abs().amax(1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
            return torch.round(weights * scale).to(torch.int8)
        signs = torch.where(queries > 0, 1, -1).to(torch.int8)
        pad = -self.dim % 8  # packbits pads with zero bits, in queries and rows alike
        return torch.cat([signs, signs.new_full((len(queries), pad), -1)], 1)

    def _block_scores(self, queries: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
        """[Q, len(block)] first-stage scores: float32 dot products, or int32 dot products of codes (for binary,
        equal bits minus unequal bits). On the CPU, rows that must be converted first (float16 to float32, uint8 to
        centred int8, bits to +-1) are scored a cache-sized piece at a time, so that the converted rows are read back
        from the cache, not from memory."""
        piece = self._piece_rows(block)
        pieces = [self._piece_scores(queries, block[s : s + piece]) for s in range(0, len(block), piece)]
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, 1)

    def _piece_rows(self, block: torch.Tensor) -> int:
        as_is = block.dtype in (torch.float32, torch.int8) and self.precision not in ("binary", "ubinary")
        if self.device.type != "cpu" or (as_is and block.device == self.device):
            return self.block_rows
        return min(self.block_rows, max(1, PIECE_BYTES // self.dim))

    def _piece_scores(self, queries: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        if self.precision in FLOATS:
            if rows.dtype != torch.float32 or rows.device != self.device:
                rows = self._buffer_for(rows, torch.float32).copy_(rows)
            return queries @ rows.T
        if self.precision == "uint8":
            rows = self._buffer_for(rows, torch.int8).copy_(rows).bitwise_xor_(-128)  # centred, as int8 codes
        elif self.precision.endswith("binary"):
            rows = _unpack(rows.to(self.device), self.precision, signs=True)
        elif rows.device != self.device:
            rows = self._buffer_for(rows, torch.int8).copy_(rows)
        if self.device.type == "cpu":
            return torch._int_mm(queries, rows.T)
        return (queries.float() @ rows.float().T).to(torch.int32)  # exact below 2**24

    def _buffer_for(self, rows: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """A reused buffer on the device for a piece of a block, so that memory stays bounded."""
        shape = (self._piece_rows(rows), rows.shape[1])
        if self._buffer is None or self._buffer.dtype != dtype or self._buffer.shape != shape:
            self._buffer = torch.empty(shape, dtype=dtype, device=self.device)
        return self._buffer[: len(rows)]

    def _rescore(self, queries: torch.Tensor, candidates: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, positions) [Q, k]: the candidates scored with the float queries against the stored vectors."""
        chunk = max(1, self.block_rows // candidates.shape[1])  # queries at a time: a block's worth of vectors
        scores = []
        for i in range(0, len(queries), chunk):
            rows = candidates[i : i + chunk]
            vectors = self._float(self._gather(rows.flatten())).to(self.device).view(*rows.shape, self.dim)
            scores.append(torch.einsum("qd,qcd->qc", queries[i : i + chunk], vectors))
        return _best(torch.cat(scores), candidates, k)

    def _gather(self, positions: torch.Tensor) -> torch.Tensor:
        """The stored rows at `positions`, from whichever parts hold them."""
        positions = positions.cpu()
        part_of = torch.from_numpy(np.searchsorted(self._starts, positions.numpy(), side="right") - 1)
        out = torch.empty(len(positions), self._parts[0].shape[1], dtype=self._parts[0].dtype)
        for p in part_of.unique().tolist():
            mask = part_of == p
            out[mask] = self._parts[p][positions[mask] - int(self._starts[p])].cpu()
        return out

    def _float(self, vectors: torch.Tensor) -> torch.Tensor:
        """Stored vectors as float32 [n, dim]: int8/uint8 dequantized, binary unpacked to 0/1."""
        if self.stored in FLOATS:
            return vectors.float()
        if self.stored.endswith("binary"):
            return _unpack(vectors, self.stored, signs=False)[:, : self.dim].float()
        starts, steps = (torch.from_numpy(x).to(vectors.device) for x in code_grid(self.ranges, self.dim))
        return (vectors.float() + (128 if self.stored == "int8" else 0)) * steps + starts

    def _blocks(self, parts: list[torch.Tensor]):
        for part in parts:
            for s in range(0, len(part), self.block_rows):
                yield part[s : s + self.block_rows]

    def _ranges_of_stored(self) -> np.ndarray:
        """[2, dim] minimum and maximum over every stored vector, as quantize would take them from all of them."""
        low = high = None
        for block in self._blocks(self._parts):
            v = self._float(block)
            low = v.min(0).values if low is None else torch.minimum(low, v.min(0).values)
            high = v.max(0).values if high is None else torch.maximum(high, v.max(0).values)
        if low is None or len(self) < 2:
            raise ValueError("int8/uint8 ranges need at least 2 vectors: pass ranges= or calibration=")
        return torch.stack([low, high]).numpy()


def _unpack(packed: torch.Tensor, precision: str, signs: bool) -> torch.Tensor:
    """Packed bits [n, bytes] -> [n, 8 * bytes] int8: +1/-1 when `signs`, else 1/0 (one table lookup per byte)."""
    table = _BYTE_BITS[precision, signs].to(packed.device)
    return table.index_select(0, packed.reshape(-1).view(torch.uint8).int()).view(torch.int8).view(len(packed), -1)


def _byte_bits(offset: int, signs: bool) -> torch.Tensor:
    """[256] int64: for each stored byte, its 8 bits (first dimension in the highest bit) as 8 int8 values."""
    packbits_byte = torch.arange(256, dtype=torch.uint8) ^ offset  # binary stores the packbits byte minus 128
    bits = ((packbits_byte.unsqueeze(-1) >> torch.arange(7, -1, -1, dtype=torch.uint8)) & 1).to(torch.int8)
    return (bits * 2 - 1 if signs else bits).contiguous().view(torch.int64).view(256)


_BYTE_BITS = {(p, signs): _byte_bits(0x80 if p == "binary" else 0, signs) for p in ("binary", "ubinary")
              for signs in (True, False)}  # fmt: skip


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


def map_vectors(path: Path) -> np.ndarray:
    """The vectors of a shard file (.npy or .safetensors), memory-mapped copy-on-write: pages are read on use and the
    file is never written."""
    if path.suffix == ".npy":
        return np.load(path, mmap_mode="c")
    with open(path, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        entry = json.loads(f.read(length))["vectors"]
    dtype = np.dtype(SAFETENSORS_DTYPES[entry["dtype"]])
    begin, _ = entry["data_offsets"]
    return np.memmap(path, dtype=dtype, mode="c", offset=8 + length + begin, shape=tuple(entry["shape"]))


class ShardColumn(Sequence):
    """A per-row JSON list of a shard folder (ids, or texts kept by `encode --store-text`) as one sequence over the
    index's positions; each shard's file is read when a row of it is first asked for."""

    def __init__(self, folder: Path, records: list[dict], starts: np.ndarray, role: str):
        self.folder, self.records, self.starts, self.role = folder, records, starts.tolist(), role
        self.loaded: dict[int, list] = {}

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, position: int):
        if not 0 <= position < len(self):
            raise IndexError(f"position {position} is outside 0..{len(self) - 1}")
        shard = bisect.bisect_right(self.starts, position) - 1
        if shard not in self.loaded:
            record = self.records[shard]
            path = self.folder / record["files"][self.role]["name"]
            values = json.loads(path.read_bytes())
            if len(values) != record["rows"]:
                raise DamagedShard(
                    f"{path} holds {len(values)} {self.role}, not {record['rows']}: it changed after it was verified; "
                    f"check the folder with `qwen3-embed verify {self.folder}`"
                )
            self.loaded[shard] = values
        return self.loaded[shard][position - self.starts[shard]]
