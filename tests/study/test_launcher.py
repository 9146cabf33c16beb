"""`hpo launch` with local workers: Ctrl-C stops them, ending their trials and MLflow runs."""

from __future__ import annotations

import signal

import optuna
import pytest

from tests.study.conftest import TINY
from tests.study.conftest import finish
from tests.study.conftest import hpo_cmd
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


NAN = {"train.optimizer.learning_rate": {"categorical": [1.0e30]}}  # every trial's loss turns NaN


def _launch(cwd, *args):
    storage = f"sqlite:///{cwd / 'hpo.db'}"
    return hpo_cmd(cwd, "launch", "space.yaml", *args, "--storage", storage,
                   "--tracking-uri", f"sqlite:///{cwd / 'mlflow.db'}")


def _parent_status(cwd, study):
    storage = f"sqlite:///{cwd / 'hpo.db'}"
    attrs = optuna.load_study(study_name=study, storage=storage).user_attrs
    parent = attrs["mlflow_parent_run_id"]
    return mlflow_client(cwd).get_run(parent).info.status


def test_a_launch_that_finished_no_trial_exits_1_and_fails_its_parent_run(tmp_path):
    # Rule: workers that stop with every trial failed and none finished (a grid of one point whose
    # loss turns NaN: the workers exit 0) make `hpo launch` exit 1 with one line naming the last
    # failure, not "0/1 trials done"; the study's parent run ends FAILED.
    write_study_files(tmp_path, "nothing", n_trials=None, sampler={"type": "grid"}, params=NAN)
    proc = _launch(tmp_path, "--workers", "1")
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines()[-1].startswith(
        "hpo: error: study 'nothing': no trial finished, 1 failed; last, trial 0: training loss "
        "became nan"), proc.stderr[-2000:]
    assert "trials done" not in proc.stdout
    assert _parent_status(tmp_path, "nothing") == "FAILED"


def test_a_launch_whose_workers_failed_ends_its_parent_run_failed(tmp_path):
    # Rule: a launch that fails because its workers did (5 trials in a row failed: the worker exits
    # 1) exits 1 and leaves the study's parent run FAILED, not RUNNING; a relaunch resumes it.
    write_study_files(tmp_path, "workers", n_trials=1, params=NAN)
    proc = _launch(tmp_path, "--workers", "1")
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.splitlines()[-1].startswith("hpo: error: workers exited with codes [1]")
    assert _parent_status(tmp_path, "workers") == "FAILED"


def test_workers_0_on_a_finished_study_leaves_its_parent_run_finished(tmp_path):
    # Rule: `hpo launch --workers 0` on a study whose budget is spent changes nothing: its parent
    # run stays FINISHED (a study still short of its budget is resumed: RUNNING).
    write_study_files(tmp_path, "done", n_trials=1)
    assert _launch(tmp_path, "--workers", "1").returncode == 0
    assert _parent_status(tmp_path, "done") == "FINISHED"
    again = _launch(tmp_path, "--workers", "0")
    assert again.returncode == 0, again.stderr[-2000:]
    assert _parent_status(tmp_path, "done") == "FINISHED"
