"""How long the test suite takes: `python -m pytest` and `python -m pytest -m "not slow"`, each once, their wall
and CPU seconds (pytest and every process it starts) and what passed and was skipped. Run it on a quiet machine;
Triton's cache is recorded as found (warm: the second run on a machine; a cold one adds the compile gate's compiles).

    python benchmarks/suite_time.py
"""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, machine, markdown_table, write_results

COMMANDS = {"full": [], "not_slow": ["-m", "not slow"]}


def run(options: list[str]) -> dict:
    """One pytest run: wall and CPU seconds, and the counts of its summary line."""
    command = [sys.executable, "-m", "pytest", "-q", *options]
    cpu = lambda: sum(getattr(resource.getrusage(resource.RUSAGE_CHILDREN), f) for f in ("ru_utime", "ru_stime"))  # noqa: E731
    start, cpu_start = time.perf_counter(), cpu()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|skipped|failed|error)", done.stdout[-2000:])}
    return {"command": "python -m pytest" + "".join(f" {o!r}" if " " in o else f" {o}" for o in options),
            "wall_s": round(time.perf_counter() - start, 1), "cpu_s": round(cpu() - cpu_start, 1),
            "passed": counts.get("passed", 0), "skipped": counts.get("skipped", 0),
            "failed": counts.get("failed", 0) + counts.get("error", 0)}  # fmt: skip


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:.0f} s"


def table(results: dict) -> str:
    rows = [f"| `{r.get('command', 'python -m pytest')}` | {minutes(r['wall_s'])} | {minutes(r['cpu_s'])} | "
            f"{r['passed']} | {r['skipped']} |" for r in (results["full"], results["not_slow"])]  # fmt: skip
    return markdown_table(f"The test suite, Triton's cache {results['triton_cache']}:",
                          ["command", "wall time", "CPU time", "passed", "skipped"], rows)  # fmt: skip


def main() -> None:
    cache = Path(os.environ.get("TRITON_CACHE_DIR", Path.home() / ".triton" / "cache"))
    results = {"machine": machine(), "triton_cache": "warm" if cache.is_dir() and any(cache.iterdir()) else "cold"}
    for name, options in COMMANDS.items():
        results[name] = run(options)
        print(results[name], flush=True)
    print("\n" + table(results))
    write_results("test-suite-cpu", results, table(results))


if __name__ == "__main__":
    main()
