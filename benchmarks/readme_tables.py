"""The README's tables, generated from benchmarks/results/: so that no number in a table can differ from its results
file, or go stale when a benchmark is rerun.

Each generated table sits between two markers in README.md:

    <!-- table: results/server-cpu.md -->          (or results/search-cpu-1threads.md#2: the file's second table)
    ...
    <!-- end table -->

and is replaced by a line naming the machine, from the results file's JSON twin (results/server-cpu.json), then the
table as the results file holds it.

    python benchmarks/readme_tables.py            # rewrite README.md's tables
    python benchmarks/readme_tables.py --check    # exit 1, naming the stale tables, when README.md differs
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from common import ROOT, describe

BENCHMARKS = ROOT / "benchmarks"
MARKED = re.compile(r"(?P<open><!-- table: (?P<source>[^\s#]+)(?:#(?P<index>\d+))? -->\n)(?P<body>.*?)"
                    r"(?P<close><!-- end table -->)", re.S)  # fmt: skip


def tables(markdown: str) -> list[str]:
    """The markdown tables of a text: each run of consecutive lines that start with `|`."""
    found, current = [], []
    for line in markdown.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            found.append("\n".join(current))
            current = []
    return found


def machine_line(results: dict, source: str) -> str:
    """The line above a generated table: the machine it was measured on, and where the figures are."""
    m = results.get("machine")
    if m is None:
        raise ValueError(f"{source} names no machine: rerun its benchmark, which records it")
    if "cpu_float32_matmul_gflops" not in m and "float32_matmul_gflops" in results:
        m = {**m, "cpu_float32_matmul_gflops": results["float32_matmul_gflops"]}  # measured in the same run
    where = describe(m) + ("" if "cpu_float32_matmul_gflops" in m else ", matmul peak not recorded")
    return f"Machine: {where}; `benchmarks/{source}`."


def generated(source: str, index: int = 1) -> str:
    """What a marker's body becomes: the machine line, a blank line, and table `index` (from 1) of `source`."""
    path = BENCHMARKS / source
    if not path.exists():
        raise ValueError(f"README marker names {source}, which is not in benchmarks/: run its benchmark first")
    found = tables(path.read_text(encoding="utf-8"))
    if not 1 <= index <= len(found):
        raise ValueError(f"README marker asks for table {index} of {source}, which holds {len(found)}")
    twin = path.with_suffix(".json")
    if not twin.exists():
        raise ValueError(f"{source} has no {twin.name} beside it to name its machine: rerun its benchmark")
    results = json.loads(twin.read_text(encoding="utf-8"))
    return f"{machine_line(results, twin.relative_to(BENCHMARKS).as_posix())}\n\n{found[index - 1]}\n"


def rewrite(readme: str) -> tuple[str, list[str]]:
    """The README with every marked table regenerated, and the markers whose tables changed."""
    stale = []

    def replace(match: re.Match) -> str:
        body = generated(match["source"], int(match["index"] or 1))
        if body != match["body"]:
            stale.append(match["open"].strip())
        return match["open"] + body + match["close"]

    return MARKED.sub(replace, readme), stale


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("readme", nargs="?", type=Path, default=ROOT / "README.md")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 when a table differs")
    args = p.parse_args()
    text = args.readme.read_text(encoding="utf-8")
    try:
        new, stale = rewrite(text)
    except ValueError as e:
        sys.exit(f"{args.readme}: {e}")
    if args.check:
        if stale:
            sys.exit(f"{args.readme}: these tables differ from their results files (run benchmarks/readme_tables.py):"
                     "\n  " + "\n  ".join(stale))  # fmt: skip
        print(f"{args.readme}: every generated table matches its results file")
        return
    args.readme.write_text(new, encoding="utf-8")
    print(f"{args.readme}: {len(stale)} table(s) rewritten" + "".join(f"\n  {s}" for s in stale))


if __name__ == "__main__":
    main()
