"""`hpo status` rows as a user reads them: durations in minutes and seconds, not bare floats."""

from __future__ import annotations

from datetime import datetime
from datetime import timedelta

import optuna
import pytest

from hpo.cli._table import table
from hpo.study.status import human_duration
from hpo.study.status import status_rows


@pytest.mark.parametrize(("seconds", "text"), [
    (0.4, "0 s"), (42.0, "42 s"), (59.6, "1 m 00 s"), (65.0, "1 m 05 s"), (3599.0, "59 m 59 s"),
    (3600.0, "1 h 00 m"), (7380.0, "2 h 03 m"), (93784.0, "26 h 03 m"),
])
def test_human_duration(seconds, text):
    # Rule: the two largest units, the second zero-padded.
    assert human_duration(seconds) == text


def test_status_table_prints_trial_durations_in_minutes_and_seconds():
    # Rule: a trial that ran 65 s reads "1 m 05 s" in the table; one still running has none.
    study = optuna.create_study()
    start = datetime(2026, 1, 1, 12, 0, 0)
    study.add_trial(optuna.trial.FrozenTrial(
        number=0, state=optuna.trial.TrialState.COMPLETE, value=0.2, datetime_start=start,
        datetime_complete=start + timedelta(seconds=65), params={}, distributions={}, user_attrs={},
        system_attrs={}, intermediate_values={}, trial_id=0))
    study.ask()
    lines = table(status_rows(study)).splitlines()
    assert "duration" in lines[0].split()
    assert "1 m 05 s" in lines[1] and "65.0" not in lines[1]
    assert lines[2].split()[:4] == ["1", "RUNNING", "-", "-"]
