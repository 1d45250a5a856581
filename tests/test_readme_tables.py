"""The README's tables are generated from benchmarks/results/ by benchmarks/readme_tables.py: the README holds
exactly what the results files hold, a stale table is found and rewritten, and no table of figures is written by
hand."""

from __future__ import annotations

import subprocess
import sys

from checkpoints import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import readme_tables  # noqa: E402

# Tables that document the code rather than measure it.
DOCUMENTATION = {"| flag | default | what |", "| status | when |", "| sentence-transformers | here |"}


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "benchmarks/readme_tables.py", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def test_the_readme_tables_equal_their_results_files():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    new, stale = readme_tables.rewrite(text)
    assert not stale, f"run `python benchmarks/readme_tables.py`: {stale}"
    assert new == text


def test_every_table_of_figures_in_the_readme_is_generated():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    generated = readme_tables.MARKED.findall(text)
    assert len(generated) >= 10
    by_hand = readme_tables.MARKED.sub("", text)
    headers = {table.splitlines()[0] for table in readme_tables.tables(by_hand)}
    assert headers <= DOCUMENTATION, headers - DOCUMENTATION


def test_every_generated_table_names_its_machine():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    for match in readme_tables.MARKED.finditer(text):
        first = match["body"].splitlines()[0]
        assert first.startswith("Machine: ") and " thread" in first and "torch " in first, first


def test_a_stale_number_is_found_and_rewritten(tmp_path):
    original = (REPO / "README.md").read_text(encoding="utf-8")
    match = next(readme_tables.MARKED.finditer(original))
    row = match["body"].splitlines()[-1]
    stale = original.replace(row, row.replace("|", "| 9.99 |", 1), 1)
    readme = tmp_path / "README.md"
    readme.write_text(stale, encoding="utf-8")
    checked = run_script(str(readme), "--check")
    assert checked.returncode == 1 and match["open"].strip() in checked.stderr, checked.stderr
    assert readme.read_text(encoding="utf-8") == stale  # --check changes nothing
    assert run_script(str(readme)).returncode == 0
    assert readme.read_text(encoding="utf-8") == original
    assert run_script(str(readme), "--check").returncode == 0


def test_a_marker_without_its_results_file_is_an_error_that_says_what_to_do(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("<!-- table: results/nothing-here.md -->\n<!-- end table -->\n", encoding="utf-8")
    done = run_script(str(readme), "--check")
    assert done.returncode == 1
    assert "results/nothing-here.md, which is not in benchmarks/: run its benchmark first" in done.stderr
