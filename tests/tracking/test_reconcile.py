"""Trial runs left RUNNING are found by their tags and ended as their trial ended (SQLite)."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpo.config.space import parse_space
from hpo.keys import MLFLOW_EXPERIMENT_KEY
from hpo.store.heartbeat import enable_heartbeat
from hpo.store.heartbeat import reap
from hpo.store.storage import make_storage
from hpo.study.create import create_or_join
from hpo.tracking.reconcile import KillLostRuns
from hpo.tracking.runs import Tracker

GRACE_S = 2


@pytest.fixture
def setup(tmp_path: Path):
    space = parse_space(
        {
            "study": {"name": "rec", "n_trials": 4, "heartbeat_s": 1, "grace_s": GRACE_S},
            "params": {"model.dropout.rate": {"float": [0.0, 0.2], "step": 0.1}},
        },
        source="rec.yaml",
    )
    storage = make_storage(f"sqlite:///{tmp_path / 'hpo.db'}")
    study, _ = create_or_join(storage, space)
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    study.set_user_attr(MLFLOW_EXPERIMENT_KEY, tracker.experiment_id("rec"))
    enable_heartbeat(storage, space, KillLostRuns(tracker))
    return study, tracker


def _run_of(tracker: Tracker, study: optuna.Study, number: int) -> str:
    """A RUNNING run tagged as trial `number`'s, as a worker creates it (its id not recorded)."""
    tags = {"hpo.study": study.study_name, "hpo.trial": str(number), "hpo.kind": "trial"}
    run = tracker.client.create_run(study.user_attrs[MLFLOW_EXPERIMENT_KEY], tags=tags)
    return run.info.run_id


def test_a_lost_trials_runs_are_killed_by_their_tags(setup):
    # Rule: a trial failed for silence has every run tagged with it ended KILLED, also one whose
    # id never reached the trial; another trial's run is left alone.
    study, tracker = setup
    with pytest.warns(UserWarning, match="Heartbeat"):
        trial = study.ask()
    study._storage.record_heartbeat(trial._trial_id)
    mine, twice, other = (_run_of(tracker, study, n) for n in (0, 0, 1))
    time.sleep(GRACE_S + 1.5)
    reap(study)
    assert study.get_trials()[0].state == TrialState.FAIL
    for run_id in (mine, twice):
        run = tracker.client.get_run(run_id)
        assert run.info.status == "KILLED" and "no heartbeat" in run.data.tags["hpo.fail_reason"]
    assert tracker.client.get_run(other).info.status == "RUNNING"


def test_runs_of_finished_trials_end_as_their_trials_ended(setup):
    # Rule: end_orphan_runs ends a RUNNING run of a COMPLETE trial FINISHED, of a failed one
    # FAILED with its reason, of one that lost its worker KILLED; a running trial's run goes on.
    from hpo.tracking.reconcile import end_orphan_runs

    study, tracker = setup
    study.add_trial(optuna.create_trial(value=0.3))
    study.add_trial(optuna.create_trial(state=TrialState.FAIL,
                                        user_attrs={"fail_reason": "NaN loss"}))
    study.add_trial(optuna.create_trial(state=TrialState.FAIL))
    with pytest.warns(UserWarning, match="Heartbeat"):
        study.ask()
    runs = [_run_of(tracker, study, n) for n in range(4)]
    ended = end_orphan_runs(study, tracker)
    assert sorted(ended) == [(0, runs[0], "COMPLETE"), (1, runs[1], "FAIL"),
                             (2, runs[2], "KILLED")]
    got = [tracker.client.get_run(r) for r in runs]
    assert [r.info.status for r in got] == ["FINISHED", "FAILED", "KILLED", "RUNNING"]
    assert got[1].data.tags["hpo.fail_reason"] == "NaN loss"
    assert end_orphan_runs(study, tracker) == []
