"""Reading a corpus: the files an input names, the format of each, each file's index (its record count, where each
shard of it starts, and a hash of its content), and the records of a range of a file.

An input is a file, a folder (every file under it, hidden ones aside, in path order), a glob pattern, or `-` for
standard input. A file holds text lines (one text per line), JSON lines (objects with a text field and an optional
id field) or Parquet (columns of those names, with the `parquet` extra); text and JSON lines may be gzip- or
zstd-compressed (zstd needs the `zstd` extra). Compression and Parquet are recognised by their first bytes; text
versus JSON lines by the name's suffix (`.txt`; `.jsonl`, `.ndjson`, in any case), else by the content (JSON lines
when the first non-blank line starts with `{`). A record that cannot be read (bytes that are not UTF-8, bad JSON, an
integer of more than 4,300 digits or nesting too deep for json, no text field, a text that is not a string or holds
a lone surrogate) is a BadRecord naming its file and line; a byte-order mark at the start of a file is skipped. A
compressed or Parquet file cut short or damaged is a DamagedInput naming it.
"""

from __future__ import annotations

import codecs
import fnmatch
import glob
import gzip
import hashlib
import io
import json
import os
import sys
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

INPUT_FORMATS = ("text", "jsonl", "parquet")
SUFFIXES = {".txt": "text", ".text": "text", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
COMPRESSION_SUFFIXES = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
MAGIC = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd"}
# Compressions refused by name, known by their first bytes (no text starts with them; bzip2's "BZh" and block size
# are followed by the magic of its first block, or of its end when it is empty)
UNREAD_MAGIC = {
    b"\xfd7zXZ\x00": "xz",
    b"\x5d\x00\x00": "lzma",
    b"\x04\x22\x4d\x18": "lz4",
    b"PK\x03\x04": "zip",
    b"PK\x05\x06": "zip",
    b"PK\x07\x08": "zip",
    b"7z\xbc\xaf\x27\x1c": "7z",
    **{b"BZh" + bytes([d]) + block: "bzip2" for d in b"123456789" for block in (b"1AY&SY", b"\x17rE8P\x90")},
}
ZSTD_SKIPPABLE = b"\x2a\x4d\x18"  # after a byte 0x50..0x5f: a skippable frame, which pzstd writes first
BOM = b"\xef\xbb\xbf"
BLOCK = 1 << 22
ZSTD_STEP = 1 << 10  # compressed bytes decoded at a time


@dataclass(frozen=True)
class InputFile:
    name: str  # as ids and messages name it: its path under the folder or the glob's base, or '<stdin>'
    path: Path | None
    format: str  # 'text', 'jsonl' or 'parquet'
    compression: str | None = None  # 'gzip' or 'zstd'
    data: bytes | None = None  # standard input, read whole

    @contextmanager
    def open(self) -> Iterator[BinaryIO]:
        """The file's (decompressed) bytes; closed, with the file under them, on leaving the block."""
        with io.BytesIO(self.data) if self.data is not None else open(self.path, "rb") as raw:
            with decompress(raw, self.compression, self.name) as stream:
                yield stream


@dataclass(frozen=True)
class Source:
    """What an input names: its files in order, and whether ids default to 'name:line' (a folder or a glob) or to
    the record's position (one file)."""

    spec: str
    files: tuple[InputFile, ...]
    many: bool

    def needs_fields(self) -> bool:
        return any(f.format != "text" for f in self.files)


@dataclass
class Record:
    id: object  # the id field's value; else 'name:line' for a folder or glob, the 0-based position for one file
    text: str
    where: str  # 'name:line', for messages


class BadRecord(ValueError):
    pass


class LongRecord(BadRecord):
    """A JSON line too long for any record whose text can fit: it is not read (text lines are cut instead)."""


# A JSON line holds a text of n characters in at most 12 n bytes (a character outside the BMP escaped as two
# \\uXXXX), and its other fields (ids, metadata) in at most OTHER_FIELDS bytes, or it is not read.
JSON_BYTES_PER_CHAR, OTHER_FIELDS = 12, 1 << 20


@dataclass(frozen=True)
class FileIndex:
    """What one pass over a file finds: its size and sha256, how many records it holds, and where (in its
    decompressed bytes) each run of `chunk_size` records starts."""

    name: str
    bytes: int
    sha256: str
    records: int
    starts: tuple[int, ...]


def resolve_inputs(spec: str | os.PathLike, input_format: str | None = None) -> Source:
    """The files of an input (a file, a folder, a glob pattern, or '-' for standard input) with the format of each;
    `input_format` forces 'text', 'jsonl' or 'parquet'. Errors name the input and what to do."""
    if input_format is not None and input_format not in INPUT_FORMATS:
        raise ValueError(f"input format {input_format!r} is not one of {', '.join(INPUT_FORMATS)}")
    spec = os.fspath(spec)
    if spec == "-":
        data = sys.stdin.buffer.read()
        return Source(spec, (_input_file("<stdin>", None, input_format, data),), many=False)
    path = Path(spec).expanduser()
    if path.is_dir():
        paths = sorted(p for p in path.rglob("*") if p.is_file() and not _hidden(p.relative_to(path)))
        if not paths:
            raise FileNotFoundError(f"input folder {spec} holds no files")
        return Source(spec, tuple(_input_file(p.relative_to(path).as_posix(), p, input_format) for p in paths), True)
    if path.is_file():
        return Source(spec, (_input_file(path.name, path, input_format),), many=False)
    if glob.has_magic(spec):
        paths = sorted(Path(p) for p in glob.glob(os.path.expanduser(spec), recursive=True) if Path(p).is_file())
        if not paths:
            raise FileNotFoundError(f"input pattern {spec!r} matches no file")
        base = Path(os.path.commonpath([p.parent for p in paths]))
        return Source(spec, tuple(_input_file(p.relative_to(base).as_posix(), p, input_format) for p in paths), True)
    raise FileNotFoundError(f"input {spec} does not exist (give a file, a folder, a glob pattern, or - for stdin)")


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def glob_matches(pattern: str, path: Path) -> bool:
    """Whether the glob `pattern` matches `path` as resolve_inputs reads it (recursively: `**` is any number of
    folders; a wildcard does not match a name starting with a dot), whether or not the path exists: as written, or
    with the symbolic links of the pattern's folder and of the path's existing part followed."""
    parts = Path(os.path.abspath(os.path.expanduser(pattern))).parts
    magic = next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts))
    real = Path(os.path.realpath(Path(*parts[:magic])), *parts[magic:]).parts
    return _glob_matches(parts, Path(os.path.abspath(path)).parts) or _glob_matches(
        real, Path(os.path.realpath(path)).parts
    )


def _glob_matches(parts: tuple[str, ...], names: tuple[str, ...]) -> bool:
    def match(i: int, j: int) -> bool:
        if i == len(parts):
            return j == len(names)
        if parts[i] == "**":
            return match(i + 1, j) or (j < len(names) and not names[j].startswith(".") and match(i, j + 1))
        if j == len(names) or (names[j].startswith(".") and glob.has_magic(parts[i]) and parts[i][0] != "."):
            return False
        return fnmatch.fnmatchcase(names[j], parts[i]) and match(i + 1, j + 1)

    return match(0, 0)


def _input_file(name: str, path: Path | None, forced: str | None, data: bytes | None = None) -> InputFile:
    """An input file with its compression and format, found from its first bytes and its name."""
    try:
        with io.BytesIO(data) if data is not None else open(path, "rb") as f:
            head = f.read(10)
    except OSError as e:
        raise OSError(e.errno, f"cannot read input {path}: {e.strerror}") from None
    unread = next((kind for prefix, kind in UNREAD_MAGIC.items() if head.startswith(prefix)), None)
    if unread is not None:
        raise ValueError(f"input {name} is {unread}-compressed, which is not read; decompress it, or compress it with "
                         "gzip or zstd")  # fmt: skip
    magic = head[:4]
    compression = compression_of(magic)
    if compression == "zstd":
        _need_zstandard(name)
    parquet = magic == b"PAR1"
    base = name.lower()
    suffix = os.path.splitext(base)[1]
    named = COMPRESSION_SUFFIXES.get(suffix)
    if named is not None and compression != named:
        raise DamagedInput(
            f"input {name} is named {suffix} but does not start as {named} data does: it is cut short, or not "
            f"{named}-compressed; replace it with a complete, intact copy"
        )
    for suffix in COMPRESSION_SUFFIXES:
        base = base.removesuffix(suffix)
    by_name = SUFFIXES.get(os.path.splitext(base)[1])
    fmt = forced or ("parquet" if parquet else by_name)
    if fmt == "parquet":
        if data is not None:
            raise ValueError("Parquet cannot be read from standard input: give the file's path")
        if not parquet:
            raise ValueError(f"input {path} is not a Parquet file (it does not start with PAR1)")
        _need_pyarrow()
        return InputFile(name, path, fmt)
    file = InputFile(name, path, fmt or "text", compression, data)
    if fmt is None:
        with file.open() as f:
            head = f.read(1 << 16).removeprefix(BOM).lstrip()
        file = InputFile(name, path, "jsonl" if head.startswith(b"{") else "text", compression, data)
    return file


def compression_of(magic: bytes) -> str | None:
    """'gzip' or 'zstd' by a file's first 4 bytes (a zstd file may start with a skippable frame), else None."""
    if len(magic) == 4 and 0x50 <= magic[0] <= 0x5F and magic[1:] == ZSTD_SKIPPABLE:
        return "zstd"
    return next((kind for prefix, kind in MAGIC.items() if magic.startswith(prefix)), None)


def _need_pyarrow():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(
            "reading Parquet needs pyarrow, which is not installed: pip install 'qwen3-embed-triton[parquet]'"
        ) from None
    return pq


class DamagedInput(ValueError):
    """A compressed or Parquet input that is cut short or damaged."""


@contextmanager
def _parquet_errors(name: str) -> Iterator[None]:
    """pyarrow's errors of a damaged Parquet file (cut short: no footer; a corrupt page), as a DamagedInput naming
    it; an error of the system (a file that cannot be opened: it has an errno) is left as it is."""
    import pyarrow

    try:
        yield
    except (pyarrow.ArrowException, OSError) as e:
        if isinstance(e, OSError) and e.errno is not None:
            raise
        raise DamagedInput(
            f"input {name} is a damaged Parquet file ({e}); replace it with a complete, intact copy"
        ) from None


def _parquet(file: InputFile):
    """The pyarrow ParquetFile of an input (its footer read)."""
    with _parquet_errors(file.name):
        return _need_pyarrow().ParquetFile(file.path)


def decompress(raw: BinaryIO, compression: str | None, name: str) -> BinaryIO:
    """The decompressed bytes of `raw`; a stream cut short or damaged is a DamagedInput naming the file, whenever it
    is found."""
    if compression is None:
        return raw
    if compression == "gzip":
        stream = gzip.GzipFile(fileobj=raw, mode="rb")
        errors: tuple[type[Exception], ...] = (EOFError, gzip.BadGzipFile, zlib.error)
    else:
        zstandard = _need_zstandard(name)
        stream, errors = _Zstd(raw, zstandard), (EOFError, zstandard.ZstdError)
    return io.BufferedReader(_Checked(stream, name, compression, errors), BLOCK)


class _Checked(io.RawIOBase):
    """A decompressing stream whose errors name the file and say what is wrong with it."""

    def __init__(self, stream: BinaryIO, name: str, compression: str, errors: tuple[type[Exception], ...]):
        self.stream, self.name, self.compression, self.errors = stream, name, compression, errors

    def readinto(self, buffer) -> int:
        try:
            return self.stream.readinto(buffer)
        except self.errors as e:
            what = (
                "is cut short: its {} data stops before its end"
                if isinstance(e, EOFError)
                else "is damaged: its {} data is not intact"
            )
            raise DamagedInput(
                f"input {self.name} {what.format(self.compression)} ({e}); replace it with a complete, intact copy"
            ) from None

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.stream.close()
        super().close()


class _Zstd(io.RawIOBase):
    """The decompressed bytes of a zstd stream of one or more frames; an incomplete last frame is an EOFError
    (zstandard's stream_reader ends quietly where a cut-short file does). The compressed bytes go in ZSTD_STEP at a
    time, so that no step makes more than 32 MB (a block of one repeated byte expands up to 32768 times)."""

    def __init__(self, raw: BinaryIO, zstandard):
        self.raw, self.decompressor = raw, zstandard.ZstdDecompressor()
        self.frame = None  # the frame being decoded
        self.input, self.at, self.output = b"", 0, memoryview(b"")

    def readinto(self, buffer) -> int:
        while not self.output:
            if self.at == len(self.input):
                self.input, self.at = self.raw.read(BLOCK), 0
                if not self.input:
                    if self.frame is not None and not self.frame.eof:
                        raise EOFError("the file ends inside a zstd frame")
                    return 0
            if self.frame is None or self.frame.eof:
                self.frame = self.decompressor.decompressobj()
            end = min(self.at + ZSTD_STEP, len(self.input))
            self.output = memoryview(self.frame.decompress(self.input[self.at : end]))
            self.at = end - (len(self.frame.unused_data) if self.frame.eof else 0)  # the next frame starts there
        n = min(len(buffer), len(self.output))
        buffer[:n] = self.output[:n]
        self.output = self.output[n:]
        return n

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.raw.close()
        super().close()


def _need_zstandard(name: str):
    try:
        import zstandard
    except ImportError:
        raise ImportError(
            f"{name} is zstd-compressed, and reading it needs zstandard: pip install 'qwen3-embed-triton[zstd]'"
        ) from None
    return zstandard


CHECKED_CHARS = 1 << 16  # check_fields reads a first record of at most about 1.8 MB


def check_fields(source: Source, text_field: str | None, id_field: str | None, skip_bad: bool) -> None:
    """Refuse a field option that does nothing (text lines have no fields), and a field the input does not have:
    Parquet by its schema, JSON lines by their first record (unless bad records are to be skipped)."""
    given = [name for name, value in (("text_field", text_field), ("id_field", id_field)) if value is not None]
    if given and not source.needs_fields():
        flags = " and ".join(f"{name} (--{name.replace('_', '-')})" for name in given)
        raise ValueError(
            f"{flags} {'applies' if len(given) == 1 else 'apply'} to JSON lines and Parquet, but {source.spec} holds "
            "text lines (one text per line, ids are positions); drop it, or force the format with --format jsonl"
        )
    fields = [text_field or "text"] + ([id_field] if id_field else [])
    for file in source.files:
        if file.format == "parquet":
            names = _parquet(file).schema_arrow.names
            missing = [f for f in fields if f not in names]
            if missing:
                raise ValueError(f"{file.name} has no column {missing[0]!r} (its columns: {', '.join(names)})")
        elif file.format == "jsonl" and not skip_bad:
            records = read_records(file, text_field or "text", id_field, positions=True, max_chars=CHECKED_CHARS)
            first = next(records, None)
            records.close()
            if isinstance(first, BadRecord) and not isinstance(first, LongRecord):  # a long one: found by the run
                raise bad_record_error(first)


class _Hashing(io.RawIOBase):
    """A raw file that hashes and counts the bytes read from it."""

    def __init__(self, raw: BinaryIO):
        self.raw, self.digest, self.size = raw, hashlib.sha256(), 0

    def readinto(self, buffer) -> int:
        n = self.raw.readinto(buffer)
        self.digest.update(memoryview(buffer)[:n])
        self.size += n
        return n

    def readable(self) -> bool:
        return True


def index_file(file: InputFile, chunk_size: int) -> FileIndex:
    """One pass over a file: its size and sha256, its record count, and where each run of `chunk_size` records
    starts (byte offsets into its decompressed content)."""
    with open(file.path, "rb") if file.data is None else io.BytesIO(file.data) as raw:
        hashing = _Hashing(raw)
        reader = io.BufferedReader(hashing, BLOCK)
        if file.format == "parquet":
            while reader.read(BLOCK):
                pass
            records = _parquet(file).metadata.num_rows
            starts = [0] * -(-records // chunk_size)  # rows are addressed by number, not by offset
        else:
            stream = decompress(reader, file.compression, file.name)  # kept: closing it would close `reader`
            records, starts = _line_starts(stream, chunk_size)
            while reader.read(BLOCK):  # bytes after the end of a compressed stream, if any
                pass
    return FileIndex(file.name, hashing.size, hashing.digest.hexdigest(), records, tuple(starts))


def _line_starts(stream: BinaryIO, chunk_size: int) -> tuple[int, list[int]]:
    """(lines, the offset of lines 0, chunk_size, 2 * chunk_size, ...); a last line without a newline counts."""
    lines, position, last, starts = 0, 0, b"\n", [0]
    while block := stream.read(BLOCK):
        found = block.count(b"\n")
        if lines + found >= len(starts) * chunk_size:  # a run starts in this block: after which newline?
            newlines = np.flatnonzero(np.frombuffer(block, np.uint8) == ord("\n"))
            while lines + found >= len(starts) * chunk_size:
                starts.append(position + int(newlines[len(starts) * chunk_size - lines - 1]) + 1)
        lines += found
        position += len(block)
        last = block[-1:]
    lines += last != b"\n"
    return lines, starts[: -(-lines // chunk_size)]


def read_records(
    file: InputFile,
    text_field: str = "text",
    id_field: str | None = None,
    *,
    positions: bool,
    first: int = 0,
    offset: int = 0,
    count: int | None = None,
    max_chars: int | None = None,
) -> Iterator[Record | BadRecord]:
    """Records `first`.. of a file (all of them, or `count`), the first at byte `offset` of its decompressed
    content; ids are positions (`positions`) or 'name:line' unless an id field is given. Records are lines; a blank
    line of JSON lines is passed over (its number still counts), one of text lines is the empty text.

    `max_chars`: the longest text that can fit. A longer line is never held whole: a text line's text is read to
    just past it (so that the tokenizer cuts or refuses it), a JSON line too long to hold such a text is a
    LongRecord."""
    if file.format == "parquet":
        with _parquet_errors(file.name):  # around the yields: a corrupt page is found when its batch is read
            yield from _read_parquet(file, text_field, id_field, positions, first, count)
        return
    with file.open() as stream:
        _skip(stream, offset, file.compression is None and file.data is None)
        index, limit = first, _line_limit(file.format, max_chars)
        while count is None or index < first + count:
            line, cut = _read_line(stream, limit)
            if not line:
                if count is not None:
                    raise ValueError(f"{file.name} ended at line {index}, before line {first + count}: it changed "
                                     "while being read")  # fmt: skip
                return
            if index == 0:
                line = line.removeprefix(BOM)
            if cut and file.format == "jsonl":
                yield LongRecord(
                    f"{file.name}:{index + 1}: a JSON line of more than {limit:,} bytes, longer than any record whose "
                    f"text can fit ({max_chars:,} characters of at most {JSON_BYTES_PER_CHAR} bytes each, and "
                    f"{OTHER_FIELDS:,} bytes of other fields); it was not read"
                )
            elif file.format != "jsonl" or line.strip():  # a blank line in JSON lines holds no record (text: "")
                yield _record(file, index, line.rstrip(b"\n").removesuffix(b"\r"), text_field, id_field, positions)
            index += 1


def _line_limit(file_format: str, max_chars: int | None) -> int | None:
    """The most bytes of a line worth reading: one more character than can fit, in UTF-8 (text) or escaped JSON."""
    if max_chars is None:
        return None
    if file_format == "text":
        return 4 * (max_chars + 1)  # a line of more bytes has more than max_chars characters
    return JSON_BYTES_PER_CHAR * (max_chars + 1) + OTHER_FIELDS


def _read_line(stream: BinaryIO, limit: int | None) -> tuple[bytes, bool]:
    """The next line (b"" at the end), and whether it is longer than `limit` bytes (its LF or CR LF aside): then only
    its first `limit` + 2 bytes, less a character cut in two at their end, and the rest of the line is read past."""
    line = stream.readline(-1 if limit is None else limit + 2)  # room for a CR LF beyond `limit` bytes
    if limit is None:
        return line, False
    whole = line.endswith(b"\n") or len(line) < limit + 2  # else readline stopped inside the line
    if whole and len(line.removesuffix(b"\n").removesuffix(b"\r")) <= limit:
        return line, False
    while not whole and (rest := stream.readline(BLOCK)) and not rest.endswith(b"\n"):
        pass
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        decoder.decode(line)  # holds back the bytes of an incomplete last character
    except UnicodeDecodeError:
        return line, True  # invalid earlier on: reported as such
    return line[: len(line) - len(decoder.getstate()[0])], True


def _skip(stream: BinaryIO, offset: int, seekable: bool) -> None:
    if seekable:
        stream.seek(offset)
        return
    while offset:
        offset -= len(stream.read(min(offset, BLOCK)))


def _record(
    file: InputFile, index: int, line: bytes, text_field: str, id_field: str | None, positions: bool
) -> Record | BadRecord:
    where = f"{file.name}:{index + 1}"
    default_id = index if positions else where
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        return BadRecord(f"{where}: not valid UTF-8 (byte {line[e.start]:#04x} at byte {e.start + 1} of the line)")
    if file.format == "text":
        return Record(default_id, text, where)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        return BadRecord(f"{where}: not valid JSON ({e})")
    except ValueError:  # json's only other ValueError: an integer of more digits than Python converts
        digits = sys.get_int_max_str_digits()
        return BadRecord(f"{where}: holds an integer of more than {digits:,} digits, not read (write it as a string)")
    except RecursionError:
        return BadRecord(f"{where}: holds arrays or objects nested too deeply to read")
    return _fields(where, value, text_field, id_field, default_id)


def _fields(where: str, value, text_field: str, id_field: str | None, default_id) -> Record | BadRecord:
    if not isinstance(value, dict):
        return BadRecord(f'{where}: expected an object with a "{text_field}" field, found {kind_of(value)}')
    if text_field not in value:
        return BadRecord(f'{where}: no "{text_field}" field (its fields: {", ".join(map(str, value)) or "none"})')
    text = value[text_field]
    if not isinstance(text, str):
        return BadRecord(f'{where}: "{text_field}" is {kind_of(text)}, not a string')
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return BadRecord(f'{where}: "{text_field}" holds a lone surrogate ({text[e.start]!r}), which is not text')
    if id_field is None:
        return Record(default_id, text, where)
    if id_field not in value:
        return BadRecord(f'{where}: no "{id_field}" field')
    record_id = value[id_field]
    if isinstance(record_id, bool) or not isinstance(record_id, (str, int)):
        return BadRecord(f'{where}: "{id_field}" is {kind_of(record_id)}; an id is a string or an integer')
    return Record(record_id, text, where)


def kind_of(value: object) -> str:
    """What a JSON (or Parquet) value is, in the file's words: null, true, the number 1.5, a list, an object."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    kinds = {str: "a string", list: "a list", dict: "an object", bytes: "binary data"}
    return kinds.get(type(value), type(value).__name__)


def _read_parquet(
    file: InputFile, text_field: str, id_field: str | None, positions: bool, first: int, count: int | None
) -> Iterator[Record | BadRecord]:
    """Rows first.. of a Parquet file, read a batch at a time from the row groups that hold them."""
    parquet = _need_pyarrow().ParquetFile(file.path)
    columns = [text_field] + ([id_field] if id_field else [])
    end = parquet.metadata.num_rows if count is None else first + count
    row = 0  # the index of the next row to come
    for group in range(parquet.num_row_groups):
        rows = parquet.metadata.row_group(group).num_rows
        if row + rows <= first or row >= end:
            row += rows
            continue
        for batch in parquet.iter_batches(batch_size=4096, row_groups=[group], columns=columns):
            lo, hi = max(first, row), min(end, row + batch.num_rows)
            if hi > lo:
                for at, value in enumerate(batch.slice(lo - row, hi - lo).to_pylist(), start=lo):
                    where = f"{file.name}:{at + 1}"
                    yield _fields(where, value, text_field, id_field, at if positions else where)
            row += batch.num_rows
            if row >= end:
                return


def read_all(
    source: Source,
    text_field: str | None = None,
    id_field: str | None = None,
    skip_bad: bool = False,
    max_chars: int | None = None,
) -> tuple[list[Record], list[str]]:
    """Every record of a source, and the messages of the bad ones skipped (`skip_bad`; else the first is raised);
    `max_chars` as for read_records."""
    records, skipped = [], []
    for file in source.files:
        for record in read_records(
            file, text_field or "text", id_field, positions=not source.many, max_chars=max_chars
        ):
            if isinstance(record, BadRecord):
                if not skip_bad:
                    raise bad_record_error(record)
                skipped.append(str(record))
            else:
                records.append(record)
    return records, skipped


def bad_record_error(record: BadRecord) -> BadRecord:
    return BadRecord(f"{record}; fix it, or skip such records (and have them reported) with --skip-bad")


def read_documents(
    path: str | os.PathLike, text_field: str | None = None, id_field: str | None = None, input_format: str | None = None
) -> tuple[list, list[str]]:
    """(ids, texts) of the records of a file, folder or glob (text lines, JSON lines or Parquet, detected as for
    `encode`, or `input_format`); a bad record is a BadRecord naming its file and line."""
    source = resolve_inputs(path, input_format)
    check_fields(source, text_field, id_field, skip_bad=True)  # a bad first record is found below
    ids, texts = [], []
    for file in source.files:
        for record in read_records(file, text_field or "text", id_field, positions=not source.many):
            if isinstance(record, BadRecord):
                raise record
            ids.append(record.id)
            texts.append(record.text)
    return ids, texts
