"""Embedding a corpus of any size: streamed in chunks into output shards with a manifest, resumable, and spread
over the ranks of torch.distributed when launched by torchrun.

Inputs: text lines (one text per line), JSON lines (a text field and an optional id field), or Parquet (columns
of the same names, with the `parquet` extra). Shard k holds records k*chunk_size .. (k+1)*chunk_size-1 of the
input, so shards are the same whatever the number of ranks; rank r embeds the shards k with k % world_size == r.
A shard is written to a temporary name and renamed when complete, so a rerun skips the finished shards and the
output is exactly that of an uninterrupted run. Rank 0 writes `manifest.json` once every rank is done.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .embedder import Embedder

FORMATS = ("npy", "safetensors")


@dataclass
class Record:
    id: object  # the id field's value, else the record's 0-based position in the input
    text: str


class BadRecord(ValueError):
    pass


def read_records(path: Path, text_field: str = "text", id_field: str | None = None) -> Iterator[Record | BadRecord]:
    """The input's records, streamed; a malformed one comes as a BadRecord (an error naming its line)."""
    if path.suffix == ".parquet":
        yield from _read_parquet(path, text_field, id_field)
        return
    jsonl = path.suffix == ".jsonl"
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            line = line.removesuffix("\n").removesuffix("\r")
            if not jsonl:
                yield Record(number - 1, line)
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                yield BadRecord(f"{path}:{number}: not valid JSON ({e})")
                continue
            yield _record(path, number, record, text_field, id_field)


def _record(path: Path, number: int, record, text_field: str, id_field: str | None) -> Record | BadRecord:
    if not isinstance(record, dict) or text_field not in record:
        return BadRecord(f'{path}:{number}: expected an object with a "{text_field}" field')
    text = record[text_field]
    if not isinstance(text, str):
        return BadRecord(f'{path}:{number}: "{text_field}" is a {type(text).__name__}, not a string')
    if id_field is None:
        return Record(number - 1, text)
    if id_field not in record:
        return BadRecord(f'{path}:{number}: no "{id_field}" field')
    return Record(record[id_field], text)


def _read_parquet(path: Path, text_field: str, id_field: str | None) -> Iterator[Record | BadRecord]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError("reading Parquet needs pyarrow: pip install 'qwen3-embed-triton[parquet]'") from None
    columns = [text_field] + ([id_field] if id_field else [])
    number = 0
    for batch in pq.ParquetFile(path).iter_batches(columns=columns, batch_size=4096):
        for row in batch.to_pylist():
            number += 1
            yield _record(path, number, row, text_field, id_field)


def count_records(path: Path) -> int:
    """How many records the input holds (for the progress bar): rows of a Parquet file, else lines."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    lines, last = 0, b"\n"
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            lines += block.count(b"\n")
            last = block[-1:]
    return lines + (last != b"\n")


def chunks(records: Iterator[Record | BadRecord], size: int, skip_bad: bool, skipped: list[str]):
    """Lists of `size` good records; a bad record raises, or is skipped and its error kept in `skipped`."""
    chunk: list[Record] = []
    for record in records:
        if isinstance(record, BadRecord):
            if not skip_bad:
                raise record
            skipped.append(str(record))
            continue
        chunk.append(record)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class ShardDir:
    """The output folder: shard files, written atomically, and the manifest."""

    def __init__(self, folder: Path, fmt: str):
        if fmt not in FORMATS:
            raise ValueError(f"format {fmt!r} is not one of {FORMATS}")
        self.folder, self.fmt = folder, fmt
        folder.mkdir(parents=True, exist_ok=True)

    def names(self, index: int) -> tuple[str, str]:
        return f"shard-{index:05d}.{self.fmt}", f"shard-{index:05d}.ids.json"

    def done(self, index: int) -> bool:
        return all((self.folder / name).exists() for name in self.names(index))

    def write(self, index: int, vectors: torch.Tensor, ids: list) -> None:
        vectors_name, ids_name = self.names(index)
        self._atomic(vectors_name, lambda path: _save_vectors(path, vectors, self.fmt))
        self._atomic(ids_name, lambda path: path.write_text(json.dumps(ids, ensure_ascii=False)))  # last: done

    def check_settings(self, settings: dict) -> None:
        """A folder holding another run's shards is an error, not a silent mix."""
        path = self.folder / "settings.json"
        if path.exists():
            previous = json.loads(path.read_text())
            if previous != settings:
                changed = sorted(k for k in settings.keys() | previous.keys() if settings.get(k) != previous.get(k))
                raise ValueError(f"{self.folder} holds shards of a run with other settings ({', '.join(changed)}); "
                                 "use another output folder or remove it")  # fmt: skip
        else:
            self._atomic("settings.json", lambda p: p.write_text(json.dumps(settings, indent=2)))

    def _atomic(self, name: str, write) -> None:
        tmp = self.folder / f".{name}.{os.getpid()}.tmp"
        write(tmp)
        os.replace(tmp, self.folder / name)


def _save_vectors(path: Path, vectors: torch.Tensor, fmt: str) -> None:
    if fmt == "npy":
        with open(path, "wb") as f:
            np.save(f, vectors.numpy())
    else:
        from safetensors.torch import save_file

        save_file({"vectors": vectors.contiguous()}, str(path))


def encode_corpus(
    embedder: Embedder,
    input_path: Path,
    output_dir: Path,
    *,
    model: str,
    chunk_size: int = 10_000,
    text_field: str = "text",
    id_field: str | None = None,
    skip_bad: bool = False,
    fmt: str = "npy",
    vector_dtype: str = "float32",
    instruction: str | None = None,
    dim: int | None = None,
    max_length: int | None = None,
    truncate: bool = True,
    batch_tokens: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    barrier=None,
) -> dict | None:
    """Embed the input's records into shards under output_dir; returns the manifest (on rank 0).

    model: the name the embedder was loaded from, recorded so that a rerun with another model cannot mix shards.
    `barrier` is called once this rank's shards are written (torch.distributed.barrier under torchrun).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be at least 1")
    if vector_dtype not in ("float32", "float16"):
        raise ValueError(f"vector_dtype={vector_dtype!r} must be float32 or float16")
    dim = embedder.check_dim(dim)
    out = ShardDir(output_dir, fmt)
    stat = input_path.stat()
    settings = {
        "input": str(input_path.resolve()), "input_bytes": stat.st_size, "input_mtime_ns": stat.st_mtime_ns,
        "model": model, "dtype": str(embedder.dtype),
        "chunk_size": chunk_size, "text_field": text_field, "id_field": id_field, "skip_bad": skip_bad,
        "format": fmt, "vector_dtype": vector_dtype, "instruction": instruction, "dim": dim,
        "max_length": embedder.max_length(max_length), "truncate": truncate,
    }  # fmt: skip
    out.check_settings(settings)

    total = count_records(input_path)
    skipped: list[str] = []
    shards: list[dict] = []
    tokens, start = 0, time.monotonic()
    bar = tqdm(total=total, unit="text", disable=rank != 0, desc="texts (rank 0's share)" if world_size > 1 else None)
    for index, chunk in enumerate(
        chunks(read_records(input_path, text_field, id_field), chunk_size, skip_bad, skipped)
    ):
        vectors_name, ids_name = out.names(index)
        shards.append({"vectors": vectors_name, "ids": ids_name, "count": len(chunk)})
        if index % world_size != rank:
            continue
        if out.done(index):  # written by an earlier run
            bar.update(len(chunk) * world_size)
            continue
        ids = embedder.tokenize([r.text for r in chunk], instruction, None, max_length, truncate)
        vectors = embedder.finish(embedder.run(ids, lambda last: last[:, :dim].float(), batch_tokens), True)
        out.write(index, vectors.to(getattr(torch, vector_dtype)), [r.id for r in chunk])
        tokens += sum(map(len, ids))
        bar.update(len(chunk) * world_size)
        bar.set_postfix(tokens_per_s=f"{tokens / (time.monotonic() - start):.0f}", refresh=False)
    bar.close()
    if barrier is not None:
        barrier()
    if rank != 0:
        return None
    missing = [s["vectors"] for i, s in enumerate(shards) if not out.done(i)]
    if missing:
        raise RuntimeError(f"shards {missing[:5]} were not written; rerun to finish them")
    manifest = {"settings": settings, "texts": sum(s["count"] for s in shards), "dim": dim, "shards": shards,
                "skipped": skipped}  # fmt: skip
    out._atomic("manifest.json", lambda p: p.write_text(json.dumps(manifest, indent=2, ensure_ascii=False)))
    return manifest


def load_corpus(output_dir: Path) -> tuple[np.ndarray, list]:
    """All vectors [texts, dim] and ids of a finished output folder, in input order."""
    manifest = json.loads((output_dir / "manifest.json").read_text())
    vectors, ids = [], []
    for shard in manifest["shards"]:
        path = output_dir / shard["vectors"]
        if path.suffix == ".npy":
            vectors.append(np.load(path))
        else:
            from safetensors.numpy import load_file

            vectors.append(load_file(str(path))["vectors"])
        ids += json.loads((output_dir / shard["ids"]).read_text())
    return np.concatenate(vectors) if vectors else np.empty((0, manifest["dim"]), np.float32), ids
