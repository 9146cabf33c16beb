"""The Tracker on a real temporary SQLite store: parent-run floors, trial states, system metrics."""

from __future__ import annotations

import time

import pytest

from hpo.config.tree import RunConfig
from hpo.errors import TrackingError
from hpo.tracking import Tracker

DATA_INFO = {
    "fingerprint": {"sha256": "ab12", "n": 300, "generator": "test"},
    "path": "signal.h5",
    "floors": {"oracle_floor": 0.081, "counts_baseline": 0.213, "n_fit": 240, "n_eval": 60},
}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One SQLite store for the module (creating one takes seconds); each test makes its own runs."""
    path = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(path)  # local artifacts go to ./mlartifacts
        Tracker(f"sqlite:///{path / 'mlflow.db'}").experiment_id("s")
    return str(path)


@pytest.fixture()
def tracker(store, monkeypatch) -> Tracker:
    monkeypatch.chdir(store)
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
    return Tracker(f"sqlite:///{store}/mlflow.db", retry_window_s=0)


def _study(tracker: Tracker) -> tuple[str, str]:
    exp = tracker.experiment_id("s")
    return exp, tracker.start_study_run(exp, "s", "study: {name: s}\n", DATA_INFO)


def test_parent_run_carries_space_fingerprint_and_floors_as_metrics(tracker):
    # Rule: the floors show in the UI as metrics of the parent run, the fingerprint as data.* params.
    _, parent = _study(tracker)
    run = tracker.client.get_run(parent)
    assert run.data.metrics == {"oracle_floor": 0.081, "counts_baseline": 0.213}
    assert run.data.params["data.fingerprint.sha256"] == "ab12"
    assert run.data.params["data.floors.n_fit"] == "240"
    assert run.data.tags["hpo.kind"] == "study"
    assert "search_space.yaml" in {a.path for a in tracker.client.list_artifacts(parent)}


def test_a_file_without_truth_gives_no_oracle_metric(tracker):
    # Rule: a floor that is unknown (no truth/ in the file) is absent, never logged as NaN or 0.
    exp = tracker.experiment_id("s")
    parent = tracker.start_study_run(exp, "s", "", {**DATA_INFO, "floors": {"counts_baseline": 0.2}})
    assert tracker.client.get_run(parent).data.metrics == {"counts_baseline": 0.2}


@pytest.mark.parametrize(("state", "status"), [("COMPLETE", "FINISHED"), ("PRUNED", "FINISHED"),
                                               ("FAIL", "FAILED"), ("KILLED", "KILLED")])
def test_trial_runs_are_tagged_with_their_final_state(tracker, state, status):
    # Rule: a trial run is RUNNING while it trains and ends tagged with its Optuna state; a pruned
    # one also with the epoch it stopped at, a failed one with its reason.
    exp, parent = _study(tracker)
    run_id = tracker.start_trial_run(exp, parent, "s", 3, RunConfig())
    running = tracker.client.get_run(run_id)
    assert running.data.tags["hpo.state"] == "RUNNING" and running.info.run_name == "trial-3"
    assert running.data.tags["mlflow.parentRunId"] == parent
    tracker.finish_trial_run(run_id, state, epochs_run=4, reason="NaN loss" if state == "FAIL" else None)
    run = tracker.client.get_run(run_id)
    assert run.info.status == status and run.data.tags["hpo.state"] == state
    assert run.data.metrics["epochs_run"] == 4
    assert (run.data.tags.get("hpo.pruned_at_epoch") == "4") is (state == "PRUNED")
    assert (run.data.tags.get("hpo.fail_reason") == "NaN loss") is (state == "FAIL")


def test_an_unknown_final_state_is_refused(tracker):
    # Rule: the state names Optuna's; anything else is an error naming the valid ones.
    exp, parent = _study(tracker)
    run_id = tracker.start_trial_run(exp, parent, "s", 0, RunConfig())
    with pytest.raises(TrackingError, match="COMPLETE, PRUNED, FAIL, KILLED.*'DONE'"):
        tracker.finish_trial_run(run_id, "DONE")


def test_trial_runs_log_system_metrics(tracker, monkeypatch):
    # Rule: CPU and memory use of a trial are MLflow system metrics (system/*) of its run.
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "true")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")
    exp, parent = _study(tracker)
    run_id = tracker.start_trial_run(exp, parent, "s", 0, RunConfig())
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not tracker.client.get_run(run_id).data.metrics:
        time.sleep(0.5)
    tracker.finish_trial_run(run_id, "COMPLETE")
    metrics = tracker.client.get_run(run_id).data.metrics
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(metrics)


def test_system_metrics_can_be_turned_off(tracker):
    # Rule: MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false (set by the fixture) logs none.
    exp, parent = _study(tracker)
    run_id = tracker.start_trial_run(exp, parent, "s", 0, RunConfig())
    assert tracker._monitors[run_id] is None
    tracker.finish_trial_run(run_id, "COMPLETE")
    assert not [k for k in tracker.client.get_run(run_id).data.metrics if k.startswith("system/")]
