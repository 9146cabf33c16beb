"""A pruned trial's MLflow run shows why it was cut: its loss curves up to the pruning epoch."""

from __future__ import annotations

import optuna
import pytest

from hpo.config.space import parse_space
from hpo.data.contract import load_dataset
from hpo.engines.objective import Objective
from hpo.tracking import Tracker
from hpo.tracking.recorder import trial_recorders
from tests.cli.test_end_to_end import TINY

pytestmark = pytest.mark.slow


def test_a_pruned_trial_logs_its_loss_curves(signal_h5, tmp_path, monkeypatch):
    # Rule: a trial stopped by the pruner after epoch 2 ends PRUNED with plots/loss_curves.png and
    # both epochs' metrics (the pruning epoch included), and no model.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
    space = parse_space({"study": {"name": "p", "n_trials": 1}, "data": {"path": str(signal_h5)},
                         "base": {**TINY, "train": {**TINY["train"], "epochs": 4}}}, source="p.yaml")
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", retry_window_s=0)
    experiment = tracker.experiment_id("p")
    parent = tracker.start_study_run(experiment, "p", "", {})
    objective = Objective(space, load_dataset(signal_h5),
                          trial_recorders(tracker, experiment_id=experiment, parent_run_id=parent, study="p"))
    # Any residual std is above 0: pruned at the first epoch the pruner may judge (after epoch 2).
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=0.0, n_warmup_steps=1))
    study.optimize(objective, n_trials=1)

    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED
    run = tracker.client.get_run(trial.user_attrs["mlflow_run_id"])
    assert run.data.tags["hpo.state"] == "PRUNED" and run.data.tags["hpo.pruned_at_epoch"] == "2"
    assert [m.step for m in tracker.client.get_metric_history(run.info.run_id, "val_residual_std")] == [0, 1]
    plots = {a.path for a in tracker.client.list_artifacts(run.info.run_id, "plots")}
    assert plots == {"plots/loss_curves.png"}
