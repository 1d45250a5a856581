"""The output format every engine writes and `load_corpus`, `verify` and search read.

A folder of shards. Shard k is three files: `shard-0000k.npy` (or `.safetensors`) with its vectors (float32,
float16, or quantized as qwen3_embed.search.quantize does: the settings say which, and hold the int8 and uint8
ranges), `shard-0000k.ids.json` with the ids of its rows (and `shard-0000k.texts.json` with their texts, when asked
to keep them), and `shard-0000k.json`, its record, written last: the input file and record range it covers, its row
count, and the size and sha256 of each of its files, with the dtype and shape of each array. Every file is written
under a temporary name, fsynced, renamed, and the folder fsynced, so a shard whose record exists is complete on
disk. `manifest.json`, written once every shard is, holds the settings, the inputs and every shard's record in input
order. A reader trusts nothing it has not checked against the record: sizes and counts always, checksums unless told
otherwise.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..search.quantize import PRECISIONS, quantize

FORMAT = "qwen3-embed-shards/1"
VECTOR_FORMATS = ("npy", "safetensors")
VECTOR_DTYPES = PRECISIONS  # float32, float16, and quantized: int8, uint8, binary, ubinary (see search.quantize)
MANIFEST = "manifest.json"
# safetensors' dtype codes by numpy's names, for the headers of vectors files (quantized ones included)
SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "I8": "int8", "U8": "uint8"}
REDO = "rerun the encode command that wrote it: a rerun embeds the damaged shards again"


class DamagedShard(ValueError):
    """A shard whose files do not match its record."""


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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
        length = int.from_bytes(f.read(8), "little")
        entry = json.loads(f.read(length))["vectors"]
    return SAFETENSORS_DTYPES.get(entry["dtype"], entry["dtype"]), entry["shape"]


def file_entry(name: str, data: bytes, **array) -> dict:
    """A file's line in a shard record: its name, size and sha256 (and dtype and shape, for an array)."""
    return {"name": name, "bytes": len(data), "sha256": sha256(data), **array}


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


def read_json(path: Path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def remove_orphans(folder: Path) -> int:
    """Delete the temporary files a killed run left behind; returns how many there were."""
    orphans = list(folder.glob(".shard-*.tmp")) + list(folder.glob(f".{MANIFEST}.*.tmp"))
    for path in orphans:
        path.unlink(missing_ok=True)
    return len(orphans)


def shard_records(folder: Path) -> dict[int, dict | None]:
    """The records in a folder by shard index (None for a record that cannot be read)."""
    records = {}
    for path in folder.glob("shard-*.json"):
        stem = path.name.removesuffix(".json")
        if not stem.removeprefix("shard-").isdigit():
            continue  # an ids file
        try:
            records[int(stem.removeprefix("shard-"))] = read_json(path)
        except (OSError, ValueError):
            records[int(stem.removeprefix("shard-"))] = None
    return records


def write_shard(
    folder: Path,
    index: int,
    vectors: np.ndarray,
    ids: list,
    vector_format: str,
    texts: list[str] | None = None,
    **fields,
) -> dict:
    """Write shard `index`: its vectors, its ids (and its texts, when given), then its record (with `fields`), which
    marks it complete."""
    if len(ids) != len(vectors) or (texts is not None and len(texts) != len(ids)):
        raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors and {len(texts or ids)} texts")
    name = shard_name(index)
    files = {}
    for role, file, data, array in (
        ("vectors", f"{name}.{vector_format}", serialize_vectors(vectors, vector_format),
         {"dtype": vectors.dtype.name, "shape": list(vectors.shape)}),
        ("ids", f"{name}.ids.json", json.dumps(ids).encode(), {}),
        *([("texts", f"{name}.texts.json", json.dumps(texts, ensure_ascii=False).encode(), {})] if texts is not None
          else []),
    ):  # fmt: skip
        atomic_write(folder / file, data)
        files[role] = file_entry(file, data, **array)
    record = {"format": FORMAT, "index": index, **fields, "rows": len(ids), "files": files}
    atomic_write(folder / f"{name}.json", json.dumps(record, indent=1).encode())
    return record


def _vector_format(entry: dict) -> str:
    return entry["name"].rsplit(".", 1)[-1]


def check_shard(folder: Path, record: dict, checksums: bool = True) -> str | None:
    """What is wrong with a shard's files against its record (None when nothing is): sizes, the ids' count and the
    vectors' dtype and shape always; the sha256 of every file when `checksums` (of the ids, which are read anyway,
    always)."""
    try:
        files, data = record["files"], {}
        for role, entry in files.items():
            path = folder / entry["name"]
            if not path.is_file():
                return f"{entry['name']} is missing"
            if path.stat().st_size != entry["bytes"]:
                return f"{entry['name']} has {path.stat().st_size} bytes, its record says {entry['bytes']}"
            if checksums or role == "ids":
                data[role] = path.read_bytes()
                if sha256(data[role]) != entry["sha256"]:
                    return f"{entry['name']} does not match its sha256 checksum"
        ids = json.loads(data["ids"])
        dtype, shape = vectors_header(folder / files["vectors"]["name"], _vector_format(files["vectors"]))
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"cannot be read ({type(e).__name__}: {e})"
    vectors = files["vectors"]
    if not isinstance(ids, list) or len(ids) != record["rows"]:
        return f"{files['ids']['name']} does not hold a list of {record['rows']} ids, as its record says"
    if [dtype, shape] != [vectors["dtype"], vectors["shape"]] or shape[:1] != [record["rows"]]:
        return (
            f"{vectors['name']} holds {dtype} {shape}, its record says {vectors['dtype']} {vectors['shape']} "
            f"for {record['rows']} rows"
        )
    return None


def read_shard(folder: Path, record: dict, verify: bool = True) -> tuple[np.ndarray, list]:
    """(vectors [rows, dim], ids) of one shard, each file checked against its record (its sha256 when `verify`);
    a mismatch is a DamagedShard naming the file."""
    name = shard_name(record["index"])
    out = []
    parsers = {
        "vectors": lambda data, entry: parse_vectors(data, _vector_format(entry)),
        "ids": lambda data, _: json.loads(data),
    }
    for role, parse in parsers.items():
        entry = record["files"][role]
        try:
            data = (folder / entry["name"]).read_bytes()
        except OSError as e:
            raise DamagedShard(f"{name} of {folder}: {entry['name']} cannot be read ({e.strerror}); {REDO}") from None
        if len(data) != entry["bytes"] or (verify and sha256(data) != entry["sha256"]):
            what = f"has {len(data)} bytes, not {entry['bytes']}" if len(data) != entry["bytes"] else "fails its sha256"
            raise DamagedShard(f"{name} of {folder}: {entry['name']} {what}; {REDO}")
        out.append(parse(data, entry))
    vectors, ids = out
    expected = record["files"]["vectors"]
    if [vectors.dtype.name, list(vectors.shape)] != [expected["dtype"], expected["shape"]] or len(ids) != len(vectors):
        raise DamagedShard(
            f"{name} of {folder}: {vectors.dtype.name} {list(vectors.shape)} and {len(ids)} ids where its record says "
            f"{expected['dtype']} {expected['shape']}; {REDO}"
        )
    return vectors, ids


def read_manifest(folder: str | os.PathLike) -> dict:
    """The manifest of a finished output folder, checked to be one this version reads."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        what = "does not exist" if not folder.exists() else "has no manifest.json"
        raise FileNotFoundError(
            f"{folder} {what}: it is not a finished encode output (an interrupted run has shards but no manifest "
            "until it completes; rerun the same encode command to finish it)"
        )
    try:
        manifest = read_json(path)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); {REDO}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise ValueError(
            f"{path} is in format {found!r}, not {FORMAT!r}: written by another version of qwen3-embed; encode the "
            "corpus again with this one"
        )
    return manifest


def load_corpus(folder: str | os.PathLike, verify: bool = True) -> tuple[np.ndarray, list]:
    """All vectors [rows, dim] and ids of a finished output folder, in input order. Every shard is checked against
    the manifest (sizes, counts, dtypes and shapes; sha256 checksums unless `verify=False`); a damaged one is an
    error naming it."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    vectors, ids = [], []
    for record in manifest["shards"]:
        v, i = read_shard(folder, record, verify)
        vectors.append(v)
        ids += i
    if not vectors:
        settings = manifest["settings"]
        empty = np.empty((0, manifest["dim"]), np.float32)
        return quantize(empty, settings["vector_dtype"], ranges=settings.get("ranges")), ids
    return np.concatenate(vectors), ids


def verify_corpus(
    folder: str | os.PathLike, checksums: bool = True, progress: Callable[[int], None] | None = None
) -> list[str]:
    """The problems of a finished output folder, one line per damaged or missing shard (empty when it is sound):
    every shard checked against the manifest, and its record file (what a resumed run trusts) against the manifest's
    record, without a model."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    problems = []
    rows = 0
    records = shard_records(folder)
    packed = manifest["settings"].get("vector_dtype") in ("binary", "ubinary")  # 8 dimensions per byte
    width = -(-manifest["dim"] // 8) if packed else manifest["dim"]
    for record in manifest["shards"]:
        problem = check_shard(folder, record, checksums)
        shape = record["files"]["vectors"].get("shape")
        if problem is None and shape and shape[-1] != width:
            needs = f"the manifest's dim {manifest['dim']} needs {width}"
            problem = f"its vectors have {shape[-1]} values a row where {needs}"
        stored = records.get(record["index"])
        if problem is None and (stored is None or any(stored.get(k) != v for k, v in record.items())):
            how = "is missing" if record["index"] not in records else "cannot be read" if stored is None else "differs"
            problem = f"{shard_name(record['index'])}.json, its record, {how} (the manifest's is sound)"
        if problem is not None:
            problems.append(f"{shard_name(record['index'])}: {problem}")
        rows += record["rows"]
        if progress is not None:
            progress(record["rows"])
    if rows != manifest["rows"]:
        problems.append(f"{MANIFEST}: its shards hold {rows} rows, it says {manifest['rows']}")
    return problems
