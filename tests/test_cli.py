"""The qwen3-embed command, run in-process on a tiny checkpoint."""

from __future__ import annotations

import io
import json
import re
import sys

import numpy as np
import pytest
import torch

from qwen3_embed.cli import main
from qwen3_embed.cli.similarity import CARD_DOCUMENTS, CARD_QUERIES
from qwen3_embed.corpus import load_corpus
from qwen3_embed.pipeline import DEFAULT_INSTRUCTION


def test_similarity_prints_the_card_example_scores(tiny, embedder, capsys):
    main(["similarity", "--model", str(tiny[0]), "--device", "cpu"])
    out = capsys.readouterr().out
    assert CARD_QUERIES[0] in out and CARD_DOCUMENTS[1] in out
    rows = [line.split()[1:] for line in out.splitlines() if re.match(r"q\d +-?\d", line)]
    printed = torch.tensor([[float(x) for x in row] for row in rows])
    expected = embedder.similarity(
        embedder.encode(CARD_QUERIES, instruction=DEFAULT_INSTRUCTION), embedder.encode(CARD_DOCUMENTS)
    )
    assert printed.shape == (2, 2)
    torch.testing.assert_close(printed, expected, rtol=0, atol=6e-5)


def test_similarity_with_given_texts_and_dim(tiny, embedder, capsys):
    args = ["--query", "q one", "--document", "d one", "--document", "d two", "--instruction", "", "--dim", "8"]
    main(["similarity", "--model", str(tiny[0]), *args])
    rows = [line.split()[1:] for line in capsys.readouterr().out.splitlines() if re.match(r"q\d +-?\d", line)]
    expected = embedder.similarity(embedder.encode(["q one"], dim=8), embedder.encode(["d one", "d two"], dim=8))
    torch.testing.assert_close(torch.tensor([[float(x) for x in r] for r in rows]), expected, rtol=0, atol=6e-5)


def encode(tiny, *args: str) -> None:
    main(["encode", "--model", str(tiny[0]), *args])


@pytest.mark.parametrize("kind", ["txt", "jsonl"])
def test_encode_writes_one_row_per_text(tiny, embedder, tmp_path, kind):
    texts = ["first line", "", "third, with 中文"]
    source = tmp_path / f"in.{kind}"
    if kind == "txt":
        source.write_text("\n".join(texts) + "\n", encoding="utf-8")
    else:
        source.write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(texts)), encoding="utf-8")
    encode(tiny, "--input", str(source), "--output", str(tmp_path / "new" / "out.npy"), "--dim", "16")  # folder made
    vectors = np.load(tmp_path / "new" / "out.npy")
    assert vectors.shape == (3, 16) and vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, embedder.encode(texts, dim=16).numpy(), rtol=0, atol=1e-6)
    assert not (tmp_path / "new" / "out.ids.json").exists()  # the ids are the positions 0..2


def test_encode_into_one_file_keeps_the_ids(tiny, embedder, tmp_path, capsys):
    """--id-field, and the positions of the records kept when bad ones are skipped, go beside the vectors."""
    source = tmp_path / "in.NDJSON"  # JSON lines by its suffix, in any case
    source.write_text('{"text": "a", "id": "x"}\n{broken\n{"text": "b", "id": "y"}\n')
    encode(tiny, "--input", str(source), "--output", str(tmp_path / "v.safetensors"), "--id-field", "id", "--skip-bad")
    from safetensors.numpy import load_file

    assert (tmp_path / "v.safetensors").is_file()  # one file, not a folder of that name
    vectors = load_file(str(tmp_path / "v.safetensors"))["vectors"]
    np.testing.assert_allclose(vectors, embedder.encode(["a", "b"]).numpy(), rtol=0, atol=1e-6)
    assert json.loads((tmp_path / "v.ids.json").read_text()) == ["x", "y"]
    err = capsys.readouterr().err
    assert "in.NDJSON:2: not valid JSON" in err and "their ids to" in err
    encode(tiny, "--input", str(source), "--output", str(tmp_path / "w.npy"), "--skip-bad")
    assert json.loads((tmp_path / "w.ids.json").read_text()) == [0, 2]  # which records the rows are


def test_blank_lines_of_json_lines_hold_no_record(tiny, embedder, tmp_path):
    """A blank line (a trailing one, as editors leave) is no record and no error; the ids stay line positions, for
    one file and for shards alike."""
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "a"}\n\n  \n{"text": "b"}\n\n')
    encode(tiny, "--input", str(source), "--output", str(tmp_path / "v.npy"))
    np.testing.assert_allclose(np.load(tmp_path / "v.npy"), embedder.encode(["a", "b"]).numpy(), rtol=0, atol=1e-6)
    assert json.loads((tmp_path / "v.ids.json").read_text()) == [0, 3]
    encode(tiny, "--input", str(source), "--output", str(tmp_path / "shards"))
    vectors, ids = load_corpus(tmp_path / "shards")
    assert ids == [0, 3] and vectors.shape[0] == 2


def test_encode_reads_standard_input_and_a_prompt_name(tiny, embedder, tmp_path, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"one\ntwo\n")))
    encode(tiny, "--input", "-", "--output", str(tmp_path / "v.npy"), "--prompt-name", "query")
    expected = embedder.encode(["one", "two"], prompt_name="query").numpy()
    np.testing.assert_allclose(np.load(tmp_path / "v.npy"), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--input", "{missing}", "--output", "{out}"], r"input .*missing does not exist \(give a file, a folder"),
        (["--input", "{txt}", "--output", "{out}", "--text-field", "body"],
         r"--text-field applies to JSON lines and Parquet, but .*in.txt holds text lines .*; drop it"),
        (["--input", "{txt}", "--output", "{out}.npy", "--chunk-size", "5"],
         r"--chunk-size applies to a folder of shards, but --output .*out.npy is one file .*; drop it, or give"),
        (["--input", "{txt}", "--output", "{out}.npy", "--vector-format", "npy"], r"--vector-format applies to"),
        (["--input", "-", "--output", "{out}"], r"--input - \(standard input\) can be encoded only into one file"),
        (["--input", "{txt}", "--output", "{txt}"], r"output .*in.txt is a file; give a folder for the shards"),
        (["--input", "{txt}", "--output", "{out}", "--workers", "2"], r"--workers .* applies only with --engine ray"),
        (["--input", "{txt}", "--output", "{out}", "--format", "parquet"], r"in.txt is not a Parquet file"),
        (["--input", "{txt}", "--output", "{dir}.npy"], r"output .*.npy is a folder; give a file name ending in .npy"),
        (["--input", "{tmp}", "--output", "{out}"], r"output .*out is inside the input folder .*; put the output"),
        (["--input", "{txt}", "--output", "{out}.npy", "--device", "gpu"], r"device 'gpu' is not a device name"),
        (["--input", "{txt}", "--output", "{out}", "--precision", "int8", "--calibration", "{txt}"],
         r"--calibration .*in.txt is not a .npy array of vectors \(.*\); save one with numpy.save"),
        (["--input", "{txt}", "--output", "{txt}/x.npy"], r"cannot write --output .*in.txt/x.npy \(.*in.txt: a file "
         r"is in the way\); choose another place"),
    ],
)  # fmt: skip
def test_encode_checks_everything_before_the_model_loads(tmp_path, capsys, args, message):
    """Each mistake is one line naming it and the fix; the model (here a folder that does not exist) is never
    reached, and no output folder is left behind."""
    (tmp_path / "in.txt").write_text("a\nb\n")
    (tmp_path / "d.npy").mkdir()
    paths = dict(missing=tmp_path / "missing", out=tmp_path / "out", txt=tmp_path / "in.txt", dir=tmp_path / "d")
    paths["tmp"] = tmp_path
    args = [a.format(**paths) for a in args]
    with pytest.raises(SystemExit) as exit:
        main(["encode", "--model", str(tmp_path / "no-model"), *args])
    assert re.search(message, str(exit.value)) and "Traceback" not in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_parquet_without_pyarrow_names_the_extra_before_the_model_loads(tmp_path, monkeypatch):
    (tmp_path / "in.parquet").write_bytes(b"PAR1 not really")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(SystemExit, match=r"reading Parquet needs pyarrow.*pip install 'qwen3-embed-triton\[parquet\]'"):
        main(
            ["encode", "--model", str(tmp_path / "no-model"), "--input", str(tmp_path), "--output", str(tmp_path / "o")]
        )


def test_verify_checks_a_folder_without_a_model(tiny, tmp_path, capsys):
    source = tmp_path / "in.txt"
    source.write_text("\n".join(f"text {i}" for i in range(12)))
    encode(tiny, "--input", str(source), "--output", str(tmp_path / "out"), "--chunk-size", "5")
    main(["verify", str(tmp_path / "out")])
    assert "3 shard(s), 12 vectors of 96 dimensions: sound (sizes, counts, dtypes and shapes, sha256" in (
        capsys.readouterr().err
    )
    (tmp_path / "out" / "shard-00001.ids.json").write_text("[1,2,3]")
    with pytest.raises(SystemExit, match=r"1 problem\(s\):\n  shard-00001: shard-00001.ids.json has 7 bytes") as exit:
        main(["verify", str(tmp_path / "out")])
    assert "rerun the encode command that wrote it" in str(exit.value)


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", r"in.jsonl:2: not valid JSON"),
        ('{"txt": "x"}', r'in.jsonl:2: no "text" field \(its fields: txt\)'),
        ('{"text": 5}', r'in.jsonl:2: "text" is the number 5, not a string'),
    ],
)
def test_encode_names_the_bad_line(tiny, tmp_path, line, message, capsys):
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "ok"}\n' + line + '\n{"text": "ok"}\n')
    with pytest.raises(SystemExit) as exit:
        main(["encode", "--model", str(tiny[0]), "--input", str(source), "--output", str(tmp_path / "o.npy")])
    assert re.search(message + ".*; fix it, or skip such records .* with --skip-bad", str(exit.value))


def test_bad_model_is_a_clean_error(tmp_path):
    with pytest.raises(SystemExit, match="qwen3-embed: error: .* is not a checkpoint folder"):
        main(["similarity", "--model", str(tmp_path / "missing")])


@pytest.fixture
def no_loading(monkeypatch):
    """Loading any weights fails the test: for checks that must come before the model loads."""

    def fail(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr("qwen3_embed.pipeline.load_model", fail)


def error_of(argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit:
        main(argv)
    return str(exit.value)


def test_an_output_folder_that_cannot_be_written_is_named_before_the_model_loads(tiny, no_loading, tmp_path):
    (tmp_path / "in.txt").write_text("a\nb\n")
    argv = ["encode", "--model", str(tiny[0]), "--input", str(tmp_path / "in.txt"), "--output", "/proc/qwen3-shards"]
    assert re.search(r"^qwen3-embed: error: cannot write --output /proc/qwen3-shards \(.*\); choose", error_of(argv))


@pytest.fixture(scope="module")
def reranker_folder(tmp_path_factory):
    from checkpoints import TINY_SHAPES, make_reranker_checkpoint

    folder = tmp_path_factory.mktemp("cli-reranker")
    make_reranker_checkpoint(folder, TINY_SHAPES["gqa2"], tied=True)
    return folder


@pytest.mark.parametrize(
    "argv, message",
    [
        (["similarity", "--dim", "5000"], "--dim=5000 is outside 1..96, the model's hidden size"),
        (["similarity", "--max-length", "1"], "--max-length=1 is outside 2..32768"),
        (["similarity", "--device", "gpu"], "device 'gpu' is not a device name; use 'cpu', 'cuda' or 'cuda:N'"),
        (["rerank", "--query", "q"], "no documents: give them with --document TEXT .* or --input FILE"),
        (["rerank", "--query", "q", "--document", "d", "--input", "x"], "--document or with --input FILE, not both"),
        (["rerank", "--query", "q", "--document", "d", "--id-field", "id"], "--id-field say how to read an --input"),
        (["rerank", "--query", "q", "--input", "missing.txt"], "input missing.txt does not exist"),
        (["rerank", "--query", "q", "--document", "d", "--top-k", "0"], "--top-k=0 must be at least 1"),
        (["rerank", "--query", "q", "--document", "d", "--max-length", "40000"], "--max-length=40000 is outside 2"),
        (["similarity", "--batch-tokens", "0"], "--batch-tokens=0 must be at least 1"),
        (
            ["encode", "--input", "README.md", "--output", "shards/", "--chunk-size", "0"],
            "--chunk-size=0 must be at least",
        ),
    ],
)
def test_bad_options_are_named_before_the_model_loads(tiny, no_loading, argv, message):
    assert re.search(f"^qwen3-embed: error: .*{message}", error_of([*argv, "--model", str(tiny[0])]))


def test_cuda_on_a_machine_without_one(tiny, no_loading):
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    message = error_of(["similarity", "--model", str(tiny[0]), "--device", "cuda"])
    assert "torch sees no CUDA GPU here" in message and "use device 'cpu'" in message


def test_a_checkpoint_of_the_other_kind(tiny, reranker_folder, capsys):
    """Said with the commands' flags (it said: load it with Reranker.from_pretrained, or pass check_kind=False)."""
    message = error_of(["rerank", "--model", str(tiny[0]), "--query", "q", "--document", "d"])
    assert message.startswith(f"qwen3-embed: error: {tiny[0]} looks like a Qwen3-Embedding checkpoint")
    assert message.endswith(": give it as the --model of similarity, encode, search or serve, or pass --ignore-kind "
                            "to load it anyway")  # fmt: skip
    message = error_of(["similarity", "--model", str(reranker_folder)])
    assert message.endswith(": give it as the --model of rerank, or the --reranker of search or serve, or pass "
                            "--ignore-kind to load it anyway")  # fmt: skip
    main(["rerank", "--model", str(tiny[0]), "--query", "q", "--document", "d", "--ignore-kind"])
    assert re.fullmatch(r"\d\.\d{4}  d0  d\n", capsys.readouterr().out)


def test_debug_shows_the_error_itself(tiny):
    with pytest.raises(ValueError, match="--dim=5000"):
        main(["similarity", "--model", str(tiny[0]), "--dim", "5000", "--debug"])


def test_ctrl_c_is_one_line(tiny, monkeypatch, capsys):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("qwen3_embed.embedder.Embedder.encode", interrupt)
    with pytest.raises(SystemExit) as exit:
        main(["similarity", "--model", str(tiny[0])])
    assert exit.value.code == 130 and capsys.readouterr().err == "qwen3-embed: interrupted\n"


def test_an_unexpected_error_says_it_is_a_bug(tiny, monkeypatch):
    def bug(*args, **kwargs):
        raise KeyError("oops")

    monkeypatch.setattr("qwen3_embed.embedder.Embedder.encode", bug)
    assert "KeyError: 'oops' (this looks like a bug: rerun with --debug" in error_of(
        ["similarity", "--model", str(tiny[0])]
    )


def test_similarity_json(tiny, embedder, capsys):
    main(["similarity", "--model", str(tiny[0]), "--json", "--query", "q", "--document", "a", "--document", "b"])
    printed = json.loads(capsys.readouterr().out)
    expected = embedder.similarity(embedder.encode(["q"], instruction=DEFAULT_INSTRUCTION), embedder.encode(["a", "b"]))
    assert printed["queries"] == ["q"] and printed["documents"] == ["a", "b"]
    torch.testing.assert_close(torch.tensor(printed["scores"]), expected)


def test_rerank_a_file_as_json_with_ids(reranker_folder, tmp_path, capsys):
    from qwen3_embed import Reranker

    documents = ["The capital of China is Beijing.", "Gravity is a force.", "中文"]
    source = tmp_path / "docs.jsonl"
    source.write_text("\n".join(json.dumps({"body": d, "key": f"k{i}"}) for i, d in enumerate(documents)))
    argv = ["rerank", "--model", str(reranker_folder), "--query", "capital", "--input", str(source)]
    main([*argv, "--text-field", "body", "--id-field", "key", "--json", "--raw", "--top-k", "2"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    raw = Reranker.from_pretrained(reranker_folder).score("capital", documents, raw=True)
    best = raw.argsort(descending=True)[:2].tolist()
    assert [line["index"] for line in lines] == best and [line["rank"] for line in lines] == [1, 2]
    assert [line["id"] for line in lines] == [f"k{i}" for i in best]
    assert [line["document"] for line in lines] == [documents[i] for i in best]
    torch.testing.assert_close(torch.tensor([line["score"] for line in lines]), raw[best])


def test_rerank_no_truncate_names_the_flags(reranker_folder):
    """The library's error says `raise max_length, or pass truncate=True`; the command's says it with flags."""
    argv = ["rerank", "--model", str(reranker_folder), "--query", "q", "--document", "word " * 200]
    message = error_of([*argv, "--max-length", "300", "--no-truncate"])
    assert "longer than --max-length=300" in message and "raise --max-length, or leave out --no-truncate" in message
    assert "truncate=" not in message and "max_length" not in message


def test_skipped_records_are_reported_one_by_one_in_flags(tiny, tmp_path, capsys):
    """--skip-bad's report said `max_length=64`, `pass truncate=True` and `indices 1` of a line's tokenizing call."""
    source = tmp_path / "in.txt"
    source.write_text("ok\n" + "word " * 100 + "\n" + "x" * 50_000 + "\nok\n")
    args = ["--model", str(tiny[0]), "--input", str(source), "--max-length", "16", "--no-truncate", "--skip-bad"]
    main(["encode", *args, "--output", str(tmp_path / "o.npy")])
    err = capsys.readouterr().err
    assert "qwen3-embed: warning: skipped 2 bad record(s):" in err and "wrote 2 vectors" in err
    flags = "shorten it, raise --max-length, or leave out --no-truncate"
    assert re.search(
        rf"\n  in.txt:2: its text is longer than --max-length=16 tokens \((at least )?\d+ tokens\); {flags}\n", err
    )
    many = r"\(more than \d+ characters, more than that many tokens can hold\)"
    assert re.search(rf"\n  in.txt:3: its text is longer than --max-length=16 tokens {many}; {flags}", err)
    assert "max_length" not in err and "truncate=" not in err and "indices" not in err


def test_truncation_warning_is_one_line_that_names_the_flag(tiny, capsys):
    main(["similarity", "--model", str(tiny[0]), "--max-length", "8", "--query", "gravity " * 30, "--document", "d",
          "--instruction", ""])  # fmt: skip
    err = capsys.readouterr().err
    assert re.fullmatch(r"qwen3-embed: warning: 1 of 1 text\(s\) were longer than --max-length=8 .*; pass "
                        r"--no-truncate to get an error instead\n", err)  # fmt: skip


def test_an_output_of_no_known_format_is_refused(tiny, no_loading, tmp_path):
    """--output out.csv is not taken for a folder of shards named out.csv; a folder whose name has a dot is one when
    it ends with / (or exists)."""
    (tmp_path / "in.txt").write_text("a\nb\n")
    argv = ["encode", "--model", str(tiny[0]), "--input", str(tmp_path / "in.txt"), "--output"]
    message = error_of([*argv, str(tmp_path / "out.csv")])
    assert re.search(r"--output .*out.csv: encode writes no .csv files; give FILE.npy or FILE.safetensors", message)
    assert not (tmp_path / "out.csv").exists()
    assert "the model was loaded" in error_of([*argv, str(tmp_path / "shards.v2") + "/"])  # past every check


def test_rerank_takes_format_as_encode_does(tiny, reranker_folder, tmp_path, capsys):
    """The advice to force the format with --format applies to rerank too (it had no --format)."""
    source = tmp_path / "in.txt"
    source.write_text('{"t": "first", "k": "a"}\n{"t": "second", "k": "b"}\n')
    argv = ["rerank", "--model", str(reranker_folder), "--query", "q", "--input", str(source), "--text-field", "t"]
    assert error_of(argv).endswith("holds text lines (one text per line, ids are positions); drop it, or force the "
                                   "format with --format jsonl")  # fmt: skip
    main([*argv, "--format", "jsonl", "--id-field", "k", "--json"])
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted((line["id"], line["document"]) for line in printed) == [("a", "first"), ("b", "second")]
    assert "--format, --text-field and --id-field say how to read an --input file" in error_of(
        ["rerank", "--model", str(reranker_folder), "--query", "q", "--document", "d", "--format", "jsonl"]
    )


@pytest.mark.parametrize(
    "argv, named",
    [
        (["similarity", "--query", "a\udcffb"], "--query 'a\\udcffb'"),
        (["similarity", "--document", "ok", "--document", "a\udcffb"], "--document 'a\\udcffb'"),
        (["similarity", "--instruction", "a\udcffb"], "--instruction"),
        (["rerank", "--query", "a\udcffb", "--document", "d"], "--query"),
        (["rerank", "--query", "q", "--document", "a\udcffb"], "--document 'a\\udcffb'"),
        (["rerank", "--query", "q", "--document", "d", "--instruction", "a\udcffb"], "--instruction"),
        (["encode", "--input", "README.md", "--output", "o.npy", "--instruction", "a\udcffb"], "--instruction"),
    ],
)
def test_a_text_flag_of_bytes_that_are_not_utf8_is_named_at_its_place(tiny, no_loading, argv, named):
    """As `search --query` does (test_search_cli.py): the flag, and the place in what was typed, before the model
    loads (it was "text 0 ... at character 92", counted in the prompt the text was formatted into)."""
    assert error_of([*argv, "--model", str(tiny[0])]) == (
        f"qwen3-embed: error: {named} is not valid Unicode: it holds the lone surrogate U+DCFF at character 1 (bytes "
        "that are not UTF-8?)"
    )


@pytest.mark.parametrize("value, kind", [("null", "null"), ("1.5", "the number 1.5"), ("true", "true")])
def test_an_id_of_the_wrong_type_is_named_in_the_files_words(tiny, no_loading, tmp_path, value, kind):
    """It was Python's type name: '"id" is NoneType', 'is float', 'is bool'."""
    source = tmp_path / "in.jsonl"
    source.write_text(f'{{"text": "a", "id": {value}}}\n')
    said = f'in.jsonl:1: "id" is {kind}; an id is a string or an integer; '
    given = ["--model", str(tiny[0]), "--input", str(source), "--id-field", "id"]
    assert said in error_of(["encode", *given, "--output", str(tmp_path / "o.npy")])
    assert said in error_of(["rerank", *given, "--query", "q"])


def test_help_shows_defaults_and_version(capsys):
    with pytest.raises(SystemExit):
        main(["encode", "--help"])
    assert "(default: Qwen/Qwen3-Embedding-0.6B)" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit):
        main(["--version"])
    assert re.fullmatch(r"qwen3-embed \d+\.\d+\.\d+\n", capsys.readouterr().out)


def test_python_dash_m(tmp_path):
    import subprocess
    import sys

    for module in ("qwen3_embed", "qwen3_embed.cli"):  # the second as torchrun launches it
        done = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True)
        assert done.returncode == 0 and done.stdout.startswith("qwen3-embed "), module


def test_a_prompt_that_leaves_a_text_little_room_is_warned_about_or_refused(tiny, capsys):
    """--max-length 10 with a query prompt of more tokens left each text a token or two, or none: every query got the
    same vector, with only the usual warning that texts were cut."""
    argv = ["similarity", "--model", str(tiny[0]), "--query", "gravity " * 5, "--document", "d"]
    main([*argv, "--instruction", "", "--max-length", "24"])
    assert "the prompt takes" not in capsys.readouterr().err
    main([*argv, "--max-length", "100"])  # the card's instruction: 69 tokens with the tests' tokenizer
    err = capsys.readouterr().err
    assert re.search(r"warning: the prompt takes 69 of --max-length=100 tokens, leaving 30 for each text with its "
                     r"EOS; raise --max-length\n", err), err  # fmt: skip
    with pytest.raises(SystemExit, match=r"error: the prompt takes 69 tokens, leaving no room for a text within "
                       r"--max-length=70: use --max-length of at least 71$"):  # fmt: skip
        main([*argv, "--max-length", "70"])


def test_encode_takes_ignore_kind(reranker_folder, tmp_path, capsys):
    """encode offered --ignore-kind (and its kind error advised it) but never passed it on: a reranker checkpoint was
    refused either way."""
    (tmp_path / "in.txt").write_text("a\nb\n")
    for output in ("o.npy", "shards"):
        args = ["encode", "--model", str(reranker_folder), "--input", str(tmp_path / "in.txt")]
        with pytest.raises(SystemExit, match="looks like a Qwen3-Reranker checkpoint.* or pass --ignore-kind"):
            main([*args, "--output", str(tmp_path / f"refused-{output}")])
        main([*args, "--output", str(tmp_path / output), "--ignore-kind"])
        assert "wrote 2 vectors" in capsys.readouterr().err


def test_a_refused_one_file_output_makes_no_folder(tiny, tmp_path):
    """encode --input gl --output gl/sub/v2.npy was refused (an output inside the input) but left gl/sub behind."""
    (tmp_path / "gl").mkdir()
    (tmp_path / "gl" / "a.txt").write_text("a\n")
    with pytest.raises(SystemExit, match="inside the input folder"):
        main(["encode", "--model", str(tiny[0]), "--input", str(tmp_path / "gl"), "--output",
              str(tmp_path / "gl" / "sub" / "v2.npy")])  # fmt: skip
    assert not (tmp_path / "gl" / "sub").exists()
