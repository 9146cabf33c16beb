"""Stopping a worker on SIGINT or SIGTERM at a safe point: Ctrl-C, `docker stop`, pod deletion.

    hpo worker --study quickstart --storage sqlite:///hpo.db     # then Ctrl-C

The first signal during a trial stops its training at the end of the current batch: a Keras
callback raises KeyboardInterrupt there, so the trial ends FAIL with reason "interrupted", its
MLflow run KILLED, and its parameters are queued again for the next worker (worker.py; raised
from the signal handler itself, the interrupt can surface inside TensorFlow's C++ code as an
unrelated SystemError); a trial past its training finishes. Outside a trial the first signal
stops the worker at once; a second signal always does.
"""

from __future__ import annotations

import logging
import signal
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import keras
import optuna

_logger = logging.getLogger(__name__)


class StopRequest:
    """Whether the worker was asked to stop, and whether a training step may still finish first."""

    def __init__(self) -> None:
        self.requested = False
        self._in_trial = False

    def install(self) -> StopRequest:
        """Handles SIGINT and SIGTERM from now on (main thread only); returns self."""
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        return self

    @contextmanager
    def in_trial(self) -> Iterator[None]:
        """Inside, a first signal only sets `requested`: StopCheck stops training at a batch end,
        and a trial past its training finishes; the worker loop then calls `check`."""
        self._in_trial = True
        try:
            yield
        finally:
            self._in_trial = False

    def check(self) -> None:
        """Raises KeyboardInterrupt if a stop was requested."""
        if self.requested:
            raise KeyboardInterrupt

    def _on_signal(self, signum: int, frame: types.FrameType | None) -> None:
        first = not self.requested
        self.requested = True
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # not Optuna's traceback of the stop
        if first and self._in_trial:
            _logger.warning(
                "signal %d: stopping the running trial at its next training batch", signum
            )
            return
        raise KeyboardInterrupt


class StopCheck(keras.callbacks.Callback):
    """Raises KeyboardInterrupt at the end of a training batch once a stop was requested."""

    def __init__(self, stop: StopRequest) -> None:
        super().__init__()
        self.stop = stop

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.stop.check()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.stop.check()
