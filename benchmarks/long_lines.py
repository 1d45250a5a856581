"""Peak memory of `qwen3-embed encode` over a corpus with one very long line, against a file of two short ones.

A 2-layer random checkpoint of Qwen3's vocabulary (the real tokenizer, hidden size 32), max length 8192 (a character
cap of 4.19M). Each run is `qwen3-embed encode` in a process of its own, started from a small launcher (a process's
peak as its parent sees it starts at the peak of the process that started it), with and without `--no-truncate`:
- text: one 50 MB line of words (cut to the cap, or refused), and one of "7 7 7 ..." (a token a character: under the
  cap, it was tokenized whole until long texts were read in pieces as far as they can fit);
- gzip: one 535 MB line of one letter in a 520 KB `.txt.gz` (the attacker's file: it once peaked at 2.16 GB);
- JSON lines: one 60 MB record, too long for any record whose text fits (refused unread either way).

    python benchmarks/long_lines.py
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, SHARED_TOKENIZER, machine, markdown_table, write_results

sys.path.insert(0, str(ROOT / "tests"))
from checkpoints import encode_peak, make_checkpoint  # noqa: E402  (the tests' way to measure a child's peak)

SHAPE = (151669, 32, 2, 4, 2, 8, 64)  # the real vocabulary, a tiny body


def words(n: int) -> str:
    """`n` characters of random lowercase words."""
    rng = random.Random(0)
    vocabulary = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(1, 10))) for _ in range(10_000)]
    block = " ".join(rng.choices(vocabulary, k=200_000)) + " "
    return (block * (n // len(block) + 1))[:n]


def write_inputs(folder: Path) -> dict[str, Path]:
    inputs = {
        "two short lines": folder / "small.txt",
        "one 50 MB line of words": folder / "long.txt",
        'one 50 MB line of "7 7 7 ..."': folder / "digits.txt",
        "one 535 MB line in a 520 KB .txt.gz": folder / "long.txt.gz",
        "one 60 MB JSON line": folder / "long.jsonl",
    }
    inputs["two short lines"].write_text("short one\nshort two\n")
    inputs["one 50 MB line of words"].write_text("short one\n" + words(50_000_000) + "\n")
    inputs['one 50 MB line of "7 7 7 ..."'].write_text("short one\n" + "7 " * 25_000_000 + "\n")
    inputs["one 535 MB line in a 520 KB .txt.gz"].write_bytes(
        gzip.compress(b"short one\n" + b"a" * 535_000_000 + b"\n", 9)
    )
    record = json.dumps({"text": words(60_000_000)})
    inputs["one 60 MB JSON line"].write_text(json.dumps({"text": "short one"}) + "\n" + record + "\n")
    return inputs


def peak(model: Path, path: Path, output: Path, *flags: str) -> dict:
    """Exit code, peak resident MiB, seconds and the last line of stderr of one encode run."""
    start = time.perf_counter()
    code, said, mib = encode_peak("--model", str(model), "--input", str(path), "--output", str(output), *flags)
    seconds = time.perf_counter() - start
    return {"code": code, "peak_mib": mib, "seconds": seconds, "said": said.strip().splitlines()[-1]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", type=Path, default=SHARED_TOKENIZER)
    args = p.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        make_checkpoint(folder / "model", SHAPE, tokenizer=args.tokenizer)
        for name, path in write_inputs(folder).items():
            for flags in ([], ["--no-truncate"]) if name != "two short lines" else ([],):
                run = peak(folder / "model", path, folder / f"out-{len(runs)}", *flags)
                runs.append({"input": name, "flags": flags, **run})
                print(runs[-1])
    baseline = runs[0]["peak_mib"]
    rows = [
        f"| {r['input']} | {' '.join(r['flags']) or '-'} | {'written' if r['code'] == 0 else 'refused'} | "
        f"{r['peak_mib']:,.0f} MiB | {r['peak_mib'] - baseline:+,.0f} MiB | {r['seconds']:.0f} s |"
        for r in runs
    ]
    table = markdown_table(
        "`qwen3-embed encode` over one very long line (a 2-layer random checkpoint of Qwen3's vocabulary, max length "
        "8192), each run a process of its own; seconds include the process's start and the model's load:",
        ["input", "flags", "record", "peak memory", "above two short lines", "seconds"],
        rows,
    )
    print("\n" + table)
    write_results("long-lines-cpu", {"machine": machine(), "runs": runs}, table)


if __name__ == "__main__":
    main()
