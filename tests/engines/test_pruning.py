"""The pruning callback, alone and in a real study: reports every epoch, and bad trials are cut."""

from __future__ import annotations

import subprocess
import sys

import optuna
import pytest
import yaml

from hpo.engines.pruning import PruningCallback
from hpo.errors import ConfigError
from tests.conftest import make_signal_data
from tests.conftest import write_h5


def _trial(pruner: optuna.pruners.BasePruner) -> optuna.Trial:
    return optuna.create_study(pruner=pruner).ask()


def test_it_reports_the_monitored_metric_at_each_epoch():
    # Rule: each epoch end reports logs[monitor] at step = epoch; a trial the pruner keeps goes on.
    trial = _trial(optuna.pruners.NopPruner())
    callback = PruningCallback(trial, "val_rmse")
    for epoch, value in enumerate([0.5, 0.4, 0.3]):
        callback.on_epoch_end(epoch, {"loss": 1.0, "val_rmse": value, "val_residual_std": 9.0})
    frozen = trial.study.trials[0]
    assert frozen.intermediate_values == {0: 0.5, 1: 0.4, 2: 0.3}
    assert callback.last_epoch == 2


def test_it_raises_trial_pruned_at_the_epoch_the_pruner_says():
    # Rule: the epoch at which the pruner's verdict turns is the one that raises TrialPruned,
    # after reporting its value; warm-up epochs are never cut.
    trial = _trial(optuna.pruners.ThresholdPruner(upper=0.35, n_warmup_steps=1))
    callback = PruningCallback(trial)
    callback.on_epoch_end(0, {"val_residual_std": 0.9})  # warm-up: kept although above
    callback.on_epoch_end(1, {"val_residual_std": 0.3})
    with pytest.raises(optuna.TrialPruned, match="epoch 2"):
        callback.on_epoch_end(2, {"val_residual_std": 0.4})
    assert trial.study.trials[0].intermediate_values == {0: 0.9, 1: 0.3, 2: 0.4}
    assert callback.last_epoch == 2


def test_a_metric_missing_from_the_logs_is_an_error_not_an_unpruned_trial():
    # Rule: a misspelt monitor fails loudly, naming what the logs have.
    callback = PruningCallback(_trial(optuna.pruners.MedianPruner()), "val_residual")
    with pytest.raises(ConfigError, match="'val_residual' is not in the epoch logs.*val_residual_std"):
        callback.on_epoch_end(0, {"loss": 1.0, "val_residual_std": 0.4})


@pytest.mark.slow
@pytest.mark.e2e
def test_a_study_with_a_pruner_prunes_its_hopeless_trials(tmp_path):
    # Rule: end to end through `hpo launch`, a median pruner cuts trials whose learning rate
    # cannot learn in time: some trials end PRUNED, each after fewer epochs than its budget, its
    # MLflow run ended FINISHED with hpo.state PRUNED; the study still spends its budget.
    write_h5(tmp_path / "signal.h5", make_signal_data(300))
    space = {
        "study": {"name": "prunes", "n_trials": 6, "sampler": {"type": "grid"},
                  "pruner": {"type": "median", "n_startup_trials": 2, "n_warmup_steps": 1}},
        "data": {"path": "signal.h5"},
        "base": {"model": {"conv_blocks": [[4], [4]], "pool": {"size": 2}, "dense": [16]},
                 "train": {"epochs": 6, "batch_size": 32}},
        "params": {"train.optimizer.learning_rate": {"categorical": [3e-3, 1e-3, 2e-3, 1e-9, 2e-9, 3e-9]}},
    }
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    proc = subprocess.run([sys.executable, "-m", "hpo", "launch", "space.yaml", "--workers", "1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={"PATH": "/usr/bin:/bin", "HPO_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = optuna.load_study(study_name="prunes", storage=f"sqlite:///{tmp_path / 'hpo.db'}")
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned, [(t.params, t.state.name, t.intermediate_values) for t in study.trials]
    assert all(t.params["train.optimizer.learning_rate"] < 1e-8 for t in pruned)
    assert all(t.user_attrs["epochs_run"] < 6 for t in pruned)
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for t in pruned:
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        assert run.info.status == "FINISHED" and run.data.tags["hpo.state"] == "PRUNED"
    done = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(done) == 6
