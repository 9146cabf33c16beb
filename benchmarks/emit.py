"""Where a benchmark's table goes: stdout, and the section file make_benchmarks.py assembles."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def emit(name: str, table: str) -> str:
    """Prints `table` and saves it as benchmarks/results/<name>.md."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text(table.rstrip() + "\n")
    print(table, flush=True)
    return table
