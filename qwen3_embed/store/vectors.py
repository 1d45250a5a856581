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
    with one id per row. `texts`, `manifest` and `folder`: those of a shard folder, else None; `files`: the (path,
    bytes) of each part's memory-mapped file, checked before each block of it is read (a file cut short under its map
    kills the process with SIGBUS when read). Float rows are checked to be finite when first read."""

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
        files: list[tuple[Path, int]] | None = None,
    ):
        self.parts, self.ids, self.precision, self.dim = parts, ids, precision, dim
        self.starts = np.cumsum([0] + [len(part) for part in parts])
        self.ranges = None
        if precision in ("int8", "uint8"):
            if ranges is None:
                raise ValueError(f"{precision} vectors need the ranges they were quantized with ([2, dim])")
            self.ranges = np.asarray(ranges, np.float32)
            code_grid(self.ranges, dim)
        self.texts, self.manifest, self.folder, self.files = texts, manifest, folder, files
        self._finite = [0 if part.is_floating_point() else len(part) for part in parts]  # rows checked, from the start

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
            floats = cls([vectors], ids, str(vectors.dtype).removeprefix("torch."), vectors.shape[1])
            for _ in floats.blocks(BLOCK_ROWS):  # every row checked now, not at the first search
                pass
            return floats
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
        files = [(folder / entry["name"], entry["bytes"]) for entry in (r["files"]["vectors"] for r in records)]
        parts = [torch.from_numpy(map_vectors(path)) for path, _ in files]
        starts = np.cumsum([0] + [record["rows"] for record in records])
        keeps_texts = all("texts" in record["files"] for record in records)
        texts = ShardColumn(folder, records, starts, "texts") if keeps_texts else None
        ids, settings = ShardColumn(folder, records, starts, "ids"), manifest["settings"]
        precision, ranges = settings["vector_dtype"], settings.get("ranges")
        return cls(
            parts, ids, precision, manifest["dim"], ranges, texts=texts, manifest=manifest, folder=folder, files=files
        )

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def device(self) -> torch.device:
        return self.parts[0].device if self.parts else torch.device("cpu")

    def blocks(self, rows: int) -> Iterator[tuple[int, torch.Tensor]]:
        """(position of its first row, block) for blocks of at most `rows` rows, in order; a block never spans two
        parts. Each block's file is checked first, and its rows the first time they are read."""
        for p, (start, part) in enumerate(zip(self.starts.tolist(), self.parts)):
            for s in range(0, len(part), rows):
                yield start + s, self._checked(p, s, part[s : s + rows])

    def _checked(self, p: int, first: int, rows: torch.Tensor) -> torch.Tensor:
        """`rows`, part `p`'s from row `first`, once its file is checked whole and, the first time, the rows finite
        (threads that check one block at once check it twice, harmlessly)."""
        self._check_file(p)
        checked = self._finite[p]
        bad = non_finite(rows[checked - first :]) if first <= checked < first + len(rows) else None
        if bad is not None:
            row = checked + bad
            if self.files is None:
                raise ValueError(f"row {int(self.starts[p]) + row} of the vectors holds NaN or infinite values: embed "
                                 "it again, or drop it")  # fmt: skip
            raise DamagedShard(
                f"{self.files[p][0].name} of {self.folder} holds NaN or infinite values in row {row} (row "
                f"{int(self.starts[p]) + row} of the index), which `qwen3-embed encode` never writes: something else "
                "wrote or changed it; encode the corpus again"
            )
        self._finite[p] = max(self._finite[p], first + len(rows))
        return rows

    def _check_file(self, p: int) -> None:
        """Part `p`'s memory-mapped file still has its size: a file cut short under its map would kill the process
        (SIGBUS) when a row past its new end is read."""
        if self.files is None:
            return
        path, size = self.files[p]
        found = path.stat().st_size if path.exists() else None
        if found != size:
            what = "is gone" if found is None else f"has {found} bytes, its record says {size}"
            raise DamagedShard(
                f"{path.name} of {self.folder} {what}: it changed after the index was opened; check the folder with "
                f"`qwen3-embed verify {self.folder}`, and open the index again"
            )

    def gather(self, positions: torch.Tensor) -> torch.Tensor:
        """The stored rows at `positions` [n], on the CPU, from whichever parts hold them."""
        positions = positions.cpu()
        part_of = torch.from_numpy(np.searchsorted(self.starts, positions.numpy(), side="right") - 1)
        out = torch.empty(len(positions), self.parts[0].shape[1], dtype=self.parts[0].dtype)
        for p in part_of.unique().tolist():
            self._check_file(p)
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


def non_finite(rows: torch.Tensor) -> int | None:
    """The first row holding NaN or an infinity, else None. Their float32 sum is non-finite when one is (or when it
    overflows): only then are the rows looked at one by one, which is 4-6x slower."""
    if torch.isfinite(rows.sum(dtype=torch.float32)):
        return None
    bad = (~torch.isfinite(rows)).any(1).nonzero()
    return int(bad[0, 0]) if len(bad) else None
