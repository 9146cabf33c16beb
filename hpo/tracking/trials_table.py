"""The summary table of a study's trials, as CSV and markdown artifacts of its parent run.

    hpo report quickstart     # report/trials.csv and report/trials.md

One row per trial, best first: COMPLETE trials by value, then the others by number.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from hpo.keys import EPOCHS_RUN_KEY
from hpo.keys import FAIL_REASON_KEY
from hpo.keys import METRIC
from hpo.keys import MLFLOW_RUN_ID_KEY


def report_rows(trials: Sequence[FrozenTrial], metric: str = METRIC) -> list[dict[str, Any]]:
    """Rows of number, state, metric, every parameter, epochs, duration, MLflow run and fail reason."""
    params = sorted({p for t in trials for p in t.params})
    ordered = sorted(trials, key=lambda t: (t.state != TrialState.COMPLETE,
                                            t.value if t.state == TrialState.COMPLETE else 0.0, t.number))
    rows = []
    for t in ordered:
        row: dict[str, Any] = {"number": t.number, "state": t.state.name,
                               metric: "" if t.value is None else f"{t.value:.6f}"}
        row.update({p: t.params.get(p, "") for p in params})
        duration = t.duration.total_seconds() if t.duration is not None else None
        row.update({
            "epochs_run": t.user_attrs.get(EPOCHS_RUN_KEY, ""),
            "duration_s": "" if duration is None else f"{duration:.1f}",
            "mlflow_run_id": t.user_attrs.get(MLFLOW_RUN_ID_KEY, ""),
            "fail_reason": t.user_attrs.get(FAIL_REASON_KEY, ""),
        })
        rows.append(row)
    return rows


def to_csv(rows: list[dict[str, Any]]) -> str:
    """The rows as CSV with a header line (empty string for no rows)."""
    if not rows:
        return ""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def to_markdown(rows: list[dict[str, Any]], title: str = "") -> str:
    """The rows as a GitHub-flavoured markdown table, under an optional heading."""
    head = f"# {title}\n\n" if title else ""
    if not rows:
        return head + "No trials yet.\n"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(" --- " for _ in cols) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row[c]) for c in cols) + " |")
    return head + "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")
