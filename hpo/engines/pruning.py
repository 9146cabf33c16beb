"""Keras callback that reports val_residual_std to Optuna each epoch and prunes bad trials."""

from __future__ import annotations

from typing import Any

import keras
import optuna

from hpo.errors import ConfigError
from hpo.keys import METRIC


class PruningCallback(keras.callbacks.Callback):
    """Reports `monitor` at step=epoch; raises optuna.TrialPruned when the pruner says so.

    A missing metric is an error, not a warning: a misspelt name must not train unpruned.
    """

    def __init__(self, trial: optuna.Trial, monitor: str = METRIC) -> None:
        super().__init__()
        self.trial, self.monitor = trial, monitor
        self.last_epoch = -1

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        if self.monitor not in logs:
            raise ConfigError(
                f"pruning metric '{self.monitor}' is not in the epoch logs; found: {sorted(logs)}"
            )
        self.last_epoch = epoch
        self.trial.report(float(logs[self.monitor]), step=epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"Trial was pruned at epoch {epoch}.")
