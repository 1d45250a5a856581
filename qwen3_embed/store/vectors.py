"""Vectors: the stored vectors a search reads, from a tensor or array in memory or from a folder of shards
(memory-mapped), with one id per row (and a folder's texts and manifest). Rows are read a block at a time or gathered
by position; nothing is copied whole."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from .files import map_vectors
from .quantize import code_grid, dequantize, quantize
from .shards import REDO, DamagedShard, ShardColumn, read_manifest, verify_corpus

BLOCK_ROWS = 16384  # rows read at a time by default
CODE_DTYPES = {"int8": torch.int8, "uint8": torch.uint8, "binary": torch.int8, "ubinary": torch.uint8}


class Vectors:
    """Stored vectors [n, dim] in `precision`: float, or quantized as quantize.py does (int8 and uint8 with the
    `ranges` [2, dim] they were quantized with), held in `parts` (one tensor, or one memory-mapped tensor per shard),
    with one id per row. `texts`, `manifest` and `folder`: those of a shard folder, else None."""

    def __init__(
        self,
        parts: list[torch.Tensor],
        ids: Sequence,
        precision: str,
        dim: int,
        ranges: np.ndarray | None = None,
        *,
        texts: Sequence | None = None,
        manifest: dict | None = None,
        folder: Path | None = None,
    ):
        self.parts, self.ids, self.precision, self.dim = parts, ids, precision, dim
        self.starts = np.cumsum([0] + [len(part) for part in parts])
        self.ranges = None
        if precision in ("int8", "uint8"):
            if ranges is None:
                raise ValueError(f"{precision} vectors need the ranges they were quantized with ([2, dim])")
            self.ranges = np.asarray(ranges, np.float32)
            code_grid(self.ranges, dim)
        self.texts, self.manifest, self.folder = texts, manifest, folder

    @classmethod
    def from_array(
        cls,
        vectors: torch.Tensor | np.ndarray,
        ids: Sequence | None = None,
        precision: str | None = None,
        ranges: np.ndarray | None = None,
    ) -> Vectors:
        """Vectors [n, dim] of a tensor or array, used in place: float ones (NaN and infinities are refused; precision
        and ranges do not apply to them), or codes quantized as `precision` says (int8 and uint8 with their `ranges`).
        ids: one per row (default: the positions 0..n-1)."""
        vectors = vectors if isinstance(vectors, torch.Tensor) else torch.from_numpy(np.asarray(vectors))
        if vectors.dim() != 2:
            raise ValueError(f"vectors must be a matrix [n, dim], not of shape {list(vectors.shape)}")
        ids = range(len(vectors)) if ids is None else ids
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors: give one id per row")
        if vectors.is_floating_point():
            if not all(torch.isfinite(block).all() for block in vectors.split(BLOCK_ROWS)):
                raise ValueError("vectors hold NaN or infinite values; embed them again (or drop those rows)")
            return cls([vectors], ids, str(vectors.dtype).removeprefix("torch."), vectors.shape[1])
        if precision not in CODE_DTYPES:
            raise ValueError(
                f"{vectors.dtype} vectors are quantized: say which way with precision='int8', 'uint8', 'binary' or "
                f"'ubinary', not {precision!r} (and give the ranges of int8 and uint8 vectors)"
            )
        if vectors.dtype != CODE_DTYPES[precision]:
            raise ValueError(f"{precision} vectors are {CODE_DTYPES[precision]}, not {vectors.dtype}")
        dim = vectors.shape[1] * (8 if precision.endswith("binary") else 1)
        return cls([vectors], ids, precision, dim, ranges)

    @classmethod
    def open(cls, folder: str | os.PathLike, verify: bool = True) -> Vectors:
        """The vectors of a folder written by `qwen3-embed encode --output DIR`, memory-mapped, with its ids (and its
        texts, when it keeps them), once every shard is checked against the manifest (sizes, counts, dtypes and
        shapes; sha256 checksums unless `verify=False`)."""
        folder = Path(folder)
        manifest = read_manifest(folder)
        problems = verify_corpus(folder, checksums=verify)
        if problems:
            listed = "\n  ".join(problems)
            raise DamagedShard(f"{folder} fails verification ({len(problems)} problem(s)):\n  {listed}\n{REDO}")
        records = [record for record in manifest["shards"] if record["rows"] > 0]
        parts = [torch.from_numpy(map_vectors(folder / record["files"]["vectors"]["name"])) for record in records]
        starts = np.cumsum([0] + [record["rows"] for record in records])
        keeps_texts = all("texts" in record["files"] for record in records)
        texts = ShardColumn(folder, records, starts, "texts") if keeps_texts else None
        ids, settings = ShardColumn(folder, records, starts, "ids"), manifest["settings"]
        precision, ranges = settings["vector_dtype"], settings.get("ranges")
        return cls(parts, ids, precision, manifest["dim"], ranges, texts=texts, manifest=manifest, folder=folder)

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def device(self) -> torch.device:
        return self.parts[0].device if self.parts else torch.device("cpu")

    def blocks(self, rows: int) -> Iterator[tuple[int, torch.Tensor]]:
        """(position of its first row, block) for blocks of at most `rows` rows, in order; a block never spans two
        parts."""
        for start, part in zip(self.starts.tolist(), self.parts):
            for s in range(0, len(part), rows):
                yield start + s, part[s : s + rows]

    def gather(self, positions: torch.Tensor) -> torch.Tensor:
        """The stored rows at `positions` [n], on the CPU, from whichever parts hold them."""
        positions = positions.cpu()
        part_of = torch.from_numpy(np.searchsorted(self.starts, positions.numpy(), side="right") - 1)
        out = torch.empty(len(positions), self.parts[0].shape[1], dtype=self.parts[0].dtype)
        for p in part_of.unique().tolist():
            mask = part_of == p
            out[mask] = self.parts[p][positions[mask] - int(self.starts[p])].cpu()
        return out

    def to_float(self, rows: torch.Tensor) -> torch.Tensor:
        """Stored rows as float32 [n, dim]: int8/uint8 dequantized, binary unpacked to 0/1."""
        return dequantize(rows, self.precision, self.dim, self.ranges)

    def value_ranges(self, rows: int = BLOCK_ROWS) -> np.ndarray:
        """[2, dim] the minimum and maximum of each dimension over every vector (as float), read `rows` at a time: the
        int8/uint8 ranges quantize would take from all of them."""
        low = high = None
        for _, block in self.blocks(rows):
            v = self.to_float(block)
            low = v.min(0).values if low is None else torch.minimum(low, v.min(0).values)
            high = v.max(0).values if high is None else torch.maximum(high, v.max(0).values)
        if low is None or len(self) < 2:
            raise ValueError("int8/uint8 ranges need at least 2 vectors: pass ranges= or calibration=")
        return torch.stack([low, high]).cpu().numpy()

    def quantized(self, precision: str, ranges: np.ndarray | None, rows: int = BLOCK_ROWS) -> Vectors:
        """A copy in `precision` (int8 and uint8 with `ranges`) held in memory on the CPU, quantized from these vectors
        as float `rows` at a time, with the same ids."""
        copy = None
        for start, block in self.blocks(rows):
            codes = quantize(self.to_float(block), precision, ranges=ranges)
            copy = np.empty((len(self), codes.shape[1]), codes.dtype) if copy is None else copy
            copy[start : start + len(codes)] = codes
        parts = [] if copy is None else [torch.from_numpy(copy)]
        return Vectors(parts, self.ids, precision, self.dim, ranges)
