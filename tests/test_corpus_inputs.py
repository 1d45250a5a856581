"""Reading a corpus without a model: which files an input names, the format of each, and records read by range
agreeing with the file read whole."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys

import pytest

from checkpoints import REPO
from qwen3_embed.cli import main
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
    """A value of the wrong type is named in JSON's words (it was Python's: NoneType, float, bool, list)."""
    path = tmp_path / "in.jsonl"
    ids = ["null", "1.5", "true", "[1]", '{"a": 1}']
    path.write_text("".join(f'{{"text": "a", "id": {i}}}\n' for i in ids) + '{"text": "b", "id": "k"}\n')
    file = resolve_inputs(path).files[0]
    *bad, good = read_records(file, id_field="id", positions=True)
    kinds = ["null", "the number 1.5", "true", "a list", "an object"]
    assert [str(b) for b in bad] == [f'in.jsonl:{i}: "id" is {kind}; an id is a string or an integer'
                                     for i, kind in enumerate(kinds, start=1)]  # fmt: skip
    assert good == Record("k", "b", "in.jsonl:6")


def encode_cli(*args: str) -> subprocess.CompletedProcess:
    """`qwen3-embed encode` in its own process."""
    command = [sys.executable, "-m", "qwen3_embed.cli", "encode", *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("lines", [30_000, 3])
def test_a_cut_short_zstd_file_is_an_error_naming_it_and_nothing_of_it_is_written(tiny, tmp_path, lines):
    """zstandard's stream reader ends quietly where a cut-short file does: 60% of a 30,000-line file was read as 17,000
    complete records, and a small one as none, with exit 0 and no warning."""
    import zstandard

    data = "".join(f"line {i}\n" for i in range(lines)).encode()
    compressed = zstandard.ZstdCompressor().compress(data)
    (tmp_path / "in.txt.zst").write_bytes(compressed[: len(compressed) * 6 // 10])
    for output in ("out", "out.npy"):
        done = encode_cli("--model", str(tiny[0]), "--input", str(tmp_path / "in.txt.zst"), "--output",
                          str(tmp_path / output))  # fmt: skip
        assert done.returncode == 1 and "Traceback" not in done.stderr and "looks like a bug" not in done.stderr
        assert "qwen3-embed: error: input in.txt.zst is cut short: its zstd data stops before its end" in done.stderr
        assert "wrote" not in done.stderr
    assert not (tmp_path / "out.npy").exists() and not list((tmp_path / "out").glob("*.json"))


def test_zstd_frames_are_read_across_and_a_cut_anywhere_inside_one_is_found(tmp_path, monkeypatch):
    """Two frames (as a parallel compressor writes them), read in steps of 7 compressed bytes so that frames end
    inside a step: the content whole; cut at any byte inside a frame, an error (a cut between frames leaves complete
    frames, which no reader can tell from a whole file)."""
    import zstandard

    monkeypatch.setattr(inputs, "ZSTD_STEP", 7)
    parts = [b"".join(b"first %d\n" % i for i in range(300)), b"".join(b"second %d\n" % i for i in range(200))]
    frames = [zstandard.ZstdCompressor().compress(part) for part in parts]
    data = b"".join(frames)
    (tmp_path / "in.txt.zst").write_bytes(data)
    file = resolve_inputs(tmp_path / "in.txt.zst").files[0]
    assert [r.text for r in read_records(file, positions=True)] == b"".join(parts).decode().splitlines()
    assert index_file(file, 100).records == 500
    for cut in [1, 4, 9, len(frames[0]) - 1, len(frames[0]) + 3, len(data) - 1]:
        (tmp_path / "in.txt.zst").write_bytes(data[:cut])
        with pytest.raises(inputs.DamagedInput, match="input in.txt.zst is cut short"):
            index_file(file, 100)


def gzip_damaged(kind: str) -> bytes:
    data = gzip.compress("".join(f"line {i}\n" for i in range(2000)).encode())
    if kind == "cut short":
        return data[: len(data) // 2]
    if kind == "junk after it":
        return data + b"GARBAGE"
    flipped = bytearray(data)
    flipped[len(data) // 2 if kind == "a bit flipped" else -6] ^= 0x10  # -6: inside the CRC
    return bytes(flipped)


@pytest.mark.parametrize(
    "kind, message",
    [
        ("cut short", r"is cut short: its gzip data stops before its end \(Compressed file ended"),
        ("a bit flipped", r"is damaged: its gzip data is not intact \((CRC check failed|Error -3)"),
        ("junk after it", r"is damaged: its gzip data is not intact \(Not a gzipped file \(b'GA'\)\)"),
        ("a bad CRC", r"is damaged: its gzip data is not intact \(CRC check failed"),
    ],
)
def test_a_damaged_gzip_file_is_an_error_naming_it_and_what_is_wrong(tiny, tmp_path, capsys, kind, message):
    """Each was an EOFError 'this looks like a bug', or a bare 'Not a gzipped file' / 'CRC check failed'."""
    (tmp_path / "in.txt.gz").write_bytes(gzip_damaged(kind))
    with pytest.raises(SystemExit) as exit:
        main(["encode", "--model", str(tiny[0]), "--input", str(tmp_path / "in.txt.gz"), "--output",
              str(tmp_path / "out")])  # fmt: skip
    assert re.fullmatch(f"qwen3-embed: error: input in.txt.gz {message}.*; replace it with a complete, intact copy",
                        str(exit.value.code))  # fmt: skip
    assert not list((tmp_path / "out").glob("*.json"))


@pytest.mark.parametrize("name, keep", [("in.txt.gz", 0), ("in.txt.gz", 1), ("in.txt.zst", 3), ("in.TXT.ZSTD", 2)])
def test_a_compressed_file_cut_inside_its_magic_number_is_an_error_naming_it(tiny, tmp_path, name, keep):
    """Cut to its first byte (or none), a .gz file was read as a text file and its one line embedded, exit 0."""
    import zstandard

    data = "".join(f"line {i}\n" for i in range(50)).encode()
    compressed = gzip.compress(data) if name.endswith(".gz") else zstandard.ZstdCompressor().compress(data)
    (tmp_path / name).write_bytes(compressed[:keep])
    done = encode_cli("--model", str(tiny[0]), "--input", str(tmp_path / name), "--output", str(tmp_path / "out"))
    suffix = name.lower()[name.rfind(".") :]
    assert done.returncode == 1 and "wrote" not in done.stderr, done.stderr
    assert f"qwen3-embed: error: input {name} is named {suffix} but does not start as" in done.stderr
    assert not list((tmp_path / "out").glob("*.json"))


def test_a_zstd_file_that_starts_with_a_skippable_frame_is_read(tmp_path):
    """pzstd writes a skippable frame before each frame: such a file was refused as text that is not UTF-8."""
    import zstandard

    data = "".join(f"line {i}\n" for i in range(50)).encode()
    skippable = b"\x5a\x2a\x4d\x18" + (4).to_bytes(4, "little") + b"size"
    (tmp_path / "in.txt.zst").write_bytes(skippable + zstandard.ZstdCompressor().compress(data))
    file = resolve_inputs(tmp_path / "in.txt.zst").files[0]
    assert file.compression == "zstd"
    assert [r.text for r in read_records(file, positions=True)] == data.decode().splitlines()


def test_rerank_names_a_bad_record_and_what_rerank_takes(tiny, tmp_path):
    """rerank's error suggested --skip-bad, which rerank does not take."""
    (tmp_path / "docs.jsonl").write_text('{"text": "fine"}\n{broken\n')
    with pytest.raises(SystemExit) as exit:
        main(["rerank", "--model", str(tiny[0]), "--query", "q", "--input", str(tmp_path / "docs.jsonl")])
    message = str(exit.value.code)
    assert message.startswith("qwen3-embed: error: docs.jsonl:2: not valid JSON") and "--skip-bad" not in message
    assert "fix or remove that record of --input" in message and "--text-field" in message and "--document" in message


def test_a_long_line_is_never_held_whole(tmp_path):
    """A 535 MB line in a 520 KB gzip peaked at 2.16 GB: the encoder read it whole before cutting its text. A text line
    is read to one character past what can fit (a character cut in two at the edge dropped), a JSON line too long for
    any record that fits is refused by file and line, and the lines after either are read as usual."""
    import tracemalloc

    line = ("a" * 4009 + "é" + "word " * 20_000_000).encode()  # 100 MB
    (tmp_path / "in.txt.gz").write_bytes(gzip.compress(b"first\n" + line + b"\nlast\n", 1))
    json_line = json.dumps({"text": "word " * 4_000_000}).encode()  # 20 MB
    (tmp_path / "in.jsonl").write_bytes(b'{"text": "first"}\n' + json_line + b'\n{"text": "last"}\n')
    for name, max_chars in [("in.txt.gz", 1001), ("in.jsonl", 1000)]:
        tracemalloc.start()
        records = list(read_records(resolve_inputs(tmp_path / name).files[0], positions=True, max_chars=max_chars))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 30 << 20, (name, peak)  # the gzip reader's buffers and the last line's block, not the line
        assert [r.text for r in (records[0], records[2])] == ["first", "last"]
        if name == "in.txt.gz":  # 4 x 1002 + 2 bytes, less the half of "é" at byte 4010
            assert isinstance(records[1], Record) and records[1].text == "a" * 4009
        else:
            assert isinstance(records[1], inputs.LongRecord) and str(records[1]) == (
                "in.jsonl:2: a JSON line of more than 1,060,588 bytes, longer than any record whose text can fit "
                "(1,000 characters of at most 12 bytes each, and 1,048,576 bytes of other fields); it was not read"
            )
    assert [r.text for r in read_records(resolve_inputs(tmp_path / "in.jsonl").files[0], positions=True)][1] == (
        "word " * 4_000_000
    )  # without max_chars, read whole
    exact = b'{"text": "' + b"w" * (1_060_588 - 12) + b'"}'  # the limit's own length, with a CRLF: read
    (tmp_path / "exact.jsonl").write_bytes(exact + b"\r\n" + exact[:-1] + b'w"}\n')
    exact_records = list(
        read_records(resolve_inputs(tmp_path / "exact.jsonl").files[0], positions=True, max_chars=1000)
    )
    assert isinstance(exact_records[0], Record) and isinstance(exact_records[1], inputs.LongRecord)


def test_a_compression_that_is_not_read_is_named(tmp_path):
    """A .bz2 or .xz input was refused as 'not valid UTF-8' at its first line."""
    import bz2
    import lzma
    import zipfile

    (tmp_path / "in.txt.bz2").write_bytes(bz2.compress(b"one\ntwo\n"))
    (tmp_path / "in.txt.xz").write_bytes(lzma.compress(b"one\ntwo\n"))
    with zipfile.ZipFile(tmp_path / "in.zip", "w") as z:
        z.writestr("in.txt", "one\n")
    (tmp_path / "in.lzma").write_bytes(lzma.compress(b"one\ntwo\n", format=lzma.FORMAT_ALONE))
    (tmp_path / "in.lz4").write_bytes(b"\x04\x22\x4d\x18\x64\x40\xa7 one\n")  # an LZ4 frame's header
    (tmp_path / "empty.zip").write_bytes(b"PK\x05\x06" + bytes(18))
    (tmp_path / "BZh.txt").write_text("BZh9 is a word, not bzip2 without its block's magic\n")
    for name, kind in [("in.txt.bz2", "bzip2"), ("in.txt.xz", "xz"), ("in.zip", "zip"), ("in.lzma", "lzma"),
                       ("in.lz4", "lz4"), ("empty.zip", "zip")]:  # fmt: skip
        with pytest.raises(ValueError, match=rf"^input {re.escape(name)} is {kind}-compressed, which is not read; "):
            resolve_inputs(tmp_path / name)
    assert [r.text for r in read_records(resolve_inputs(tmp_path / "BZh.txt").files[0], positions=True)] == [
        "BZh9 is a word, not bzip2 without its block's magic"
    ]


def test_a_huge_integer_or_deep_nesting_is_a_bad_record_named_by_file_and_line(tiny, tmp_path, capsys):
    """An integer of more than 4300 digits in any field (one never read, or the id) aborted encode even with
    --skip-bad, and rerank, with Python's 'Exceeds the limit (4300 digits) ... use sys.set_int_max_str_digits()'
    naming no file or line; nesting too deep for json was a RecursionError 'this looks like a bug'. Each is a bad
    record, the first record too (which the field check reads before the model loads)."""
    from qwen3_embed.corpus import load_corpus

    digits, deep = "9" * 5000, "[" * 100_000 + "]" * 100_000
    lines = [f'{{"text": "a", "id": "k1", "extra": {digits}}}', '{"text": "b", "id": "k2"}',
             f'{{"text": "c", "id": {digits}}}', f'{{"text": "d", "id": "k4", "n": {deep}}}',
             '{"text": "e", "id": "k5"}']  # fmt: skip
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    huge = r"in.jsonl:{}: holds an integer of more than 4,300 digits, not read \(write it as a string\)"
    args = ["encode", "--model", str(tiny[0]), "--input", str(tmp_path / "in.jsonl"), "--id-field", "id"]
    with pytest.raises(SystemExit) as exit:
        main([*args, "--output", str(tmp_path / "refused.npy")])
    assert re.fullmatch("qwen3-embed: error: " + huge.format(1) + "; fix it, or skip such records .*", exit.value.code)
    capsys.readouterr()
    for output in ("out.npy", "out"):
        main([*args, "--output", str(tmp_path / output), "--skip-bad"])
        err = capsys.readouterr().err
        assert re.search(r"skipped 3 bad record\(s\):\n  " + huge.format(1) + r"\n  " + huge.format(3), err), err
        assert "in.jsonl:4: holds arrays or objects nested too deeply to read" in err and "sys.set_int" not in err
    assert json.loads((tmp_path / "out.ids.json").read_text()) == ["k2", "k5"] == load_corpus(tmp_path / "out")[1]
    with pytest.raises(SystemExit) as exit:
        main(["rerank", "--model", str(tiny[0]), "--query", "q", "--input", str(tmp_path / "in.jsonl")])
    assert re.match("qwen3-embed: error: " + huge.format(1) + "; fix or remove that record of --input", exit.value.code)


def test_a_damaged_parquet_file_is_an_error_naming_it(tiny, tmp_path):
    """A cut-short or corrupt Parquet file gave pyarrow's 'Parquet magic bytes not found in footer' or 'Corrupt
    snappy compressed data', naming no file, in encode and in rerank --input."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    texts = [f"text number {i} " * 5 for i in range(3000)]
    pq.write_table(pa.table({"text": texts}), tmp_path / "whole.parquet", row_group_size=1000, compression="snappy")
    data = (tmp_path / "whole.parquet").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2])  # no footer
    corrupt = bytearray(data)
    corrupt[2000:2400] = bytes(b ^ 0x55 for b in corrupt[2000:2400])  # inside the first row group's pages
    (tmp_path / "corrupt.parquet").write_bytes(bytes(corrupt))
    model = ["--model", str(tiny[0]), "--input"]
    for name in ("cut.parquet", "corrupt.parquet"):
        path = str(tmp_path / name)
        for command in (["encode", *model, path, "--output", str(tmp_path / "out.npy")],
                        ["encode", *model, path, "--output", str(tmp_path / "out")],
                        ["rerank", *model, path, "--query", "q"]):  # fmt: skip
            with pytest.raises(SystemExit) as exit:
                main(command)
            assert re.fullmatch(rf"qwen3-embed: error: input {name} is a damaged Parquet file \(.+\); replace it with "
                                "a complete, intact copy", exit.value.code), exit.value.code  # fmt: skip
    assert not (tmp_path / "out.npy").exists() and not list((tmp_path / "out").glob("*.json"))
