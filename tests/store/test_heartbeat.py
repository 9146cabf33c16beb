"""Heartbeats on SQLite: a silent trial is failed, its run KILLED, its parameters re-queued."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpo.config.space import parse_space
from hpo.keys import BEAT_KEY
from hpo.launch.supervisor import fail_trials_of
from hpo.store.heartbeat import enable_heartbeat
from hpo.store.heartbeat import reap
from hpo.store.heartbeat import SilenceWatch
from hpo.store.proxy import ProxyReaper
from hpo.store.storage import make_storage
from hpo.study.create import create_or_join
from hpo.study.status import status_rows
from hpo.tracking.reconcile import KillLostRuns
from tests.conftest import FakeClock

GRACE_S = 2


@pytest.fixture(scope="module")
def tracker(tmp_path_factory: pytest.TempPathFactory):
    """One MLflow store for the module (creating one takes seconds)."""
    from hpo.tracking.runs import Tracker

    return Tracker(f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}")


@pytest.fixture
def setup(tmp_path: Path, tracker):
    """A study (budget 2, heartbeat 1 s, grace 2 s) with heartbeats on, and the MLflow tracker."""
    space = parse_space(
        {
            "study": {"name": "hb", "n_trials": 2, "heartbeat_s": 1, "grace_s": GRACE_S},
            "params": {"model.dropout.rate": {"float": [0.0, 0.2], "step": 0.1}},
        },
        source="hb.yaml",
    )
    storage = make_storage(f"sqlite:///{tmp_path / 'hpo.db'}")
    study, _ = create_or_join(storage, space)
    enable_heartbeat(storage, space, KillLostRuns(tracker))
    return study, storage, tracker


def _start_trial(study, tracker, *, worker: str = "host:1", beat: bool = True):
    """A RUNNING trial as a worker leaves it when it dies: params, an MLflow run, one heartbeat."""
    with pytest.warns(UserWarning, match="Heartbeat"):
        trial = study.ask()
    trial.suggest_float("model.dropout.rate", 0.0, 0.2, step=0.1)
    run_id = tracker.client.create_run(tracker.experiment_id("hb")).info.run_id
    trial.set_user_attr("mlflow_run_id", run_id)
    trial.set_user_attr("worker", worker)
    if beat:
        study._storage.record_heartbeat(trial._trial_id)
    return trial, run_id


def test_silent_trial_is_failed_its_run_killed_and_its_params_requeued(setup):
    # Rule: a trial without heartbeat for grace_s is FAIL, its MLflow run KILLED with the reason,
    # and a
    # WAITING copy with the same parameters (and none of the lost attempt's attrs) is queued.
    study, _, tracker = setup
    trial, run_id = _start_trial(study, tracker)
    time.sleep(GRACE_S + 1.5)
    reap(study)
    lost, copy = study.get_trials()
    assert lost.state == TrialState.FAIL
    assert copy.state == TrialState.WAITING and copy.params == lost.params
    assert copy.user_attrs == {} and copy.system_attrs["failed_trial"] == lost.number
    run = tracker.client.get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["hpo.fail_reason"] == f"worker lost: no heartbeat for {GRACE_S} s"
    assert status_rows(study)[0]["note"] == "worker lost (no heartbeat); rerun as trial 1"


def test_beating_trial_is_left_alone(setup):
    # Rule: a trial that keeps beating is never failed, however long it runs.
    study, storage, tracker = setup
    trial, _ = _start_trial(study, tracker)
    for _ in range(4):
        time.sleep(1)
        storage.record_heartbeat(trial._trial_id)
        reap(study)
    assert study.get_trials()[0].state == TrialState.RUNNING


def test_no_copy_once_the_budget_is_spent(setup):
    # Rule: when the budget is already spent, a lost trial is failed but not re-queued (nothing
    # would run it).
    study, _, tracker = setup
    for value in (0.3, 0.4):
        study.add_trial(optuna.create_trial(value=value))
    _start_trial(study, tracker)
    time.sleep(GRACE_S + 1.5)
    reap(study)
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 2 + [TrialState.FAIL]


def test_unclaimed_trial_is_an_orphan_after_a_grace_period(setup):
    # Rule: a RUNNING trial no worker claimed (died between creating and starting it, before any
    # heartbeat) is failed once it has been seen unclaimed for longer than grace_s.
    study, storage, tracker = setup
    clock = FakeClock()
    storage._watch = SilenceWatch(clock)  # the one enable_heartbeat made, on a clock of ours
    with pytest.warns(UserWarning, match="Heartbeat"):
        study.ask()
    reap(study)  # first sight
    clock.now += GRACE_S
    reap(study)
    assert study.get_trials()[0].state == TrialState.RUNNING
    clock.now += 0.5
    reap(study)
    assert study.get_trials()[0].state == TrialState.FAIL


def test_proxy_fails_trials_whose_grpc_beat_stopped(setup):
    # Rule: `hpo storage-proxy` fails, on its own, a trial whose `hpo:heartbeat` attr stops
    # changing;
    # trials without that attr (workers on the database itself) are not its business.
    study, storage, tracker = setup
    beating, run_id = _start_trial(study, tracker, beat=False)
    storage.set_trial_system_attr(beating._trial_id, BEAT_KEY, time.time())
    _start_trial(study, tracker, beat=False)  # no beat attr
    clock = FakeClock()
    reaper = ProxyReaper(
        storage, every_s=0.2, end_runs_for=lambda: KillLostRuns(tracker), clock=clock
    )
    assert reaper.reap_once() == []
    clock.now += GRACE_S
    assert reaper.reap_once() == []  # silent for the grace period, not yet longer
    clock.now += 0.5
    assert reaper.reap_once() == [("hb", beating.number)]
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING]
    assert (
        BEAT_KEY not in study.get_trials()[2].system_attrs
    )  # the copy starts without the dead beat
    assert tracker.client.get_run(run_id).info.status == "KILLED"


def test_launcher_fails_the_trials_of_workers_it_killed(setup):
    # Rule: a worker the launcher had to kill after Ctrl-C leaves no RUNNING trial or RUNNING run;
    # its trial's parameters are queued again, as the heartbeat reaper queues a lost one's.
    study, _, tracker = setup
    mine, run_id = _start_trial(study, tracker, worker="host:7")
    other, _ = _start_trial(study, tracker, worker="host:8")
    from hpo.study.create import load_study

    _, space = load_study(study._storage, "hb")
    assert fail_trials_of(study, space, {"host:7"}, tracker=tracker) == [mine.number]
    first, second, copy = study.get_trials()
    assert first.state == TrialState.FAIL and second.state == TrialState.RUNNING
    assert first.user_attrs["fail_reason"].startswith("interrupted")
    assert tracker.client.get_run(run_id).info.status == "KILLED"
    assert copy.state == TrialState.WAITING and copy.params == first.params
    assert copy.system_attrs["failed_trial"] == first.number
    assert "fail_reason" not in copy.user_attrs
    note = status_rows(study)[0]["note"]
    assert note == "interrupted: worker killed by the launcher; rerun as trial 2"


def test_silence_watch_times_unchanged_beats_on_its_own_clock():
    # Rule: a beat unchanged between two looks more than grace apart is stale; a changed one is
    # not.
    clock = FakeClock()
    watch = SilenceWatch(clock)
    assert watch.silent(1, {10: 1.0, 11: 5.0}, 2) == []
    clock.now += 2
    assert watch.silent(1, {10: 1.0, 11: 6.0}, 2) == []  # silent for grace, not longer
    clock.now += 0.5
    assert watch.silent(1, {10: 1.0, 11: 6.0}, 2) == [10]
    assert watch.silent(2, {10: 1.0}, 2) == []  # each study is timed on its own
    assert watch.silent(1, {}, 2) == []  # finished trials are forgotten
    clock.now += 10
    assert watch.silent(1, {10: 1.0}, 2) == []  # ... and timed afresh if seen again
