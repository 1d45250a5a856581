"""Quantized vectors, bit for bit as sentence-transformers' `quantize_embeddings` makes them: int8 and uint8 (each
dimension's range cut into 256 steps) and binary and ubinary (the sign bits packed 8 per byte); and back to float."""

from __future__ import annotations

import numpy as np
import torch

PRECISIONS = ("float32", "float16", "int8", "uint8", "binary", "ubinary")
FLOATS = ("float32", "float16", "bfloat16", "float64")  # the last two: vectors a caller hands over, scored in float32


def quantization_ranges(calibration: torch.Tensor | np.ndarray) -> np.ndarray:
    """[2, dim]: the minimum and maximum of each dimension over calibration vectors [n, dim]."""
    calibration = _numpy(calibration)
    if calibration.ndim != 2 or len(calibration) < 2:
        raise ValueError(
            f"int8/uint8 ranges need at least 2 calibration vectors [n, dim], not an array of shape "
            f"{list(calibration.shape)}; use a representative sample of the corpus (a thousand vectors or more)"
        )
    bad = np.flatnonzero(~np.isfinite(calibration).all(axis=1))
    if len(bad):
        rows = ", ".join(map(str, bad[:5].tolist())) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ValueError(
            f"calibration vectors hold NaN or infinite values (rows {rows}): no range can be taken from them; embed "
            "the sample again (in bfloat16 or float32: float16 overflows on some inputs), or drop those rows"
        )
    return np.vstack((calibration.min(axis=0), calibration.max(axis=0)))


def quantize(
    vectors: torch.Tensor | np.ndarray,
    precision: str,
    *,
    ranges: np.ndarray | None = None,
    calibration: torch.Tensor | np.ndarray | None = None,
) -> np.ndarray:
    """Float vectors [n, dim] in `precision`, bit for bit as sentence-transformers' `quantize_embeddings`.

    int8 and uint8 cut each dimension's range into 256 steps: `ranges` [2, dim] (minimum, maximum), else those of
    `calibration` vectors, else those of `vectors` themselves. binary and ubinary keep the sign bits (x > 0), packed 8
    per byte [n, ceil(dim / 8)], first dimension in the highest bit; binary is the ubinary byte minus 128, as int8.
    """
    check_precision(precision)
    vectors = _numpy(vectors)
    if vectors.dtype.kind != "f":
        raise TypeError(f"quantize takes float vectors, not {vectors.dtype}: these look quantized already")
    if precision in FLOATS:
        return vectors.astype(precision)
    if precision in ("int8", "uint8"):
        ranges = quantization_ranges(vectors if calibration is None else calibration) if ranges is None else ranges
        starts, steps = code_grid(ranges, vectors.shape[-1])
        codes = np.clip(np.floor((vectors - starts) / steps), 0, 255)
        return codes.astype(np.uint8) if precision == "uint8" else (codes - 128).astype(np.int8)
    bits = np.packbits(vectors > 0, axis=-1)
    return bits if precision == "ubinary" else (bits - 128).astype(np.int8)


def code_grid(ranges: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts, steps) [dim] float32 of int8/uint8 ranges, as sentence-transformers computes them."""
    ranges = np.asarray(ranges).astype(np.float32, copy=False)
    if ranges.shape != (2, dim):
        raise ValueError(f"ranges must be [2, {dim}] (each dimension's minimum and maximum), not {list(ranges.shape)}")
    if not np.isfinite(ranges).all():
        raise ValueError("int8/uint8 ranges hold NaN or infinite values; take them from finite calibration vectors")
    starts = ranges[0, :]
    steps = (ranges[1, :] - starts) / 255
    return starts, np.where(steps == 0, 1, steps)


def dequantize(codes: torch.Tensor, precision: str, dim: int, ranges: np.ndarray | None = None) -> torch.Tensor:
    """Vectors stored in `precision` as float32 [n, dim]: float ones as they are, int8 and uint8 codes at the start of
    their step (with their `ranges`), binary and ubinary unpacked to 0/1 bits (as sentence-transformers rescores)."""
    if precision in FLOATS:
        return codes.float()
    if precision.endswith("binary"):
        return unpack_bits(codes, precision, signs=False)[:, :dim].float()
    starts, steps = (torch.from_numpy(x).to(codes.device) for x in code_grid(ranges, dim))
    return (codes.float() + (128 if precision == "int8" else 0)) * steps + starts


def unpack_bits(packed: torch.Tensor, precision: str, signs: bool) -> torch.Tensor:
    """binary or ubinary bits [n, bytes] -> [n, 8 * bytes] int8: +1/-1 when `signs`, else 1/0 (one table lookup per
    byte)."""
    table = _BYTE_BITS[precision, signs].to(packed.device)
    return table.index_select(0, packed.reshape(-1).view(torch.uint8).int()).view(torch.int8).view(len(packed), -1)


def _byte_bits(offset: int, signs: bool) -> torch.Tensor:
    """[256] int64: for each stored byte, its 8 bits (first dimension in the highest bit) as 8 int8 values."""
    packbits_byte = torch.arange(256, dtype=torch.uint8) ^ offset  # binary stores the packbits byte minus 128
    bits = ((packbits_byte.unsqueeze(-1) >> torch.arange(7, -1, -1, dtype=torch.uint8)) & 1).to(torch.int8)
    return (bits * 2 - 1 if signs else bits).contiguous().view(torch.int64).view(256)


_BYTE_BITS = {
    (precision, signs): _byte_bits(0x80 if precision == "binary" else 0, signs)
    for precision in ("binary", "ubinary")
    for signs in (True, False)
}


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of {', '.join(PRECISIONS)}")


def _numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return (x.float() if x.dtype == torch.bfloat16 else x).detach().cpu().numpy()
    return np.asarray(x)
