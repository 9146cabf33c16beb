"""The per-epoch evaluator: validation (and training) residual metrics, NaN guard, best weights."""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np

from hpo.errors import TrialFailed
from hpo.model.metrics import residual_metrics
from hpo.training.evaluate import predict

MONITOR = "val_residual_std"


class EpochEvaluator(keras.callbacks.Callback):
    """Adds `val_*` and `train_*` residual metrics to each epoch's logs, before other callbacks.

    Keeps the weights of the epoch with the lowest val_residual_std, stops after `patience`
    epochs without improvement, and fails the trial on a non-finite loss.
    """

    def __init__(
        self,
        val: tuple[np.ndarray, np.ndarray, np.ndarray],
        train_sample: tuple[np.ndarray, np.ndarray, np.ndarray],
        *,
        patience: int | None = None,
        batch_size: int = 256,
    ) -> None:
        super().__init__()
        self.val, self.train_sample = val, train_sample
        self._x = np.concatenate([val[0], train_sample[0]])
        self._z = np.concatenate([val[1], train_sample[1]])
        self.patience, self.batch_size = patience, batch_size
        self.best_value = math.inf
        self.best_epoch = -1
        self.best_weights: list[np.ndarray] | None = None
        self.history: dict[str, list[float]] = {}

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs if logs is not None else {}
        loss = float(logs.get("loss", math.nan))
        if not math.isfinite(loss):
            raise TrialFailed(f"training loss became {loss} at epoch {epoch}")
        # One predict call over both sets keeps batch shapes fixed across epochs (no retracing).
        mu, sigma = predict(self.model, self._x, self._z, batch_size=self.batch_size)
        if not np.all(np.isfinite(mu)):
            raise TrialFailed(f"predictions became non-finite at epoch {epoch}")
        n_val = len(self.val[2])
        for prefix, part, y in (("val_", slice(0, n_val), self.val[2]),
                                ("train_", slice(n_val, None), self.train_sample[2])):
            s = None if sigma is None else sigma[part]
            for name, value in residual_metrics(mu[part], y, s).items():
                logs[prefix + name] = value
        for name, value in logs.items():
            self.history.setdefault(name, []).append(float(value))

        value = logs[MONITOR]
        if value < self.best_value:
            self.best_value, self.best_epoch = value, epoch
            self.best_weights = self.model.get_weights()
        elif self.patience is not None and epoch - self.best_epoch >= self.patience:
            self.model.stop_training = True
