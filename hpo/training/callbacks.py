"""The per-epoch evaluator: validation (and training) residual metrics, NaN guard, best weights."""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np

from hpo.errors import TrialFailed
from hpo.keys import METRIC
from hpo.model.metrics import residual_metrics
from hpo.model.metrics import STREAMING_KINDS
from hpo.training.evaluate import predict

MONITOR = METRIC


class EpochEvaluator(keras.callbacks.Callback):
    """Adds `val_*` residual metrics to each epoch's logs, before the other callbacks see them.

    `val` is (images, redshift, log_mass) of the validation split; `exposure` its exposure_s,
    for a model that takes it.

    Training-split metrics come from the streaming metrics compiled into the model (scored on the
    training batches as they pass, dropout and augmentation on); they are renamed `train_*`.

    Keeps the weights of the epoch with the lowest `monitor` (a val_* metric, default
    val_residual_std), stops after `patience` epochs without improvement, and fails the trial on
    a non-finite loss.
    """

    def __init__(
        self,
        val: tuple[np.ndarray, np.ndarray, np.ndarray],
        *,
        patience: int | None = None,
        batch_size: int = 512,
        monitor: str = MONITOR,
        exposure: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        self.val, self.monitor, self.exposure = val, monitor, exposure
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
        for kind in STREAMING_KINDS:
            if kind in logs:
                logs["train_" + kind] = logs.pop(kind)
        x, z, y = self.val
        mu, sigma = predict(self.model, x, z, exposure=self.exposure, batch_size=self.batch_size)
        if not np.all(np.isfinite(mu)):
            raise TrialFailed(f"predictions became non-finite at epoch {epoch}")
        for name, value in residual_metrics(mu, y, sigma).items():
            logs["val_" + name] = value
        for name, value in logs.items():
            self.history.setdefault(name, []).append(float(value))

        value = logs[self.monitor]
        if value < self.best_value:
            self.best_value, self.best_epoch = value, epoch
            self.best_weights = self.model.get_weights()
        elif self.patience is not None and epoch - self.best_epoch >= self.patience:
            self.model.stop_training = True
