"""The server's limits under abuse, as measured: runs tests/test_server_limits.py (each attack over real HTTP against
a server the test starts), and gathers the figure each test asserts beside its bound (recorded with pytest's
record_property, read from its JUnit XML). The README's limits table is this file's last run. Run it on a quiet
machine: the figures are seconds and memory of a server sharing the CPU with its attackers.

    python benchmarks/limits.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

from common import ROOT, machine, markdown_table, write_results


def figures(junit_xml: Path) -> list[dict]:
    """Each recorded figure of a JUnit XML report: the test, what was measured, the measure, the test's bound."""
    found = []
    for case in ET.parse(junit_xml).getroot().iter("testcase"):
        for prop in case.iter("property"):
            found.append({"test": case.get("name"), "what": prop.get("name"), **json.loads(prop.get("value"))})
    return found


def measure() -> list[dict]:
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "limits.xml"
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
                   "tests/test_server_limits.py"]  # fmt: skip
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"the limit tests failed, so their figures are not recorded:\n{done.stdout[-3000:]}")
        return figures(report)


def row(figure: dict) -> str:
    precision = 0 if figure["unit"] == "bytes" else 2
    measured, bound = f"{figure['measured']:,.{precision}f}", f"{figure['bound']:,.4g}"
    return f"| {figure['what']} | {measured} {figure['unit']} | under {bound} {figure['unit']} |"


def main() -> None:
    results = {"machine": machine(), "figures": measure()}
    if not results["figures"]:
        sys.exit("the limit tests recorded no figure: is record_property still called?")
    table = markdown_table(
        "The server under abuse: each figure from the test of tests/test_server_limits.py that asserts its bound",
        ["attack and figure", "measured", "the test's bound"],
        [row(figure) for figure in results["figures"]],
    )
    print("\n" + table)
    write_results("limits-cpu", results, table)


if __name__ == "__main__":
    main()
