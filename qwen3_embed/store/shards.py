"""The output format every engine writes and `load_corpus`, `verify` and search read.

A folder of shards. Shard k is three files: `shard-0000k.npy` (or `.safetensors`) with its vectors (float32,
float16, or quantized as quantize.py does: the settings say which, and hold the int8 and uint8 ranges),
`shard-0000k.ids.json` with the ids of its rows (and `shard-0000k.texts.json` with their texts, when asked to keep
them), and `shard-0000k.json`, its record, written last: the input file and record range it covers, its row count,
and the size and sha256 of each of its files, with the dtype and shape of each array. Every file is written under a
temporary name, fsynced, renamed, and the folder fsynced (files.py), so a shard whose record exists is complete on
disk. `manifest.json`, written once every shard is, holds the settings, the inputs and every shard's record in input
order. A reader trusts nothing it has not checked against the record: sizes and counts always, checksums unless told
otherwise.
"""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .files import atomic_write, parse_vectors, read_json, serialize_vectors, sha256, vectors_header
from .quantize import PRECISIONS, quantize

FORMAT = "qwen3-embed-shards/1"
VECTOR_FORMATS = ("npy", "safetensors")
VECTOR_DTYPES = PRECISIONS  # float32, float16, and quantized: int8, uint8, binary, ubinary (see quantize.py)
MANIFEST = "manifest.json"
MANIFEST_KEYS = {"shards": list, "settings": dict, "dim": int, "rows": int}  # what readers use
REDO = "rerun the encode command that wrote it: a rerun embeds the damaged shards again"


class DamagedShard(ValueError):
    """A shard whose files do not match its record."""


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def file_entry(name: str, data: bytes, **array) -> dict:
    """A file's line in a shard record: its name, size and sha256 (and dtype and shape, for an array)."""
    return {"name": name, "bytes": len(data), "sha256": sha256(data), **array}


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
    contents = [
        ("vectors", f"{name}.{vector_format}", serialize_vectors(vectors, vector_format)),
        ("ids", f"{name}.ids.json", json.dumps(ids).encode()),
    ]
    if texts is not None:
        contents.append(("texts", f"{name}.texts.json", json.dumps(texts, ensure_ascii=False).encode()))
    files = {}
    for role, file, data in contents:
        atomic_write(folder / file, data)
        array = {"dtype": vectors.dtype.name, "shape": list(vectors.shape)} if role == "vectors" else {}
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
    wrong = [key for key, kind in MANIFEST_KEYS.items() if not isinstance(manifest.get(key), kind)]
    if wrong:
        raise ValueError(
            f"{path} lacks {', '.join(wrong)} or holds another type there: it was edited or damaged; {REDO}"
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


class ShardColumn(Sequence):
    """A per-row JSON list of a shard folder (ids, or texts kept by `encode --store-text`) as one sequence over the
    rows of `records` (those with rows, in order, starting at `starts`); each shard's file is read when a row of it is
    first asked for."""

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
