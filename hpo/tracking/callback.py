"""Keras callback that logs every epoch's metrics to the trial's MLflow run."""

from __future__ import annotations

from typing import Any

import keras

from hpo.tracking.runs import Tracker


class MlflowEpochLogger(keras.callbacks.Callback):
    """Sends loss and the val_*/train_* metrics of each epoch to `run_id`, step = epoch.

    step_offset: epochs the model trained before this fit (a warm-started trial), added to steps.
    history: what it sent, per metric (this fit only): the loss curves of a trial cut short.
    """

    def __init__(self, tracker: Tracker, run_id: str, *, step_offset: int = 0) -> None:
        super().__init__()
        self.tracker, self.run_id, self.step_offset = tracker, run_id, step_offset
        self.history: dict[str, list[float]] = {}

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        metrics = {k: float(v) for k, v in (logs or {}).items() if isinstance(v, (int, float))}
        lr = getattr(self.model.optimizer, "learning_rate", None)
        if lr is not None:
            metrics["learning_rate"] = float(keras.ops.convert_to_numpy(lr))
        for key, value in metrics.items():
            self.history.setdefault(key, []).append(value)
        self.tracker.log_epoch(self.run_id, metrics, step=epoch + self.step_offset)
