"""What every engine shares: a Job is everything settled before a model loads (the checkpoint and its fingerprint,
the input's files and their index, the shards they make, the settings, and the output folder checked against
them); then each shard is read, tokenized, embedded and written the same way whichever engine runs it.

Shards are defined per input file: shard k is records [first, first + records) of one file, `chunk_size` records
(good or bad) at a time, so a shard is the same whatever engine or number of workers writes it, and a worker reads
only its own shards' bytes. Settings are identified by content, not by name: the model by its config, tokenizer and
weight files (sizes, headers and sampled blocks), each input file by its size and sha256. They are recorded with
each complete shard, so a run that fails before its first shard leaves nothing to refuse, and a folder holding
shards of other settings is refused with each difference named. `skip_bad`, `batch_tokens` and the engine are not
settings: they change no shard that gets written (batch composition moves only the last bits of a vector).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from .. import checkpoint
from ..config import Qwen3Config
from ..embedder import Embedder, read_prompts
from ..model import Qwen3Model
from ..pipeline import Progress
from ..store.files import atomic_write, lock_folder, make_writable_folder, read_json, seal, sealed
from ..store.fingerprint import model_fingerprint
from ..store.quantize import quantize
from ..store.shards import (
    FORMAT,
    MANIFEST,
    VECTOR_FORMATS,
    check_shard,
    remove_orphans,
    shard_name,
    shard_records,
    unlisted_files,
    write_shard,
)
from ..tokenize import Cut, TextTooLong, Tokenizer
from .inputs import (
    BadRecord,
    FileIndex,
    Record,
    Source,
    bad_record_error,
    check_fields,
    glob_matches,
    index_file,
    read_records,
    resolve_inputs,
)
from .options import Options, ShardOptions


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during an encode run, with what was done and how to resume."""


@dataclass(frozen=True)
class ShardTask:
    index: int
    file: int  # position in the source's files
    first: int  # the file's record at which the shard starts (0-based)
    records: int
    offset: int  # where record `first` starts in the file's decompressed bytes


@dataclass
class Prepared:
    """A shard's records, tokenized: the ids and token ids of the good ones, and what was skipped or cut."""

    ids: list = field(default_factory=list)
    tokens: list[list[int]] = field(default_factory=list)
    texts: list[str] | None = None  # with store_text
    skipped: list[str] = field(default_factory=list)
    cut: list[str] = field(default_factory=list)


class Solo:
    """One process doing all the work; the torchrun and Ray engines provide the same methods."""

    rank, world_size = 0, 1

    def map(self, fn, items: list) -> list:
        return [fn(item) for item in items]

    def broadcast(self, value):
        return value

    def claims(self, n: int) -> Iterator[int]:
        return iter(range(n))

    def wait_for_all(self, counts: dict[str, int]) -> dict[str, int]:
        return counts


def tokenizer_only(folder: Path) -> Embedder:
    """An Embedder without weights (its model on the meta device): it tokenizes and checks `dim` and `max_length`
    exactly as the loaded one does, for the checks made before a model loads and for CPU tokenizing workers."""
    if not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{folder} has no tokenizer.json; is it a complete checkpoint folder?")
    config = Qwen3Config.from_json(folder / "config.json")
    with torch.device("meta"):
        model = Qwen3Model(config)
    return Embedder(model, Tokenizer(folder / "tokenizer.json", config.vocab_size), *read_prompts(folder))


def folder_source(inputs, input_format: str | None) -> Source:
    """The input of a folder of shards: anything but standard input, which a rerun could not read again."""
    stdin = inputs.files[0].data is not None if isinstance(inputs, Source) else os.fspath(inputs) == "-"
    if stdin:
        raise ValueError(
            "--input - (standard input) can be encoded only into one file (--output FILE.npy or FILE.safetensors); "
            "a folder of shards is resumable, which needs an input file that can be read again"
        )
    return inputs if isinstance(inputs, Source) else resolve_inputs(inputs, input_format)


class Job:
    """A corpus run, settled before the model loads: the input and output are checked here, and the options settled
    against the checkpoint (`ShardOptions.settle`)."""

    def __init__(self, model, inputs, output, options: ShardOptions, dtype: torch.dtype, group=None):
        group = group or Solo()
        self.options, self.output = options, Path(output)
        if self.output.exists() and not self.output.is_dir():
            raise FileExistsError(
                f"output {self.output} is a file; give a folder for the shards (or a path ending in .npy or "
                ".safetensors for one file built in memory)"
            )
        self.source = folder_source(inputs, options.input_format)
        check_apart(self.source, self.output)
        check_fields(self.source, options.text_field, options.id_field, options.skip_bad)
        self.checkpoint, self.model_name = checkpoint.resolve(model), str(model)
        self.dim, self.max_length, ranges = options.settle(self.tokenizer)
        self.settings = self._settings(dtype, ranges)
        self.indexes: list[FileIndex] = group.map(lambda f: index_file(f, options.chunk_size), list(self.source.files))
        self.plan: list[ShardTask] = []
        for i, index in enumerate(self.indexes):
            for k, start in enumerate(index.starts):
                first = k * options.chunk_size
                records = min(options.chunk_size, index.records - first)
                self.plan.append(ShardTask(len(self.plan), i, first, records, start))
        self.lock = None  # rank 0's hold on the output folder (files.lock_folder), from _existing to close()
        self.existing = self._existing(group)

    def _settings(self, dtype: torch.dtype, ranges: np.ndarray | None) -> dict:
        """What decides the shards' contents, recorded with each: a folder holding shards of other settings is
        refused."""
        options = self.options
        return {
            "model": model_fingerprint(self.checkpoint),
            "dtype": str(dtype).removeprefix("torch."),
            "dim": self.dim,
            "max_length": self.max_length,
            "truncate": options.truncate,
            "instruction": options.instruction,
            "prompt_name": options.prompt_name,
            "text_field": options.text_field or "text",
            "id_field": options.id_field,
            "default_ids": "name:line" if self.source.many else "position",
            "chunk_size": options.chunk_size,
            "vector_format": options.vector_format,
            "vector_dtype": options.vector_dtype,
            **({"ranges": ranges.tolist()} if ranges is not None else {}),
            **({"store_text": True} if options.store_text else {}),
        }

    def _existing(self, group) -> set[int]:
        """The shards already in the output folder of this run, found by rank 0 (which makes the folder and clears
        it of orphans) and told to every rank, as is any problem with the folder."""
        problem, existing = None, set()
        if group.rank == 0:
            make_writable_folder(self.output, self.output)
            try:
                self.lock = lock_folder(self.output)  # before anything in the folder is touched
                remove_orphans(self.output)
                existing = self._check_folder()
            except ValueError as e:
                problem = str(e)
                self.close()
        problem, existing = group.broadcast((problem, existing))
        if problem:
            raise ValueError(problem)
        return existing

    def close(self) -> None:
        """Let go of the output folder, for another run to take."""
        if self.lock is not None:
            self.lock.close()
            self.lock = None

    def __getstate__(self) -> dict:
        state = dict(vars(self))
        state.pop("tokenizer", None)  # rebuilt where it is used
        state["lock"] = None  # held by the driver alone
        return state

    @cached_property
    def tokenizer(self) -> Embedder:
        return tokenizer_only(self.checkpoint)

    def _input(self, i: int) -> dict:
        index = self.indexes[i]
        return {"file": index.name, "bytes": index.bytes, "sha256": index.sha256, "format": self.source.files[i].format}

    def identity(self, task: ShardTask) -> dict:
        """What a shard's record must say of its input."""
        return {"input": self._input(task.file), "first": task.first, "records": task.records}

    def _check_folder(self) -> set[int]:
        """The shards already in the output folder whose records match this run; a record of other settings or of
        another input is an error listing every difference."""
        differences: dict[str, str] = {}
        inputs = {index.name: self._input(i) for i, index in enumerate(self.indexes)}
        matching = set()
        for k, record in sorted(shard_records(self.output).items()):
            if not sealed(record):
                continue  # damaged: it is embedded again
            try:
                then, source, name = record["settings"], record["input"], record["model_name"]
                where = (source["file"], record["first"], record["records"])
            except (TypeError, KeyError):
                continue  # unreadable: it is embedded again
            for key in sorted(self.settings.keys() | then.keys()):
                if key not in differences and then.get(key) != self.settings.get(key):
                    shown = [
                        _show(value, model if key == "model" else None)
                        for value, model in ((then.get(key), name), (self.settings.get(key), self.model_name))
                    ]
                    differences[key] = f"{key}: {shown[0]} then, {shown[1]} now"  # fmt: skip
            current = inputs.get(source["file"])
            key = f"input {source['file']}"
            if current is None:
                differences.setdefault(key, f"{key}: in the input then, not now")
            elif current != source:
                differences.setdefault(key, f"{key}: {_file(source)} then; {_file(current)} now")
            elif then == self.settings and (k >= len(self.plan) or where != self._where(k)):
                now = _lines(*self._where(k)) if k < len(self.plan) else "nothing"
                differences.setdefault(
                    "files", f"input files: {shard_name(k)} holds {_lines(*where)} then, {now} now (were input files "
                    "added or removed?)"
                )  # fmt: skip
            elif then == self.settings:
                matching.add(k)
        if differences:
            raise ValueError(
                f"{self.output} holds shards of a run with other settings or another input; use another output "
                "folder, or delete this one to start over:\n  " + "\n  ".join(differences.values())
            )
        return matching

    def _where(self, k: int) -> tuple[str, int, int]:
        task = self.plan[k]
        return self.indexes[task.file].name, task.first, task.records

    def records(self, task: ShardTask) -> Iterator[Record | BadRecord]:
        return read_records(
            self.source.files[task.file], self.settings["text_field"], self.options.id_field,
            positions=not self.source.many, first=task.first, offset=task.offset, count=task.records,
            max_chars=self.tokenizer.tokenizer.max_chars(self.max_length),
        )  # fmt: skip

    def problem(self, task: ShardTask) -> str | None:
        """Why shard `task` must be embedded ('missing', or what is wrong with it), or None when it is sound."""
        path = self.output / f"{shard_name(task.index)}.json"
        if not path.exists():
            return "missing"
        try:
            record = read_json(path)
            if isinstance(record, dict) and record.get("format") != FORMAT:
                return f"its record is in format {record.get('format')!r}, not {FORMAT!r} (another version's)"
            if not sealed(record):
                return "its record fails its checksum (damaged, or edited)"
            if record["settings"] != self.settings or any(record[k] != v for k, v in self.identity(task).items()):
                return "its record is of another run"
        except (OSError, ValueError, KeyError, TypeError) as e:
            return f"its record cannot be read ({type(e).__name__}: {e})"
        return check_shard(self.output, record, self.options.verify)

    def prepare(self, embedder: Embedder, task: ShardTask) -> Prepared:
        return prepare(embedder, self.records(task), self.options, self.max_length, self.options.store_text)

    def embed(self, embedder: Embedder, prepared: Prepared, progress: Progress | None) -> np.ndarray:
        return embed(embedder, prepared.tokens, self.dim, self.options, progress)

    def write(self, task: ShardTask, vectors: np.ndarray, prepared: Prepared) -> dict:
        """Write a shard; its record accounts for each of its records: a row, skipped (bad), or a blank line of JSON
        lines (no record)."""
        blank = task.records - len(prepared.ids) - len(prepared.skipped)
        return write_shard(
            self.output, task.index, vectors, prepared.ids, self.options.vector_format, prepared.texts,
            **self.identity(task),
            model_name=self.model_name, settings=self.settings, tokens=sum(map(len, prepared.tokens)),
            skipped=prepared.skipped, blank=blank, cut=prepared.cut,
        )  # fmt: skip

    def finish(self) -> dict:
        """Write the manifest, once every shard of the plan has a record of this run (the shard files it does not list
        removed); returns it."""
        records = shard_records(self.output)
        shards, missing = [], []
        for task in self.plan:
            record = records.get(task.index)
            sound = isinstance(record, dict) and record.get("settings") == self.settings
            sound = sound and all(record.get(k) == v for k, v in self.identity(task).items())
            if not sound:
                missing.append(shard_name(task.index))
            else:
                shards.append({k: v for k, v in record.items() if k not in ("settings", "model_name")})
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise RuntimeError(f"{shown} of {self.output} were not written; rerun the same command to finish them")
        check_unique(lambda: (read_json(self.output / s["files"]["ids"]["name"]) for s in shards), self.options)
        self._remove_unlisted(shards)
        manifest = seal({
            "format": FORMAT,
            "model_name": self.model_name,
            "settings": self.settings,
            "inputs": [{**self._input(i), "records": index.records} for i, index in enumerate(self.indexes)],
            "rows": sum(s["rows"] for s in shards),
            "dim": self.dim,
            "shards": shards,
            "skipped": [m for s in shards for m in s["skipped"]],
            "cut": [m for s in shards for m in s["cut"]],
        })  # fmt: skip
        atomic_write(self.output / MANIFEST, json.dumps(manifest, indent=1).encode())
        return manifest

    def _remove_unlisted(self, shards: list[dict]) -> None:
        """Delete the shard-named files of the output folder that none of `shards` accounts for (a stray copy, another
        vector format's file), which a folder that verifies cannot hold, and say which; a folder of such a name is
        refused."""
        unlisted = unlisted_files(self.output, shards)
        folders = [path for path in unlisted if path.is_dir() and not path.is_symlink()]
        if folders:
            raise ValueError(
                f"{folders[0]} is a folder with a shard's name, which no shard of this run accounts for; remove it, "
                "and rerun the same command"
            )
        for path in unlisted:
            path.unlink()
        if unlisted:
            names = [path.name for path in unlisted]
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            warnings.warn(
                f"removed {len(names)} file(s) of {self.output} that no shard of this run accounts for: {shown}",
                stacklevel=3,
            )


def check_apart(source: Source, output: Path, files: tuple[Path, ...] = ()) -> None:
    """Refuse an output that the input reads: a folder of shards, or one file (`files`: its vectors file and the ids
    file beside it), inside an input folder, or where the input's glob pattern matches the files a run writes; or a
    folder of shards that holds an input file, or one file that is an input. An output is never an input."""
    folder = output.parent if files else output
    out = folder.resolve()
    root = Path(source.spec).expanduser()
    if source.many and root.is_dir() and out.is_relative_to(root.resolve()):
        raise ValueError(
            f"output {output} is inside the input folder {root}, whose every file is read as input; put the output "
            "elsewhere"
        )
    shards = [MANIFEST] + [f"shard-00000.{ext}" for ext in ("json", "ids.json", "texts.json", *VECTOR_FORMATS)]
    written = [path.name for path in files] or shards
    if source.many and not root.is_dir() and any(glob_matches(source.spec, folder / name) for name in written):
        raise ValueError(
            f"output {output} is where the input pattern {source.spec!r} matches files: a rerun would read "
            f"{'it (or its ids file)' if files else 'the shards written there'} as input; put the output elsewhere, "
            "or narrow the pattern"
        )
    outputs = {path.resolve() for path in files}
    inputs = [(f.name, f.path.resolve()) for f in source.files if f.path is not None]
    inside = [name for name, path in inputs if (path in outputs if files else path.is_relative_to(out))]
    if inside:
        where = f"a file the output {output} writes" if files else f"inside the output folder {output}"
        raise ValueError(f"input {inside[0]} is {where}, which is never an input")


def check_unique(read: Callable[[], Iterable[list]], options: Options) -> None:
    """Warn of ids that more than one record has, naming the first (with `options.unique_ids`, refuse them); `read()`
    gives the ids, a list at a time. Ids that no id field gives (positions, or name:line) are unique as they are."""
    if options.id_field is None:
        return
    count, repeated = repeated_ids(read)
    if not count:
        return
    shown = ", ".join(map(repr, repeated[:5])) + (f" and {len(repeated) - 5} more" if len(repeated) > 5 else "")
    what = f"{count} record(s) have the id of an earlier record ({len(repeated)} id(s) repeated: {shown})"
    if options.unique_ids:
        raise ValueError(f"{what}, which --unique-ids refuses: give every record its own id, or drop --unique-ids")
    warnings.warn(
        f"{what}: a search names such rows alike; give every record its own id (--unique-ids refuses such input)",
        stacklevel=4,
    )


def repeated_ids(read: Callable[[], Iterable[list]]) -> tuple[int, list]:
    """(how many records have the id of an earlier record, the ids repeated, in the order of their first repeat), over
    the ids that `read()` gives a list at a time. Two passes, so that memory holds 8 bytes an id: their hashes, then
    (only when a hash repeats) the ids whose hash repeats."""
    hashes = [np.fromiter(map(hash, ids), np.int64, len(ids)) for ids in read()]
    hashes = np.sort(np.concatenate(hashes)) if hashes else np.empty(0, np.int64)
    candidates = set(hashes[1:][hashes[1:] == hashes[:-1]].tolist())
    count, repeated, seen = 0, {}, set()
    for ids in read() if candidates else ():
        for i in filter(lambda i: hash(i) in candidates, ids):
            if i in seen:
                count += 1
                repeated[i] = None
            seen.add(i)
    return count, list(repeated)


def check_embedder(embedder: Embedder, folder: Path) -> None:
    """Refuse an embedder that was not loaded from the checkpoint in `folder` (by content): the shards would credit
    its vectors to that checkpoint."""
    source = embedder.folder
    if source is None:
        raise ValueError(
            "embedder= was not loaded by Embedder.from_pretrained, so which checkpoint it runs is not known and the "
            "shards could not name it; load it with Embedder.from_pretrained(model), or leave it out"
        )
    if Path(source).resolve() != folder.resolve() and model_fingerprint(Path(source)) != model_fingerprint(folder):
        raise ValueError(
            f"embedder= was loaded from {source}, whose config, tokenizer or weights differ from model={folder}'s, "
            f"and the shards would name the wrong model; pass model={str(source)!r}, or leave embedder out"
        )


def _show(value, name: str | None) -> str:
    if name is not None:
        return f"{name} (content {value[:12]})"
    shown = json.dumps(value)
    return shown if len(shown) <= 60 else f"{shown[:40]}... ({len(shown)} characters)"  # int8 ranges: dim x 2 numbers


def _file(entry: dict) -> str:
    return f"{entry.get('bytes')} bytes of {entry.get('format')}, sha256 {str(entry.get('sha256'))[:12]}"


def _lines(name: str, first: int, records: int) -> str:
    return f"{name} records {first + 1}-{first + records}"


def prepare(
    embedder: Embedder, records: Iterable[Record | BadRecord], options: Options, max_length: int, texts: bool = False
) -> Prepared:
    """Tokenize the good records (keeping their texts too with `texts`); a bad one, or one the tokenizer refuses (a
    token outside the model's vocabulary, a text over max_length without truncation), is skipped with its message
    when `options.skip_bad`, else raised."""
    out, good = Prepared(), []
    for record in records:
        if isinstance(record, BadRecord):
            _bad(record, options, out)
        else:
            good.append(record)

    cut = Cut(max_length)  # a call that raises adds nothing to it

    def tokenize(texts: list[str], first: int = 0) -> list[list[int]]:
        return embedder.tokenize(
            texts, options.instruction, options.prompt_name, max_length, options.truncate, False, first, cut
        )

    try:
        tokens = tokenize([r.text for r in good])
    except ValueError:  # find which records the tokenizer refuses
        kept, tokens = [], []
        for record in good:
            try:
                tokens += tokenize([record.text], len(kept))
                kept.append(record)
            except TextTooLong as e:  # said of this one record (the tokenizer's message counts texts of a call)
                what = f"{record.where}: its text is longer than max_length={max_length} tokens ({e.length})"
                _bad(BadRecord(f"{what}; shorten it, raise max_length, or pass truncate=True"), options, out)
            except ValueError as e:
                _bad(BadRecord(f"{record.where}: {e}"), options, out)
        good = kept
    out.cut = [good[i].where for i in cut.indices]
    out.ids, out.tokens = [r.id for r in good], tokens
    out.texts = [r.text for r in good] if texts else None
    return out


def _bad(record: BadRecord, options: Options, out: Prepared) -> None:
    if not options.skip_bad:
        raise bad_record_error(record)
    out.skipped.append(str(record))


def embed(
    embedder: Embedder, tokens: list[list[int]], dim: int, options: Options, progress: Progress | None
) -> np.ndarray:
    """Vectors [len(tokens), dim] as Embedder.encode computes them, in `options.vector_dtype` (quantized by
    store.quantize, int8 and uint8 with the ranges of `options.calibration`)."""
    vectors = np.empty((0, dim), np.float32)
    if tokens:
        vectors = embedder.run(tokens, lambda last: last[:, :dim].float(), options.batch_tokens, progress)
        vectors = embedder.finish(vectors, True).numpy()
    return quantize(vectors, options.vector_dtype, calibration=options.calibration)


def warn_cut(cut: list[str], max_length: int) -> None:
    if cut:
        shown = ", ".join(cut[:5]) + (f" and {len(cut) - 5} more" if len(cut) > 5 else "")
        warnings.warn(
            f"{len(cut)} text(s) were longer than max_length={max_length} tokens and were cut to fit ({shown}); pass "
            "truncate=False (--no-truncate) to make them errors instead",
            stacklevel=3,
        )
