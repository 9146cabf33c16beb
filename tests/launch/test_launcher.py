"""Local worker processes under a launcher (`hpo launch`, `hpo worker --workers-per-gpu K`):
Ctrl-C and SIGTERM stop them, ending and re-queueing their trials; a dead one's trial is failed
at once."""

from __future__ import annotations

import os
import signal
import time

import optuna
import pytest
from optuna.trial import TrialState

from tests._workers import TINY
from tests._workers import assert_interrupted_and_requeued
from tests._workers import create_study
from tests._workers import finish
from tests._workers import hpo_cmd
from tests._workers import mlflow_client
from tests._workers import start_hpo
from tests._workers import start_worker
from tests._workers import trials_of
from tests._workers import wait_for
from tests._workers import write_study_files

# Whole launches driven into their faults (dead, stuck and failing workers): make test-e2e.
pytestmark = [pytest.mark.slow, pytest.mark.e2e]

LONG = {**TINY, "train": {**TINY["train"], "epochs": 1000}}  # a trial that runs until stopped


def _launch(cwd, storage):
    return start_hpo(cwd, "launch", "space.yaml", "--workers", "2", "--storage", storage,
                     "--tracking-uri", f"sqlite:///{cwd / 'mlflow.db'}", log="launch.log")


def _running(storage, study, n):
    """The study's RUNNING trials once `n` of them are training (an epoch done), else None."""
    try:
        trials = trials_of(storage, study)
    except KeyError:  # the study is not created yet
        return None
    running = [t for t in trials if t.state == TrialState.RUNNING and t.intermediate_values]
    return running if len(running) >= n else None


def _pid(trial):
    return int(trial.user_attrs["worker"].rsplit(":", 1)[1])


def test_a_dead_worker_is_failed_at_once_and_ctrl_c_stops_the_other(tmp_path):
    # Rule: a local worker of `hpo launch` that dies mid-trial (kill -9, a crash) has its trial
    # failed within the launcher's next look (seconds, not a heartbeat grace period), its MLflow
    # run KILLED and its parameters queued again, as the heartbeat reaper would do. Then SIGINT
    # to `hpo launch` stops the other worker: its trial ends FAIL ("interrupted") and is queued
    # again, its MLflow run and the study's parent run KILLED; exit code 130.
    write_study_files(tmp_path, "stop", n_trials=4, base=LONG, heartbeat_s=30, grace_s=600)
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    launcher = _launch(tmp_path, storage)
    try:
        victim, survivor = wait_for(lambda: _running(storage, "stop", 2), 180,
                                    "two trials training", poll=0.5)
        os.kill(_pid(victim), signal.SIGKILL)
        killed = time.monotonic()

        def requeued():
            return [t for t in trials_of(storage, "stop")
                    if t.system_attrs.get("failed_trial") == victim.number]

        wait_for(requeued, 15, "the launcher to fail and re-queue the dead worker's trial",
                 poll=0.2)
        print(f"failed and re-queued {time.monotonic() - killed:.1f} s after its worker died")
        reason = "worker lost: its process exited with code -9"
        assert_interrupted_and_requeued(tmp_path, storage, "stop", [victim], reason,
                                        others_running=True)
        assert "exited (-9) during trial(s)" in (tmp_path / "launch.log").read_text()
    finally:
        launcher.send_signal(signal.SIGINT)
        code = finish(launcher, 90, tmp_path / "launch.log")
    assert code == 130
    assert "interrupted: stopping workers" in (tmp_path / "launch.log").read_text()
    assert_interrupted_and_requeued(tmp_path, storage, "stop", [survivor])
    parent = optuna.load_study(study_name="stop", storage=storage).user_attrs[
        "mlflow_parent_run_id"
    ]
    assert mlflow_client(tmp_path).get_run(parent).info.status == "KILLED"


NAN = {"train.optimizer.learning_rate": {"categorical": [1.0e30]}}  # every trial's loss turns NaN


def _launch_and_wait(cwd, *args):
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
    proc = _launch_and_wait(tmp_path, "--workers", "1")
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
    proc = _launch_and_wait(tmp_path, "--workers", "1")
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.splitlines()[-1].startswith("hpo: error: workers exited with codes [1]")
    assert _parent_status(tmp_path, "workers") == "FAILED"


def test_workers_0_on_a_finished_study_leaves_its_parent_run_finished(tmp_path):
    # Rule: `hpo launch --workers 0` on a study whose budget is spent changes nothing: its parent
    # run stays FINISHED (a study still short of its budget is resumed: RUNNING).
    write_study_files(tmp_path, "done", n_trials=1)
    assert _launch_and_wait(tmp_path, "--workers", "1").returncode == 0
    assert _parent_status(tmp_path, "done") == "FINISHED"
    again = _launch_and_wait(tmp_path, "--workers", "0")
    assert again.returncode == 0, again.stderr[-2000:]
    assert _parent_status(tmp_path, "done") == "FINISHED"


def test_sigterm_to_a_worker_group_stops_its_workers_and_kills_a_stuck_one(tmp_path):
    # Rule: SIGTERM to `hpo worker --workers-per-gpu 2` (docker stop, pod deletion) stops both
    # worker processes: a trial ends FAIL "interrupted", its MLflow run KILLED, a copy queued; a
    # worker that does not stop (frozen) is killed after HPO_STOP_TIMEOUT_S and its trial ended
    # the same way; the group exits 130 within that timeout and a few seconds.
    write_study_files(tmp_path, "group", n_trials=4, base=LONG, heartbeat_s=30, grace_s=600)
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    create_study(tmp_path, storage)
    group = start_worker(tmp_path, "group", storage, "group.log", "--workers-per-gpu", "2",
                         env={"HPO_STOP_TIMEOUT_S": "5"})
    stuck, clean = wait_for(lambda: _running(storage, "group", 2), 180, "two trials training",
                            poll=0.5)
    os.kill(_pid(stuck), signal.SIGSTOP)
    sent = time.monotonic()
    group.send_signal(signal.SIGTERM)
    assert finish(group, 5 + 20, tmp_path / "group.log") == 130
    print(f"group gone {time.monotonic() - sent:.1f} s after SIGTERM")
    assert "did not stop within 5 s: killing it" in (tmp_path / "group.log").read_text()
    with pytest.raises(ProcessLookupError):
        os.kill(_pid(stuck), 0)
    assert_interrupted_and_requeued(tmp_path, storage, "group", [clean])
    assert_interrupted_and_requeued(tmp_path, storage, "group", [stuck],
                                    "interrupted: worker killed by the launcher")


def test_sigterm_to_hpo_launch_stops_its_workers_as_ctrl_c_does(tmp_path):
    # Rule: SIGTERM to `hpo launch` (scancel, docker stop, systemd, `timeout`) is a clean stop, as
    # Ctrl-C is: the launcher stops its workers (in sessions of their own, so they would outlive
    # it), each running trial ends FAIL "interrupted" and is queued again, its MLflow run and the
    # study's parent run KILLED; exit code 130, and no worker process is left.
    write_study_files(tmp_path, "term", n_trials=4, base=LONG, heartbeat_s=30, grace_s=600)
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    launcher = _launch(tmp_path, storage)
    try:
        running = wait_for(lambda: _running(storage, "term", 2), 180, "two trials training",
                           poll=0.5)
    finally:
        launcher.send_signal(signal.SIGTERM)
        code = finish(launcher, 90, tmp_path / "launch.log")
    assert code == 130
    assert "interrupted: stopping workers" in (tmp_path / "launch.log").read_text()
    for trial in running:
        with pytest.raises(ProcessLookupError):
            os.kill(_pid(trial), 0)
    assert_interrupted_and_requeued(tmp_path, storage, "term", running)
    parent = optuna.load_study(study_name="term", storage=storage).user_attrs[
        "mlflow_parent_run_id"
    ]
    assert mlflow_client(tmp_path).get_run(parent).info.status == "KILLED"
