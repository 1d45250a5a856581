"""The first stage of a search, one scorer per precision: each prepares the queries once, then scores blocks of rows
against them. Float scores are float32 dot products. The integer score of int8 and uint8 is the dot product of the
codes with the query weighted by each dimension's step and rounded to int8: the float query against the dequantized
vectors, but for that rounding. That of binary and ubinary is the number of equal bits less the number of unequal
ones (minus twice the Hamming distance, plus a constant).

On the CPU, rows that must be converted before they are scored (float16 to float32, uint8 to centred int8) are
converted and scored a cache-sized piece at a time, so that the converted rows are read back from the cache, not from
memory (and bits are compared a piece at a time, so that their XOR stays small); the converted rows go to a buffer
reused by each thread (its own, so that searches from many threads never share one), so memory stays bounded."""

from __future__ import annotations

import threading

import numpy as np
import torch

from ..store.quantize import FLOATS, code_grid, unpack_bits

PIECE_BYTES = 1 << 20  # x 4 for float32: the rows converted at a time on the CPU, to stay in the cache


class Scorer:
    """What the scorers share: a block scored a piece at a time, and the buffer converted rows go to."""

    def __init__(self, dim: int, device: torch.device, block_rows: int):
        self.dim, self.device, self.block_rows = dim, device, block_rows
        self._local = threading.local()  # each thread's conversion buffer

    def prepare(self, queries: torch.Tensor) -> torch.Tensor:
        """The float32 queries [Q, dim] as this scorer scores them."""
        raise NotImplementedError

    def converts(self, rows: torch.Tensor) -> bool:
        """Whether rows must be converted before they are scored."""
        raise NotImplementedError

    def piece_scores(self, queries: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """[Q, len(rows)] scores of prepared queries against rows."""
        raise NotImplementedError

    def scores(self, queries: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
        """[Q, len(block)] scores of prepared queries against a block of rows, a piece at a time."""
        piece = self._piece_rows(block)
        pieces = [self.piece_scores(queries, block[s : s + piece]) for s in range(0, len(block), piece)]
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, 1)

    def _piece_rows(self, rows: torch.Tensor) -> int:
        if self.device.type != "cpu" or not self.converts(rows):
            return self.block_rows
        return min(self.block_rows, max(1, PIECE_BYTES // self.dim))

    def _converted(self, rows: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """`rows` copied to `dtype` on the device, into this thread's reused buffer."""
        shape = (self._piece_rows(rows), rows.shape[1])
        buffer = getattr(self._local, "buffer", None)
        if buffer is None or buffer.dtype != dtype or buffer.shape != shape:
            buffer = self._local.buffer = torch.empty(shape, dtype=dtype, device=self.device)
        return buffer[: len(rows)].copy_(rows)


class FloatScorer(Scorer):
    """float32, float16 (and bfloat16, float64 vectors a caller hands over): float32 dot products."""

    def prepare(self, queries: torch.Tensor) -> torch.Tensor:
        return queries

    def converts(self, rows: torch.Tensor) -> bool:
        return rows.dtype != torch.float32 or rows.device != self.device

    def piece_scores(self, queries: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        if self.converts(rows):
            rows = self._converted(rows, torch.float32)
        return queries @ rows.T


class CodeScorer(Scorer):
    """int8 and uint8: the codes (uint8 ones centred, as int8) against the query weighted by each dimension's step
    and rounded to int8."""

    def __init__(self, dim: int, device: torch.device, block_rows: int, ranges: np.ndarray):
        super().__init__(dim, device, block_rows)
        self.steps = torch.from_numpy(code_grid(ranges, dim)[1]).to(device)

    def prepare(self, queries: torch.Tensor) -> torch.Tensor:
        weights = queries * self.steps
        scale = 127 / weights.abs().amax(1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
        return torch.round(weights * scale).to(torch.int8)

    def converts(self, rows: torch.Tensor) -> bool:
        return rows.dtype != torch.int8 or rows.device != self.device

    def piece_scores(self, queries: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        if self.converts(rows):
            centre = rows.dtype == torch.uint8
            rows = self._converted(rows, torch.int8)
            rows = rows.bitwise_xor_(-128) if centre else rows  # uint8 codes as int8 ones
        return int_scores(queries, rows)


class BitScorer(Scorer):
    """binary and ubinary: the query's signs against the rows' bits, equal bits less unequal ones. On the CPU, from
    the XOR of the packed bytes and a popcount (numpy's bitwise_count); elsewhere, the bits unpacked to +-1 and a
    product."""

    def __init__(self, dim: int, device: torch.device, block_rows: int, precision: str):
        super().__init__(dim, device, block_rows)
        self.precision = precision

    def prepare(self, queries: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cpu":  # packed as the rows are: binary stores each byte less 128
            packed = np.packbits(queries.numpy() > 0, axis=1)
            return torch.from_numpy(packed ^ 0x80 if self.precision == "binary" else packed)
        signs = torch.where(queries > 0, 1, -1).to(torch.int8)
        pad = -self.dim % 8  # packbits pads with zero bits, in queries and rows alike
        return torch.cat([signs, signs.new_full((len(queries), pad), -1)], 1)

    def converts(self, rows: torch.Tensor) -> bool:
        return True

    def piece_scores(self, queries: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        if self.device.type != "cpu":
            return int_scores(queries, unpack_bits(rows.to(self.device), self.precision, signs=True))
        words = np.uint64 if rows.shape[1] % 8 == 0 else np.uint8  # 8 bytes a popcount where they divide the row
        query_words, row_words = queries.numpy().view(words), rows.numpy().view(np.uint8).view(words)
        unequal = np.bitwise_count(query_words[:, None, :] ^ row_words[None]).sum(2, dtype=np.int32)  # [Q, n]
        return torch.from_numpy(8 * rows.shape[1] - 2 * unequal)  # pad bits are 0 in both: equal


def int_scores(queries: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """[Q, n] int32 dot products of int8 queries and rows: torch._int_mm on the CPU, float32 products elsewhere
    (exact below 2**24)."""
    if queries.device.type == "cpu":
        return torch._int_mm(queries, rows.T)
    return (queries.float() @ rows.float().T).to(torch.int32)


def scorer(precision: str, dim: int, device: torch.device, block_rows: int, ranges: np.ndarray | None) -> Scorer:
    """The scorer of a search at `precision` (int8 and uint8 with their `ranges`)."""
    if precision in FLOATS:
        return FloatScorer(dim, device, block_rows)
    if precision in ("int8", "uint8"):
        return CodeScorer(dim, device, block_rows, ranges)
    return BitScorer(dim, device, block_rows, precision)
