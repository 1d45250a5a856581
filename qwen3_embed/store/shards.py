"""The output format every engine writes and `load_corpus`, `verify` and search read.

A folder of shards. Shard k is three files: `shard-0000k.npy` (or `.safetensors`) with its vectors (float32,
float16, or quantized as quantize.py does: the settings say which, and hold the int8 and uint8 ranges),
`shard-0000k.ids.json` with the ids of its rows (and `shard-0000k.texts.json` with their texts, when asked to keep
them), and `shard-0000k.json`, its record, written last: the input file and record range it covers, its row count,
the records skipped as bad and the blank lines of JSON lines (which hold no record), and the size and sha256 of each
of its files, with the dtype and shape of each array. Every file is written under a temporary name, fsynced, renamed,
and the folder fsynced (files.py), so a shard whose record exists is complete on disk. `manifest.json`, written once
every shard is, holds the settings, the inputs (with their record counts) and every shard's record in input order.
Records and manifest are sealed by a checksum of their content (files.seal). A reader trusts nothing it has not
checked: the manifest against its checksum, its shards against its inputs (every record of every input a row,
skipped or blank, once) and the folder's shard files against its shards (none unlisted); each shard's files against
its record, sizes and counts always, checksums unless told otherwise.
"""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .files import (
    atomic_write,
    holder_of,
    parse_vectors,
    read_json,
    seal,
    sealed,
    serialize_vectors,
    sha256,
    vectors_header,
)
from .quantize import PRECISIONS, quantize

FORMAT = "qwen3-embed-shards/2"
VECTOR_FORMATS = ("npy", "safetensors")
VECTOR_DTYPES = PRECISIONS  # float32, float16, and quantized: int8, uint8, binary, ubinary (see quantize.py)
MANIFEST = "manifest.json"
MANIFEST_KEYS = {"shards": list, "settings": dict, "inputs": list, "dim": int, "rows": int}  # what readers use
SHARD_KEYS = {"index": int, "input": dict, "first": int, "records": int, "rows": int, "skipped": list, "blank": int,
              "files": dict}  # fmt: skip
INPUT_KEYS = {"file": str, "records": int}
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
    record = seal({"format": FORMAT, "index": index, **fields, "rows": len(ids), "files": files})
    atomic_write(folder / f"{name}.json", json.dumps(record, indent=1).encode())
    return record


def _vector_format(entry: dict) -> str:
    return entry["name"].rsplit(".", 1)[-1]


def misnamed(record: dict) -> str | None:
    """What is wrong with the names of a shard's files (None when nothing is): each must be the one its role and
    index give, a plain name in the folder (never a path elsewhere)."""
    stem = shard_name(record["index"])
    names = {"vectors": [f"{stem}.{ext}" for ext in VECTOR_FORMATS], "ids": [f"{stem}.ids.json"],
             "texts": [f"{stem}.texts.json"]}  # fmt: skip
    for role, entry in record["files"].items():
        if entry["name"] not in names.get(role, []):
            allowed = " or ".join(names.get(role, [])) or "nothing (no such role)"
            return f"its {role} file is named {entry['name']!r}, where a shard's can only be {allowed}"
    if {"vectors", "ids"} - record["files"].keys():
        return "its record names no vectors or no ids file"
    return None


def check_shard(folder: Path, record: dict, checksums: bool = True) -> str | None:
    """What is wrong with a shard's files against its record (None when nothing is): sizes, the ids' count and the
    vectors' dtype and shape always; the sha256 of every file when `checksums` (of the ids, which are read anyway,
    always)."""
    try:
        if (wrong := misnamed(record)) is not None:
            return wrong
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
    if (wrong := misnamed(record)) is not None:
        raise DamagedShard(f"{name} of {folder}: {wrong}; {REDO}")
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
        holder = holder_of(folder)
        if holder is not None:
            raise FileNotFoundError(
                f"{folder} has no manifest.json yet: an encode run is writing it now ({holder}); wait for it to end"
            )
        if not folder.exists():
            raise FileNotFoundError(f"{folder} does not exist: give the folder an encode run wrote")
        raise FileNotFoundError(
            f"{folder} has no manifest.json: it is not a finished encode output (an interrupted run has shards but no "
            "manifest until it completes; rerun the same encode command to finish it)"
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
    wrong += [f"shards[{k}]" for k, shard in enumerate(manifest.get("shards") or []) if not _shaped(shard, SHARD_KEYS)]
    wrong += [f"inputs[{k}]" for k, entry in enumerate(manifest.get("inputs") or []) if not _shaped(entry, INPUT_KEYS)]
    if wrong:
        raise ValueError(
            f"{path} lacks {', '.join(wrong)} or holds another type there: it was edited or damaged; {REDO}"
        )
    return manifest


def _shaped(entry, keys: dict[str, type]) -> bool:
    """Whether `entry` is a dict holding `keys` of their types (a shard's: files, each named, vectors and ids among
    them; its input, by file name)."""
    if not (isinstance(entry, dict) and all(isinstance(entry.get(key), kind) for key, kind in keys.items())):
        return False
    if "files" not in keys:
        return True
    files = entry["files"]
    named = all(isinstance(f, dict) and isinstance(f.get("name"), str) for f in files.values())
    return named and {"vectors", "ids"} <= files.keys() and isinstance(entry["input"].get("file"), str)


def manifest_problems(folder: Path, manifest: dict) -> list[str]:
    """What is wrong with a manifest itself (empty when nothing is): its checksum, whether its shards account for every
    record of its inputs (each embedded or skipped, once, in order), and whether it lists every shard file in the
    folder."""
    problems = [] if sealed(manifest) else [f"{MANIFEST} fails its checksum: it was edited or damaged since written"]
    problems += _unaccounted(manifest)
    unlisted = [path.name for path in unlisted_files(folder, manifest["shards"])]
    if unlisted:
        shown = ", ".join(unlisted[:6]) + (f" and {len(unlisted) - 6} more" if len(unlisted) > 6 else "")
        problems.append(f"{MANIFEST} does not list {shown}, which are in the folder")
    return problems


def unlisted_files(folder: Path, shards: list[dict]) -> list[Path]:
    """The shard-named files in `folder` (shard-*) that are not those of `shards` (their records and files), by name."""
    listed = {f"{shard_name(s['index'])}.json" for s in shards}
    listed |= {entry["name"] for s in shards for entry in s["files"].values()}
    return sorted(p for p in folder.glob("shard-*") if p.name not in listed)


def _unaccounted(manifest: dict) -> list[str]:
    """The records of the manifest's inputs its shards do not account for, or account for twice."""
    problems, rows, next_record = [], 0, {}  # the next record of each input file
    misnumbered = [(k, shard["index"]) for k, shard in enumerate(manifest["shards"]) if shard["index"] != k]
    if misnumbered:
        k, index = misnumbered[0]
        problems.append(
            f"{MANIFEST}: its shards are not numbered in order from 0 (its shard {k} is {shard_name(index)})"
        )
    for shard in manifest["shards"]:
        name, file = shard_name(shard["index"]), shard["input"]["file"]
        if shard["first"] != next_record.get(file, 0):
            where = f"record {next_record.get(file, 0) + 1}"
            problems.append(
                f"{MANIFEST}: {name} starts at record {shard['first'] + 1} of {file}, where {where} is next"
            )
        if shard["rows"] + len(shard["skipped"]) + shard["blank"] != shard["records"]:
            held = f"{shard['rows']} rows, {len(shard['skipped'])} skipped records and {shard['blank']} blank lines"
            problems.append(f"{MANIFEST}: {name} holds {held} for its {shard['records']} records")
        next_record[file] = shard["first"] + shard["records"]
        rows += shard["rows"]
    counts = {entry["file"]: entry["records"] for entry in manifest["inputs"]}
    for file in counts.keys() | next_record.keys():
        if next_record.get(file, 0) != counts.get(file):
            held = f"its shards hold {next_record.get(file, 0)} records of {file}"
            problems.append(
                f"{MANIFEST}: {held}, " + (f"which has {counts[file]}" if file in counts else "not an input")
            )
    if rows != manifest["rows"]:
        problems.append(f"{MANIFEST}: its shards hold {rows} rows, it says {manifest['rows']}")
    return problems


def load_corpus(folder: str | os.PathLike, verify: bool = True) -> tuple[np.ndarray, list]:
    """All vectors [rows, dim] and ids of a finished output folder, in input order. The manifest is checked
    (`manifest_problems`), and every shard against it (sizes, counts, dtypes and shapes; sha256 checksums unless
    `verify=False`); a damaged one is an error naming it."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    problems = manifest_problems(folder, manifest)
    if problems:
        raise ValueError(f"{folder}: " + "; ".join(problems) + f"; {REDO}")
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
    """The problems of a finished output folder, one line each (empty when it is sound), without a model: the
    manifest's own (`manifest_problems`), then each damaged or missing shard: every shard checked against the
    manifest, and its record file (what a resumed run trusts) against the manifest's record."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    problems = manifest_problems(folder, manifest)
    records = shard_records(folder)
    run = {"settings": manifest["settings"], "model_name": manifest.get("model_name")}  # in each record, not its entry
    packed = manifest["settings"].get("vector_dtype") in ("binary", "ubinary")  # 8 dimensions per byte
    width = -(-manifest["dim"] // 8) if packed else manifest["dim"]
    for record in manifest["shards"]:
        problem = check_shard(folder, record, checksums)
        shape = record["files"]["vectors"].get("shape")
        if problem is None and shape and shape[-1] != width:
            needs = f"the manifest's dim {manifest['dim']} needs {width}"
            problem = f"its vectors have {shape[-1]} values a row where {needs}"
        stored = records.get(record["index"])
        if problem is None and (stored != {**record, **run} or not sealed(stored)):
            how = "is missing" if record["index"] not in records else "cannot be read" if stored is None else "differs"
            how = "fails its checksum" if how == "differs" and not sealed(stored) else how
            problem = f"{shard_name(record['index'])}.json, its record, {how} (the manifest's is sound)"
        if problem is not None:
            problems.append(f"{shard_name(record['index'])}: {problem}")
        if progress is not None:
            progress(record["rows"])
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
