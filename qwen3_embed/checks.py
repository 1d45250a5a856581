"""Checks of arguments shared across the package: integers in range, booleans, strings, devices, a model's dim
and max_length, and a packed batch's offsets. The ground floor: it imports nothing of the package, so the kernels, the
ops and every command can use it."""

from __future__ import annotations

import numpy as np
import torch


def check_int(name: str, value: object, low: int, high: int | None = None, high_is: str = "") -> int:
    """An integer option's value (an int or a numpy integer), checked to lie in low..high."""
    bounds = f"{low}..{high}" if high is not None else f"at least {low}"
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}={value!r} must be an integer ({bounds})")
    if high is None and value < low:
        raise ValueError(f"{name}={value} must be at least {low}")
    if high is not None and not low <= value <= high:
        raise ValueError(f"{name}={value} is outside {bounds}" + (f", {high_is}" if high_is else ""))
    return int(value)


def check_bools(**options: object) -> None:
    """Each boolean option, by name, is True or False (a numpy bool too), never another value read as one ("no")."""
    for name, value in options.items():
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{name}={value!r} must be True or False")


def check_str(name: str, value: object) -> str:
    """A text option's value: a str of valid Unicode. A lone surrogate (how Python reads bytes that are not UTF-8, on
    a command line for one) is named with its place in this value."""
    if not isinstance(value, str):
        raise TypeError(f"{name} is {type(value).__name__}, not str")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"{name} is not valid Unicode: it holds the lone surrogate U+{ord(value[e.start]):04X} at character "
            f"{e.start} (bytes that are not UTF-8?)"
        ) from None
    return value


class UsageError(ValueError):
    """A wrong use whose fix is said one way to a Python caller (its message) and another on the command line
    (`command_line`, naming flags and commands)."""

    def __init__(self, message: str, command_line: str):
        super().__init__(message)
        self.command_line = command_line


DEFAULT_MAX_LENGTH = 8192  # tokens per text (EOS or prompt included), at most the model's positions


def check_dim(dim: object, hidden_size: int, name: str = "dim") -> int:
    """The output dimensions (Matryoshka): an integer in 1..hidden_size, default hidden_size."""
    return hidden_size if dim is None else check_int(name, dim, 1, hidden_size, "the model's hidden size")


def check_max_length(max_length: object, positions: int, name: str = "max_length") -> int:
    """Tokens per sequence: an integer in 2..positions, default DEFAULT_MAX_LENGTH (or positions, if fewer)."""
    if max_length is None:
        return min(DEFAULT_MAX_LENGTH, positions)
    return check_int(name, max_length, 2, positions, "the model's maximum sequence length")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device to run on: the one asked for, checked to exist here, else CUDA when available, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not a device name; use 'cpu', 'cuda' or 'cuda:N'") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise ValueError(
                f"device {str(device)!r} was asked for, but torch sees no CUDA GPU here (torch {torch.__version__} is "
                f"{build}); use device 'cpu', or install a CUDA build of torch on a machine with a GPU"
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r} does not exist: torch sees {torch.cuda.device_count()} GPU(s)")
    elif resolved.type != "cpu":
        raise ValueError(f"device {str(device)!r} is not supported; use 'cpu' or 'cuda'")
    return resolved


def check_cu_seqlens(cu_seqlens: torch.Tensor, total: int, device: torch.device, values: bool = True) -> None:
    """cu_seqlens must be int32 [B+1] on `device`; with `values` (a device sync), start at 0, never decrease and
    end at `total`."""
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
        raise ValueError("cu_seqlens must be a 1-D tensor of B+1 offsets")
    if cu_seqlens.dtype != torch.int32:
        raise ValueError(f"cu_seqlens has dtype {cu_seqlens.dtype}; it must be torch.int32")
    if cu_seqlens.device != device:
        raise ValueError(f"cu_seqlens is on {cu_seqlens.device}, the tokens on {device}; move it there")
    if values:
        check_offsets(cu_seqlens.tolist(), total, len(cu_seqlens))


def check_offsets(offsets: list[int], total: int, count: int) -> None:
    """Host offsets of `count` entries that start at 0, never decrease and end at `total`."""
    if len(offsets) != count:
        raise ValueError(f"{len(offsets)} host offsets for a cu_seqlens of {count}")
    if offsets[0] != 0 or offsets[-1] != total:
        raise ValueError(
            f"cu_seqlens runs from {offsets[0]} to {offsets[-1]}; it must run from 0 to {total}, the tokens"
        )
    for i, (a, b) in enumerate(zip(offsets, offsets[1:])):
        if b < a:
            raise ValueError(f"cu_seqlens decreases at index {i + 1} ({a} -> {b}); offsets must not decrease")
