"""Worker loop on SQLite: a NaN loss fails only its trial, with the reason; the worker goes on."""

from __future__ import annotations

import contextlib

import pytest
import yaml
from optuna.trial import TrialState

from tests._workers import TINY
from tests._workers import create_study
from tests._workers import hpo_cmd
from tests._workers import mlflow_client
from tests._workers import store_space
from tests._workers import trials_of
from tests._workers import write_study_files

pytestmark = pytest.mark.slow


def test_nan_loss_fails_its_trial_with_the_reason_and_the_worker_goes_on(tmp_path):
    # Rule: a trial whose loss turns NaN ends FAIL with the reason (trial attr and MLflow tag), its
    # run
    # FAILED; the worker runs the next trial and spends the budget.
    from hpo.launch.worker import run_worker

    write_study_files(
        tmp_path,
        "nan",
        n_trials=None,
        sampler={"type": "grid"},
        params={"train.optimizer.learning_rate": {"categorical": [1.0e30, 3.0e-3]}},
    )
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    create_study(tmp_path, storage)
    with contextlib.chdir(tmp_path):
        ran = run_worker("nan", storage, f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert ran == 2
    by_state = {t.state: t for t in trials_of(storage, "nan")}
    assert set(by_state) == {TrialState.FAIL, TrialState.COMPLETE}
    failed = by_state[TrialState.FAIL]
    assert failed.params["train.optimizer.learning_rate"] == 1.0e30
    assert failed.user_attrs["fail_reason"].startswith("training loss became nan")
    run = mlflow_client(tmp_path).get_run(failed.user_attrs["mlflow_run_id"])
    assert (
        run.info.status == "FAILED"
        and run.data.tags["hpo.fail_reason"] == failed.user_attrs["fail_reason"]
    )


def test_enqueued_points_run_first_and_improving_trials_alone_keep_their_model(tmp_path):
    # Rule: study.enqueue's points are the study's first trials; with tracking.log_models
    # improving, a COMPLETE trial logs its model only if it beats every trial finished before it
    # (the worse one is tagged hpo.model_logged false and has no model URI).
    from hpo.launch.worker import run_worker

    space = write_study_files(
        tmp_path, "improving", n_trials=2,
        params={"train.optimizer.learning_rate": {"categorical": [3.0e-3, 1.0e-9]}},
        enqueue=[{"train.optimizer.learning_rate": 3.0e-3}, {"train.optimizer.learning_rate": 1.0e-9}],
    )
    raw = yaml.safe_load(space.read_text())
    space.write_text(yaml.safe_dump({**raw, "tracking": {"log_models": "improving"}}))
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    create_study(tmp_path, storage)
    with contextlib.chdir(tmp_path):
        run_worker("improving", storage, f"sqlite:///{tmp_path / 'mlflow.db'}")
    good, bad = sorted(trials_of(storage, "improving"), key=lambda t: t.number)
    assert [good.params["train.optimizer.learning_rate"], bad.params["train.optimizer.learning_rate"]] == [3.0e-3, 1.0e-9]
    assert good.state == bad.state == TrialState.COMPLETE and bad.value > good.value
    assert "mlflow_model_uri" in good.user_attrs and "mlflow_model_uri" not in bad.user_attrs
    client = mlflow_client(tmp_path)
    assert client.get_run(bad.user_attrs["mlflow_run_id"]).data.tags["hpo.model_logged"] == "false"
    tags = client.get_run(good.user_attrs["mlflow_run_id"]).data.tags
    assert tags["hpo.keras_backend"] in ("tensorflow", "jax") and tags["hpo.device"] == "cpu"


def test_study_metric_val_rmse_is_the_trial_value_and_what_the_pruner_sees(tmp_path):
    # Rule: with study.metric val_rmse a trial's value is its final validation rmse, and the values
    # reported to the pruner each epoch are the val_rmse logged to MLflow for that epoch.
    from hpo.launch.worker import run_worker

    write_study_files(tmp_path, "rmse", n_trials=1, metric="val_rmse")
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    create_study(tmp_path, storage)
    with contextlib.chdir(tmp_path):
        run_worker("rmse", storage, f"sqlite:///{tmp_path / 'mlflow.db'}")
    (trial,) = trials_of(storage, "rmse")
    assert trial.state == TrialState.COMPLETE
    assert trial.value == trial.user_attrs["val_metrics"]["rmse"] != trial.user_attrs["val_metrics"]["residual_std"]
    history = mlflow_client(tmp_path).get_metric_history(trial.user_attrs["mlflow_run_id"], "val_rmse")
    assert trial.intermediate_values == {m.step: pytest.approx(m.value, rel=1e-6) for m in history}


def test_a_streamed_file_replaced_while_the_study_runs_fails_its_trials_with_the_reason(tmp_path):
    # Rule: a worker whose streamed data file is no longer the one the study began on trains
    # nothing: each trial fails naming the file and both fingerprints, and the worker stops.
    from hpo.errors import HpoError
    from hpo.launch.worker import run_worker
    from tests._workers import TINY
    from tests.conftest import make_signal_data
    from tests.conftest import write_h5

    write_study_files(tmp_path, "swap", n_trials=2, base={**TINY, "data": {"max_in_memory_gb": 1e-6}})
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    create_study(tmp_path, storage)
    write_h5(tmp_path / "signal.h5", make_signal_data(200, seed=8))  # regenerated at the same path
    with contextlib.chdir(tmp_path), pytest.raises(HpoError, match="changed while the study ran"):
        run_worker("swap", storage, f"sqlite:///{tmp_path / 'mlflow.db'}")
    trials = trials_of(storage, "swap")
    assert trials and all(t.state == TrialState.FAIL for t in trials)
    assert all(t.user_attrs["fail_reason"].startswith("data: data file ") for t in trials)
    assert all("signal.h5 changed while the study ran" in t.user_attrs["fail_reason"] for t in trials)


def test_a_trial_that_keras_refuses_fails_alone_and_the_worker_goes_on(tmp_path):
    # Rule: any error inside a trial (here Keras refusing a 40-pixel kernel with padding valid on
    # 16-pixel images, a config failure), not only the product's own, ends that trial FAIL with
    # the reason (trial attr, MLflow run FAILED); the worker runs the next trial and spends the
    # budget.
    from hpo.launch.worker import run_worker

    write_study_files(
        tmp_path, "refused", n_trials=None, sampler={"type": "grid"},
        base={**TINY_VALID}, params={"model.kernel_size": {"categorical": [3, 2]}},
    )
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    create_study(tmp_path, storage)
    # `hpo launch` refuses a kernel of 40 now; a study stored before it did still runs.
    store_space(tmp_path, storage, "refused",
                params={"model.kernel_size": {"categorical": [40, 2]}})
    with contextlib.chdir(tmp_path):
        ran = run_worker("refused", storage, f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert ran == 2
    by_kernel = {t.params["model.kernel_size"]: t for t in trials_of(storage, "refused")}
    bad, good = by_kernel[40], by_kernel[2]
    assert bad.state == TrialState.FAIL and good.state == TrialState.COMPLETE
    assert bad.user_attrs["fail_reason"].startswith(
        "config: the network cannot be built on 16 x 16 x 2 images: Computed output size")
    run = mlflow_client(tmp_path).get_run(bad.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and run.data.tags["hpo.fail_reason"] == bad.user_attrs["fail_reason"]


TINY_VALID = {
    "model": {"conv_blocks": [[4], [4]], "pool": {"size": 2}, "dense": [16], "padding": "valid"},
    "train": {"epochs": 2, "batch_size": 32, "optimizer": {"learning_rate": 3e-3}},
}


def test_a_trial_refused_for_its_config_says_so_and_is_not_a_lost_worker(tmp_path):
    # Rule: a trial whose point is no valid config (dropout after the third dense layer of a
    # one-layer choice) ends FAIL with a reason of kind "config:", shown by `hpo status`, not
    # "worker lost (no heartbeat)"; after 5 such failures in a row the worker exits 1, one line.
    one_dense = {**TINY, "model": {**TINY["model"], "dense": [16, 8, 4],
                                   "dropout": {"placement": "one_dense", "index": 0}}}
    write_study_files(tmp_path, "kinds", n_trials=1, base=one_dense,
                      params={"model.dense": {"categorical": [[16, 8, 4]]},
                              "model.dropout.index": {"int": [0, 2]}})
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    create_study(tmp_path, storage)
    # Each param alone is valid; together, never: `hpo launch` refuses such a space now.
    store_space(tmp_path, storage, "kinds", params={"model.dense": {"categorical": [[16]]},
                                                    "model.dropout.index": {"int": [2, 2]}})
    worker = hpo_cmd(tmp_path, "worker", "--study", "kinds", "--storage", storage,
                     "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert worker.returncode == 1
    assert worker.stderr.splitlines()[-1].startswith(
        "hpo: error: study 'kinds': 5 trials in a row failed; last: config: trial 4: ")
    status = hpo_cmd(tmp_path, "status", "kinds", "--storage", storage)
    assert status.returncode == 0 and "worker lost" not in status.stdout, status.stdout
    rows = [line for line in status.stdout.splitlines()[1:] if line.strip()]
    assert len(rows) == 5, status.stdout
    assert all("FAIL" in r and "config: trial" in r for r in rows), status.stdout
    assert all("dropout.index must address one of 1 dense layers" in t.user_attrs["fail_reason"]
               for t in trials_of(storage, "kinds"))


def test_a_trial_a_peer_fails_as_it_completes_keeps_its_run_killed(tmp_path, monkeypatch):
    # Rule: a peer that fails a trial as lost in the moment between its worker's last write to the
    # trial and the end of its MLflow run (the worker ends the run FINISHED after the peer's
    # KILLED; Optuna then refuses the worker's result) leaves the run KILLED with the peer's
    # reason: the worker ends it KILLED again; the re-queued copy completes.
    import optuna

    from hpo.config.space import load_space
    from hpo.store.heartbeat import StaleTrialHandler
    from hpo.tracking.reconcile import KillLostRuns
    from hpo.launch.worker import run_worker
    from hpo.tracking.runs import Tracker

    space_path = write_study_files(tmp_path, "race", n_trials=1)
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    create_study(tmp_path, storage)
    space = load_space(space_path)
    finish_run = Tracker.finish_trial_run
    lost = []

    def a_peer_fails_it_first(self, run_id, state, **kwargs):
        if state == "COMPLETE" and not lost:
            study = optuna.load_study(study_name="race", storage=storage)
            trial = next(t for t in study.get_trials() if t.user_attrs.get("mlflow_run_id") == run_id)
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            StaleTrialHandler(space, KillLostRuns(self))(study, trial)  # what the reaper does
            lost.append(trial)
        return finish_run(self, run_id, state, **kwargs)

    monkeypatch.setattr(Tracker, "finish_trial_run", a_peer_fails_it_first)
    with contextlib.chdir(tmp_path):
        run_worker("race", storage, f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert len(lost) == 1
    trials = {t.number: t for t in trials_of(storage, "race")}
    assert trials[lost[0].number].state == TrialState.FAIL
    run = mlflow_client(tmp_path).get_run(lost[0].user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED", run.info.status
    assert "no heartbeat" in run.data.tags["hpo.fail_reason"]
    copies = [t for t in trials.values() if t.number != lost[0].number]
    assert [(t.state, t.params) for t in copies] == [(TrialState.COMPLETE, lost[0].params)]
