"""`hpo launch` with local workers: Ctrl-C stops them, ending their trials and MLflow runs."""

from __future__ import annotations

import signal

import optuna
import pytest

from tests.study.conftest import TINY
from tests.study.conftest import finish
from tests.study.conftest import mlflow_client
from tests.study.conftest import start_hpo
from tests.study.conftest import trials_of
from tests.study.conftest import wait_for
from tests.study.conftest import write_study_files

pytestmark = pytest.mark.slow


def test_ctrl_c_stops_workers_and_ends_their_trials_and_runs(tmp_path):
    # Rule: SIGINT to `hpo launch` stops every worker: their running trials end FAIL
    # ("interrupted"),
    # their MLflow runs and the study's parent run KILLED; nothing stays RUNNING; exit code 130.
    long = {**TINY, "train": {**TINY["train"], "epochs": 1000}}
    write_study_files(tmp_path, "stop", n_trials=4, base=long)
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    launcher = start_hpo(
        tmp_path,
        "launch",
        "space.yaml",
        "--workers",
        "2",
        "--storage",
        storage,
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        log="launch.log",
    )

    def two_running_runs():
        try:
            trials = trials_of(storage, "stop")
        except KeyError:  # the study is not created yet
            return None
        return len([t for t in trials if "mlflow_run_id" in t.user_attrs]) == 2

    wait_for(two_running_runs, 180, "two trials with MLflow runs", poll=0.5)
    launcher.send_signal(signal.SIGINT)
    assert finish(launcher, 90, tmp_path / "launch.log") == 130
    assert "interrupted: stopping workers" in (tmp_path / "launch.log").read_text()

    trials = trials_of(storage, "stop")
    assert [t.state.name for t in trials] == ["FAIL", "FAIL"]
    assert all(t.user_attrs["fail_reason"] == "interrupted" for t in trials)
    client = mlflow_client(tmp_path)
    assert {client.get_run(t.user_attrs["mlflow_run_id"]).info.status for t in trials} == {
        "KILLED"
    }
    parent = optuna.load_study(study_name="stop", storage=storage).user_attrs[
        "mlflow_parent_run_id"
    ]
    assert client.get_run(parent).info.status == "KILLED"
