"""The trials table of `hpo report`: best first, as CSV and markdown."""

from __future__ import annotations

import csv
import io

from optuna.distributions import FloatDistribution
from optuna.trial import TrialState
from optuna.trial import create_trial

from hpo.tracking.trials_table import report_rows
from hpo.tracking.trials_table import to_csv
from hpo.tracking.trials_table import to_markdown


def _trials():
    dist = {"model.dropout.rate": FloatDistribution(0, 0.5)}
    out = []
    for number, (state, value, rate) in enumerate(
        [(TrialState.COMPLETE, 0.3, 0.1), (TrialState.PRUNED, None, 0.4), (TrialState.COMPLETE, 0.2, 0.2),
         (TrialState.FAIL, None, 0.5)]):
        t = create_trial(state=state, value=value, params={"model.dropout.rate": rate}, distributions=dist,
                         user_attrs={"mlflow_run_id": f"run{number}", "epochs_run": 3,
                                     **({"fail_reason": "NaN loss | at epoch 2"} if state == TrialState.FAIL else {})})
        t.number = number
        out.append(t)
    return out


def test_rows_are_best_first_then_by_number():
    # Rule: COMPLETE trials by value (best first), then the others by trial number.
    rows = report_rows(_trials())
    assert [r["number"] for r in rows] == [2, 0, 1, 3]
    assert rows[0]["val_residual_std"] == "0.200000" and rows[0]["mlflow_run_id"] == "run2"


def test_csv_and_markdown_hold_every_trial():
    # Rule: the CSV parses back with one row per trial; markdown escapes pipes in cells.
    rows = report_rows(_trials())
    back = list(csv.DictReader(io.StringIO(to_csv(rows))))
    assert len(back) == 4 and back[0]["model.dropout.rate"] == "0.2"
    md = to_markdown(rows, "Study s")
    assert md.startswith("# Study s\n") and md.count("\n| ") == 6  # header, separator, 4 rows
    assert "NaN loss \\| at epoch 2" in md
