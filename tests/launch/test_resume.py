"""Preempted trials resume where they stopped: a worker killed (SIGKILL) or stopped (SIGTERM)
mid-trial leaves its checkpoint, and the trial's copy, run by the next worker, goes on from it.

    .venv/bin/python -m pytest tests/launch/test_resume.py -m "e2e or not e2e" -q -p no:cacheprovider

The SIGKILL case and checkpoints off are end-to-end tests (make test-e2e).
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from optuna.trial import TrialState

from hpo.keys import CONFIG_KEY
from hpo.keys import RESUMED_KEY
from tests._workers import TINY
from tests._workers import create_study
from tests._workers import finish
from tests._workers import hpo_cmd
from tests._workers import mlflow_client
from tests._workers import running_trial_of
from tests._workers import start_worker
from tests._workers import trials_of
from tests._workers import wait_for
from tests._workers import write_study_files

pytestmark = pytest.mark.slow

EPOCHS = 8
# Long enough epochs (600 clusters) that a trial is caught between its second and last epoch.
BASE = {**TINY, "train": {**TINY["train"], "epochs": EPOCHS}}


def _preempt(tmp_path: Path, name: str, sig: signal.Signals):
    """A study of two trials of the same point: worker A gets `sig` after two epochs of the
    first; worker B runs the second, uninterrupted, and the first's copy.

    Returns the interrupted trial and the study's trials at the end.
    """
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    write_study_files(tmp_path, name, n_trials=2, n_data=600, base=BASE, heartbeat_s=1, grace_s=3,
                      params={"model.dropout.rate": {"categorical": [0.1]}})
    create_study(tmp_path, storage)
    a = start_worker(tmp_path, name, storage, "a.log")

    def two_epochs():
        t = running_trial_of(storage, name, a.pid)
        return t if t is not None and len(t.intermediate_values) >= 2 else None

    wait_for(two_epochs, 180, "two epochs of worker A's trial", poll=0.1)
    a.send_signal(sig)
    a.wait(timeout=60)
    b = start_worker(tmp_path, name, storage, "b.log")
    assert finish(b, 300, tmp_path / "b.log") == 0, (tmp_path / "b.log").read_text()[-3000:]
    trials = trials_of(storage, name)
    lost = next(t for t in trials if t.number == 0)
    return lost, trials


def _assert_resumed(tmp_path: Path, lost, trials, *, recomputed_at_most: int) -> None:
    assert lost.state == TrialState.FAIL
    copy = next(t for t in trials if t.system_attrs.get("failed_trial") == lost.number)
    assert copy.state == TrialState.COMPLETE and copy.params == lost.params
    resumed = copy.user_attrs[RESUMED_KEY]
    seen = len(lost.intermediate_values)  # epochs the pruner saw from the lost attempt
    # At most one epoch trained again: the checkpoint holds every epoch the lost attempt
    # reported, or all but the one whose write a SIGKILL cut.
    assert seen - recomputed_at_most <= resumed["epoch"] <= seen
    assert resumed["trial"] == lost.number
    assert resumed["run"] == lost.user_attrs["mlflow_run_id"]
    # The pruner of the copy sees the whole curve, the lost attempt's values included.
    assert sorted(copy.intermediate_values) == list(range(EPOCHS))
    for epoch in range(resumed["epoch"]):
        assert copy.intermediate_values[epoch] == pytest.approx(lost.intermediate_values[epoch])
    assert copy.user_attrs["epochs_run"] == EPOCHS

    # The copy's run names the run it resumes and holds every epoch, the resumed ones included.
    client = mlflow_client(tmp_path)
    run = client.get_run(copy.user_attrs["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["hpo.resumes_run"] == lost.user_attrs["mlflow_run_id"]
    assert run.data.tags["hpo.resumed_at_epoch"] == str(resumed["epoch"])
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_residual_std")]
    assert sorted(steps) == list(range(EPOCHS))
    assert client.get_run(lost.user_attrs["mlflow_run_id"]).info.status == "KILLED"

    # The same trial trained without interruption by the same kind of worker (same config, same
    # seed, same threads) ends on the same value.
    whole = next(t for t in trials if t is not copy and t.number != lost.number)
    assert whole.state == TrialState.COMPLETE and RESUMED_KEY not in whole.user_attrs
    assert whole.user_attrs[CONFIG_KEY] == copy.user_attrs[CONFIG_KEY]
    assert copy.value == pytest.approx(whole.value, rel=1e-5, abs=1e-7)
    for epoch in range(EPOCHS):
        assert copy.intermediate_values[epoch] == pytest.approx(whole.intermediate_values[epoch],
                                                                rel=1e-5, abs=1e-7)

    # The checkpoint went with the trial's end.
    assert not list((tmp_path / "checkpoints").rglob("*")), list((tmp_path / "checkpoints").rglob("*"))


@pytest.mark.e2e  # with the SIGTERM case below in make test, this one in make test-e2e
def test_a_trial_killed_mid_training_resumes_from_its_last_checkpoint(tmp_path):
    # Rule: SIGKILL after two epochs (no chance to say anything): the heartbeat finds the trial
    # lost, fails it and queues its copy, which resumes from the last whole checkpoint (at most
    # one epoch trained again) and ends on the value of the trial trained without interruption.
    lost, trials = _preempt(tmp_path, "killed", signal.SIGKILL)
    _assert_resumed(tmp_path, lost, trials, recomputed_at_most=1)


def test_a_trial_stopped_by_sigterm_resumes_from_the_epoch_it_stopped_at(tmp_path):
    # Rule: SIGTERM (docker stop, scancel, a pod deleted): the worker stops at its next batch,
    # fails the trial as interrupted with its checkpoint written, and the copy resumes there:
    # only the epoch that was cut is trained again.
    lost, trials = _preempt(tmp_path, "stopped", signal.SIGTERM)
    assert lost.user_attrs["fail_reason"] == "interrupted"
    _assert_resumed(tmp_path, lost, trials, recomputed_at_most=0)
    # `hpo status` says which trial went on from which.
    out = hpo_cmd(tmp_path, "status", "stopped", "--storage", f"sqlite:///{tmp_path / 'hpo.db'}")
    copy = next(t for t in trials if t.system_attrs.get("failed_trial") == lost.number)
    epoch = copy.user_attrs[RESUMED_KEY]["epoch"]
    assert f"interrupted; rerun as trial {copy.number}" in out.stdout, out.stdout
    assert f"resumed trial {lost.number} at epoch {epoch}" in out.stdout, out.stdout


@pytest.mark.e2e
def test_checkpoints_off_starts_the_copy_from_epoch_0(tmp_path):
    # Rule: study.checkpoint off: nothing is written, and the copy of a stopped trial trains from
    # epoch 0 (as before checkpoints existed).
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    write_study_files(tmp_path, "off", n_trials=1, n_data=600, base=BASE, heartbeat_s=1,
                      grace_s=3, checkpoint="off")
    create_study(tmp_path, storage)
    a = start_worker(tmp_path, "off", storage, "a.log")
    wait_for(lambda: (t := running_trial_of(storage, "off", a.pid)) is not None
             and len(t.intermediate_values) >= 2, 180, "two epochs", poll=0.1)
    a.send_signal(signal.SIGTERM)
    a.wait(timeout=60)
    assert not (tmp_path / "checkpoints").exists()
    b = start_worker(tmp_path, "off", storage, "b.log")
    assert finish(b, 300, tmp_path / "b.log") == 0
    copy = next(t for t in trials_of(storage, "off") if t.system_attrs.get("failed_trial") == 0)
    assert copy.state == TrialState.COMPLETE and RESUMED_KEY not in copy.user_attrs


def test_a_checkpoint_folder_that_cannot_be_written_fails_the_launch_naming_it(tmp_path):
    # Bad input: a checkpoint_dir under a file: `hpo launch` refuses at once in one line, before
    # any study exists; so does a worker joining a study whose folder it cannot write.
    (tmp_path / "blocker").write_text("a file")
    write_study_files(tmp_path, "unwritable", n_trials=1, checkpoint_dir="blocker/checkpoints")
    out = hpo_cmd(tmp_path, "launch", "space.yaml", "--workers", "1")
    assert out.returncode != 0
    assert "study.checkpoint_dir blocker/checkpoints" in out.stderr and "not a folder" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "hpo.db").exists()
