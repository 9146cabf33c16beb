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
        self.best_weights: Any = None  # what `snapshot` returned at the best epoch
        self.history: dict[str, list[float]] = {}

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs if logs is not None else {}
        loss = float(logs.get("loss", math.nan))
        if not math.isfinite(loss):
            raise TrialFailed(f"training loss became {loss} at epoch {epoch}")
        for kind in STREAMING_KINDS:
            if kind in logs:
                logs["train_" + kind] = logs.pop(kind)
        mu, sigma = self.val_predictions()
        if not np.all(np.isfinite(mu)):
            raise TrialFailed(f"predictions became non-finite at epoch {epoch}")
        for name, value in residual_metrics(mu, self.val[2], sigma).items():
            logs["val_" + name] = value
        for name, value in logs.items():
            self.history.setdefault(name, []).append(float(value))

        value = logs[self.monitor]
        if value < self.best_value:
            self.best_value, self.best_epoch = value, epoch
            self.best_weights = self.snapshot()
        elif self.patience is not None and epoch - self.best_epoch >= self.patience:
            self.model.stop_training = True

    def val_predictions(self) -> tuple[np.ndarray, np.ndarray | None]:
        """mu and sigma (or None) of the validation split, from the model as it is now."""
        x, z, _ = self.val
        return predict(self.model, x, z, exposure=self.exposure, batch_size=self.batch_size)

    def snapshot(self) -> Any:
        """The weights of a new best epoch, as `restore_best` takes them back."""
        return self.model.get_weights()

    def restore_best(self) -> None:
        """Sets the model to the weights of its best epoch (if one was scored)."""
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)

    def export_best(self) -> list[np.ndarray] | None:
        """The best epoch's weights as host arrays (for a checkpoint), None before one."""
        return None if self.best_weights is None else [np.array(w) for w in self.best_weights]

    def import_best(self, weights: list[np.ndarray] | None) -> None:
        """Takes back what `export_best` gave (a resumed run)."""
        self.best_weights = None if weights is None else list(weights)


def learning_rate(model: keras.Model) -> float:
    """The optimizer's learning rate now (a schedule's value at its iteration count).

    The device loop reads it at each epoch end before it dispatches the next epoch and keeps it
    on the model: computed later, by a callback, it would be a device operation queued behind
    that whole epoch.
    """
    known = getattr(model, "_epoch_learning_rate", None)
    return current_learning_rate(model) if known is None else float(known)


def current_learning_rate(model: keras.Model) -> float:
    """The optimizer's learning rate computed now (a device operation on JAX)."""
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
