"""Reading a corpus without a model: which files an input names, the format of each, and records read by range
agreeing with the file read whole."""

from __future__ import annotations

import gzip
import json
import sys

import pytest

from qwen3_embed.corpus import inputs, read_documents, resolve_inputs
from qwen3_embed.corpus.inputs import Record, index_file, read_records


def test_the_format_comes_from_the_first_bytes_and_the_suffix_in_any_case(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    record = b'{"text": "x"}\n'
    files = {
        "a.JSONL": b"not json, but the suffix says JSON lines\n",
        "b.ndjson": record,
        "c.jsonl.GZ": gzip.compress(record),
        "d.txt": record,  # text lines by its suffix, braces or not
        "e": record,  # no suffix: JSON lines by content
        "f.csv": b"a,b\n",
        "g.json": b'\xef\xbb\xbf  {"text": "after a BOM"}\n',
        "h.data": gzip.compress(b"gzip by its magic, text by its content\n"),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    pq.write_table(pa.table({"text": ["x"]}), tmp_path / "p.bin")
    source = resolve_inputs(tmp_path)
    assert source.many and {f.name: (f.format, f.compression) for f in source.files} == {
        "a.JSONL": ("jsonl", None), "b.ndjson": ("jsonl", None), "c.jsonl.GZ": ("jsonl", "gzip"),
        "d.txt": ("text", None), "e": ("jsonl", None), "f.csv": ("text", None), "g.json": ("jsonl", None),
        "h.data": ("text", "gzip"), "p.bin": ("parquet", None),
    }  # fmt: skip
    assert resolve_inputs(tmp_path / "a.JSONL", "text").files[0].format == "text"  # forced


@pytest.mark.parametrize("compress", [False, True])
def test_records_read_by_range_equal_the_file_read_whole(tmp_path, monkeypatch, compress):
    """Offsets found in blocks of 5 bytes (so runs start across block edges), CRLF, blank lines, no final newline."""
    monkeypatch.setattr(inputs, "BLOCK", 5)
    lines = ["alpha", "", "gamma delta", "é", "", "zeta\r", "eta", "theta", "", "iota"]
    data = "\n".join(lines).encode()
    path = tmp_path / ("in.txt.gz" if compress else "in.txt")
    path.write_bytes(gzip.compress(data) if compress else data)
    file = resolve_inputs(path).files[0]
    whole = list(read_records(file, positions=True))
    assert [r.text for r in whole] == [line.removesuffix("\r") for line in lines]
    for chunk in (1, 2, 3, 4, 7, 10, 11):
        index = index_file(file, chunk)
        assert index.records == len(lines) and len(index.starts) == -(-len(lines) // chunk)
        ranges = [
            r
            for k, start in enumerate(index.starts)
            for r in read_records(file, positions=True, first=k * chunk, offset=start, count=min(chunk, 10 - k * chunk))
        ]
        assert ranges == whole


def test_empty_files_and_a_trailing_newline(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "one.txt").write_bytes(b"only\n")
    assert index_file(resolve_inputs(tmp_path / "empty.txt").files[0], 4).starts == ()
    assert index_file(resolve_inputs(tmp_path / "one.txt").files[0], 4).records == 1


def test_read_documents_for_rerank(tmp_path):
    lines = [{"body": "first", "key": "a"}, {"body": "second", "key": "b"}]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (tmp_path / "docs.txt").write_text("first\nsecond\n")
    assert read_documents(tmp_path / "docs.jsonl", "body", "key") == (["a", "b"], ["first", "second"])
    assert read_documents(str(tmp_path / "docs.txt")) == ([0, 1], ["first", "second"])
    with pytest.raises(ValueError, match=r"text_field \(--text-field\) applies to JSON lines and Parquet"):
        read_documents(tmp_path / "docs.txt", "body")


@pytest.mark.parametrize(
    "make, spec, message",
    [
        (lambda p: (p / "empty").mkdir(), "{tmp}/empty", r"input folder .*empty holds no files"),
        (lambda p: None, "{tmp}/*.nothing", r"input pattern '.*\*.nothing' matches no file"),
        (lambda p: None, "{tmp}/absent.jsonl", r"input .*absent.jsonl does not exist \(give a file, a folder, a glob"),
    ],
)
def test_inputs_that_name_nothing(tmp_path, make, spec, message):
    make(tmp_path)
    with pytest.raises(FileNotFoundError, match=message):
        resolve_inputs(spec.format(tmp=tmp_path))


def test_zstd_without_its_extra_names_the_extra(tmp_path, monkeypatch):
    (tmp_path / "in.jsonl.zst").write_bytes(b"\x28\xb5\x2f\xfd rest")
    monkeypatch.setitem(sys.modules, "zstandard", None)
    with pytest.raises(ImportError, match=r"in.jsonl.zst is zstd-compressed.*pip install 'qwen3-embed-triton\[zstd\]'"):
        resolve_inputs(tmp_path / "in.jsonl.zst")


def test_ids_are_checked(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "a", "id": [1]}\n{"text": "b", "id": "k"}\n')
    file = resolve_inputs(path).files[0]
    bad, good = read_records(file, id_field="id", positions=True)
    assert str(bad) == 'in.jsonl:1: "id" is list; an id is a string or an integer'
    assert good == Record("k", "b", "in.jsonl:2")
