"""The files of a shard folder: written so that a crash cannot leave one half written, and vector arrays in them as
.npy or .safetensors (read whole, by header alone, or memory-mapped)."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import os
import secrets
import shutil
import socket
import time
from pathlib import Path
from typing import BinaryIO

import numpy as np

# safetensors' dtype codes by numpy's names, for the headers of vectors files (quantized ones included)
SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "I8": "int8", "U8": "uint8"}
LOCK = ".lock"  # in an output folder: flocked by the run that writes it


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def seal(obj: dict) -> dict:
    """`obj` with a "checksum" of the rest of its content, so that an edit which does not also recompute it is found
    (`sealed`)."""
    rest = {k: v for k, v in obj.items() if k != "checksum"}
    return {**rest, "checksum": _content_sha256(rest)}


def sealed(obj) -> bool:
    """Whether `obj` is a dict whose "checksum" is that of the rest of its content."""
    if not isinstance(obj, dict):
        return False
    try:
        return obj.get("checksum") == _content_sha256({k: v for k, v in obj.items() if k != "checksum"})
    except (TypeError, ValueError):  # content JSON cannot hold (NaN, say): never sealed
        return False


def _content_sha256(obj: dict) -> str:
    """The sha256 of `obj` as canonical JSON (sorted keys, no spaces), the same after a round trip through a file."""
    return sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode())


def read_json(path: Path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def atomic_write(path: Path, data: bytes) -> None:
    """Write `path` so that it is either absent or complete, even after a crash or a power cut: a temporary file in
    the same folder, fsynced, renamed over `path`, then the folder fsynced. A failed write leaves no temporary."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_error(path, e) from None
    fsync_folder(path.parent)


def make_writable_folder(folder: Path, output: Path) -> None:
    """Create `folder` (with its parents) and check that a file can be written in it, before any work: else an
    OSError naming `output`, the reason and the fix."""
    probe = folder / f".write-check.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.touch()
        probe.unlink()
    except OSError as e:
        why = "a file is in the way" if isinstance(e, (FileExistsError, NotADirectoryError)) else e.strerror or e
        raise OSError(f"cannot write --output {output} ({folder}: {why}); choose another place") from None


class FolderInUse(ValueError):
    """An output folder another run holds."""


def lock_folder(folder: Path) -> BinaryIO:
    """Hold `folder` for this run: an exclusive flock on its LOCK file (which says which process holds it), kept until
    the returned file is closed or this process ends. A folder another run holds is a FolderInUse naming that
    process."""
    f = open(folder / LOCK, "a+b")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(f)
        f.close()
        raise FolderInUse(
            f"another encode run holds the output folder {folder} ({holder}); wait for it to end, or give another "
            "--output (two runs writing one folder would undo each other's work)"
        ) from None
    f.truncate(0)
    f.write(f"process {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
    f.flush()
    return f


def holder_of(folder: Path) -> str | None:
    """Which process holds `folder` (lock_folder), or None when no run does. (It takes a shared hold for an instant: a
    run starting in that instant is refused as if the folder were held.)"""
    try:
        f = open(folder / LOCK, "rb")
    except OSError:
        return None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder(f)
    return None


def _holder(f: BinaryIO) -> str:
    f.seek(0)
    return f.read().decode("utf-8", "replace").strip() or "a process that has not yet said which"


def fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_error(path: Path, error: OSError) -> OSError:
    """The error of a failed write, saying what to do (its errno kept)."""
    why = error.strerror or str(error)
    if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        free = shutil.disk_usage(path.parent).free / 2**30
        why = f"the disk is full, or a quota or file-size limit was reached ({why}; {free:.2f} GiB free on its disk)"
        why += "; make room and rerun the same command to resume"
    failed = OSError(f"could not write {path}: {why}")
    failed.errno = error.errno
    return failed


def serialize_vectors(vectors: np.ndarray, fmt: str) -> bytes:
    """The bytes of a vectors file: a .npy array, or a .safetensors file holding one tensor named "vectors"."""
    if fmt == "npy":
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, np.ascontiguousarray(vectors), allow_pickle=False)
        return buffer.getvalue()
    from safetensors.numpy import save

    return save({"vectors": np.ascontiguousarray(vectors)})


def parse_vectors(data: bytes, fmt: str) -> np.ndarray:
    if fmt == "npy":
        return np.load(io.BytesIO(data), allow_pickle=False)
    from safetensors.numpy import load

    return load(data)["vectors"]


def vectors_header(path: Path, fmt: str) -> tuple[str, list[int]]:
    """(dtype, shape) of a vectors file, from its header alone."""
    with open(path, "rb") as f:
        if fmt == "npy":
            read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            shape, _, dtype = read_header[np.lib.format.read_magic(f)](f)
            return np.dtype(dtype).name, list(shape)
        entry = _safetensors_entry(f)
    return SAFETENSORS_DTYPES.get(entry["dtype"], entry["dtype"]), entry["shape"]


def map_vectors(path: Path) -> np.ndarray:
    """The vectors of a shard file (.npy or .safetensors), memory-mapped copy-on-write: pages are read on use and the
    file is never written."""
    if path.suffix == ".npy":
        return np.load(path, mmap_mode="c")
    with open(path, "rb") as f:
        entry = _safetensors_entry(f)
        data_start = f.tell()
    dtype = np.dtype(SAFETENSORS_DTYPES[entry["dtype"]])
    begin, _ = entry["data_offsets"]
    return np.memmap(path, dtype=dtype, mode="c", offset=data_start + begin, shape=tuple(entry["shape"]))


def _safetensors_entry(f) -> dict:
    """The header entry of the tensor "vectors" of an open .safetensors file, read up to the start of its data."""
    length = int.from_bytes(f.read(8), "little")
    return json.loads(f.read(length))["vectors"]
