"""A worker with study.fuse: trials asked together, those of one network shape trained as one
program (Keras' JAX backend), each ending as the same trial run alone ends.

    KERAS_BACKEND=jax .venv/bin/python -m pytest tests/launch/test_fused_worker.py
"""

from __future__ import annotations

import contextlib

import keras
import pytest
from optuna.trial import TrialState

from tests._workers import TINY
from tests._workers import create_study
from tests._workers import mlflow_client
from tests._workers import trials_of
from tests._workers import write_study_files

pytestmark = pytest.mark.slow
ON_JAX = keras.backend.backend() == "jax"
on_jax = pytest.mark.skipif(not ON_JAX, reason="fused trials train on Keras' JAX backend only "
                            "(make test runs this file again with KERAS_BACKEND=jax)")

RATES = [3.0e-3, 1.0e30, 1.0e-3]  # the middle one's loss turns NaN
BASE = {**TINY, "train": {**TINY["train"], "loop": "device"}}


def _study(tmp_path, name: str, fuse: int) -> dict[float, object]:
    from hpo.launch.worker import run_worker

    cwd = tmp_path / name
    cwd.mkdir()
    write_study_files(cwd, name, n_trials=None, base=BASE, fuse=fuse, sampler={"type": "grid"},
                      params={"train.optimizer.learning_rate": {"categorical": RATES}})
    storage = f"sqlite:///{cwd / 'hpo.db'}"
    create_study(cwd, storage)
    with contextlib.chdir(cwd):
        assert run_worker(name, storage, f"sqlite:///{cwd / 'mlflow.db'}") == len(RATES)
    return {t.params["train.optimizer.learning_rate"]: t for t in trials_of(storage, name)}


@on_jax
def test_fused_trials_end_as_the_same_trials_run_one_at_a_time(tmp_path):
    # Rule: with study.fuse 3 a worker takes the grid's 3 trials at once and trains them as one
    # program: each is still its own trial and MLflow run (tagged hpo.fused 3, metrics per epoch),
    # a NaN fails only its own trial with the reason, and the others end on the values the same
    # trials reach one at a time (float rounding).
    fused = _study(tmp_path, "fused", fuse=3)
    alone = _study(tmp_path, "alone", fuse=1)
    client = mlflow_client(tmp_path / "fused")
    for rate in RATES:
        f, a = fused[rate], alone[rate]
        run = client.get_run(f.user_attrs["mlflow_run_id"])
        assert run.data.tags["hpo.fused"] == "3"
        assert "hpo.fused" not in mlflow_client(tmp_path / "alone").get_run(
            a.user_attrs["mlflow_run_id"]).data.tags
        if rate == 1.0e30:
            assert f.state == a.state == TrialState.FAIL
            assert f.user_attrs["fail_reason"].startswith("training loss became nan")
            assert run.info.status == "FAILED"
            continue
        assert f.state == a.state == TrialState.COMPLETE and run.info.status == "FINISHED"
        assert f.value == pytest.approx(a.value, rel=1e-4, abs=1e-6)
        assert sorted(f.intermediate_values) == sorted(a.intermediate_values) == [0, 1, 2]
        for epoch, value in a.intermediate_values.items():
            assert f.intermediate_values[epoch] == pytest.approx(value, rel=1e-4, abs=1e-6)
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_residual_std")]
        assert steps == [0, 1, 2]
        assert f.user_attrs["epochs_run"] == 3 and "mlflow_model_uri" in f.user_attrs


@on_jax
def test_a_stop_request_ends_every_fused_trial_at_one_epoch_and_queues_each_again(
        tmp_path, monkeypatch):
    # Rule: SIGTERM during a fused program ends each member at the same epoch end, with that
    # epoch reported and checkpointed: each trial FAIL (interrupted), its run KILLED, a copy of
    # it queued, which will resume its own checkpoint.
    from hpo.engines.pruning import PruningCallback
    from hpo.launch.worker import run_worker
    from hpo.training.checkpoint import CheckpointFile
    from hpo.training.stop import StopRequest

    stop = StopRequest()
    report = PruningCallback.on_epoch_end

    def then_signal(self, epoch, logs=None):
        report(self, epoch, logs)
        if epoch == 1:
            stop.requested = True  # as the SIGTERM handler sets it, during the program

    monkeypatch.setattr(PruningCallback, "on_epoch_end", then_signal)
    base = {**BASE, "train": {**BASE["train"], "epochs": 5}}
    write_study_files(tmp_path, "stopped", n_trials=2, base=base, fuse=2,
                      params={"train.optimizer.learning_rate": {"categorical": [3e-3, 1e-3]}},
                      sampler={"type": "grid"})
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    create_study(tmp_path, storage)
    with contextlib.chdir(tmp_path), pytest.raises(KeyboardInterrupt):
        run_worker("stopped", storage, f"sqlite:///{tmp_path / 'mlflow.db'}", stop=stop)
    trials = trials_of(storage, "stopped")
    lost = [t for t in trials if t.state == TrialState.FAIL]
    copies = [t for t in trials if t.state == TrialState.WAITING]
    assert len(lost) == 2 and len(copies) == 2, [t.state for t in trials]
    client = mlflow_client(tmp_path)
    for t in lost:
        assert t.user_attrs["fail_reason"] == "interrupted"
        assert sorted(t.intermediate_values) == [0, 1]
        assert client.get_run(t.user_attrs["mlflow_run_id"]).info.status == "KILLED"
        folder = tmp_path / "checkpoints" / "stopped" / f"trial-{t.number}"
        state = CheckpointFile(folder, {}, trial=t.number)._read()[0]
        assert state.epoch == 2 and state.trial == t.number
    assert sorted(c.system_attrs["failed_trial"] for c in copies) == sorted(t.number for t in lost)


@pytest.mark.skipif(ON_JAX, reason="the refusal of another backend")
def test_a_fused_study_refuses_a_worker_on_tensorflow_in_one_line(tmp_path):
    # Bad input: a worker started without KERAS_BACKEND=jax on a fused study stops before it
    # takes a trial, saying how to start it.
    from hpo.errors import HpoError
    from hpo.launch.worker import run_worker

    write_study_files(tmp_path, "tf", n_trials=2, base=BASE, fuse=2)
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    create_study(tmp_path, storage)
    with contextlib.chdir(tmp_path), pytest.raises(HpoError) as err:
        run_worker("tf", storage, f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert "study.fuse 2" in str(err.value) and "KERAS_BACKEND=jax" in str(err.value)
    assert "\n" not in str(err.value) and trials_of(storage, "tf") == []


@on_jax
def test_a_fused_trial_a_peer_fails_as_lost_leaves_the_others_to_finish(tmp_path, monkeypatch):
    # Rule: a member whose trial a peer fails as lost mid-program (no heartbeat seen) has its
    # next report refused and leaves; the worker says so, leaves that trial FAIL without a reason
    # of its own and its run KILLED, and tells the other members as they end (COMPLETE here).
    import optuna

    from hpo.engines.pruning import PruningCallback
    from hpo.launch.worker import run_worker

    report = PruningCallback.on_epoch_end

    def peer_fails_trial_0(self, epoch, logs=None):
        if self.trial.number == 0 and epoch == 1:  # as a peer's reaper would, between epochs
            storage = self.trial.storage
            storage.set_trial_state_values(self.trial._trial_id, optuna.trial.TrialState.FAIL)
        report(self, epoch, logs)

    monkeypatch.setattr(PruningCallback, "on_epoch_end", peer_fails_trial_0)
    write_study_files(tmp_path, "lost", n_trials=2, base=BASE, fuse=2, max_retry=0,
                      params={"train.optimizer.learning_rate": {"categorical": [3e-3, 1e-3]}},
                      sampler={"type": "grid"})
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    create_study(tmp_path, storage)
    with contextlib.chdir(tmp_path):
        ran = run_worker("lost", storage, f"sqlite:///{tmp_path / 'mlflow.db'}")
    trials = {t.number: t for t in trials_of(storage, "lost")}
    assert trials[0].state == TrialState.FAIL and "fail_reason" not in trials[0].user_attrs
    assert sorted(trials[0].intermediate_values) == [0]
    assert trials[1].state == TrialState.COMPLETE and sorted(trials[1].intermediate_values) == [0, 1, 2]
    assert ran == 1
    client = mlflow_client(tmp_path)
    lost = client.get_run(trials[0].user_attrs["mlflow_run_id"])
    # The peer here ended no run (a reaper ends it with its reason): the worker ends it, saying why.
    assert lost.info.status == "KILLED"
    assert lost.data.tags["hpo.fail_reason"] == "worker lost (no heartbeat)"
    assert client.get_run(trials[1].user_attrs["mlflow_run_id"]).info.status == "FINISHED"
