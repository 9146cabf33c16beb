"""Where a trial's run is recorded: the interface, and the recorder that records nothing.

    hpo worker ...                     # tracking.recorder.MlflowRecorder: one MLflow run per trial
    run_trial(cfg, ds, NullRecorder())  # a trial where MLflow is not installed (tests, GPU scripts)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING
from typing import Any
from typing import Protocol

if TYPE_CHECKING:
    from hpo.config.tree import RunConfig
    from hpo.data.contract import Dataset
    from hpo.data.lazy import H5Source
    from hpo.training.loop import TrainResult


class Recorder(Protocol):
    """One trial's run, from `start` to `finish`; trial.runner calls these in this order.

    `finish` ends the run in a final state: COMPLETE, PRUNED, FAIL or KILLED (as Optuna names
    them; an MLflow run ends FINISHED, FINISHED, FAILED, KILLED).
    """

    run_id: str | None

    def start(self, cfg: RunConfig) -> None:
        """Creates the run and records `cfg`; if recording fails, ends the run and raises."""

    def set_tags(self, tags: dict[str, Any]) -> None:
        """Labels of the run (engine, keras-tuner bracket...)."""

    def log_inputs(self, cfg: RunConfig, dataset: Dataset | H5Source) -> None:
        """The data the run reads: file, fingerprint, split."""

    def log_epoch(self, metrics: dict[str, float], step: int) -> None:
        """One epoch's loss and metrics."""

    def log_pruned(self, history: dict[str, list[float]], epochs: int) -> None:
        """What a pruned run leaves: its curves up to the epoch it was cut at."""

    def log_result(self, result: TrainResult, dataset: Dataset | H5Source, *, log_model: bool) -> str | None:
        """Final metrics, plots and (with `log_model`) the model; returns the model's URI or None."""

    def finish(self, state: str, *, epochs_run: int | None = None, reason: str | None = None) -> None:
        """Ends the run in `state`, with the epochs trained and why it failed."""


class RecorderFactory(Protocol):
    """Makes the recorder of a study's trial <number>; `created`, if given, gets its run id as
    soon as the run exists."""

    def __call__(self, number: int, created: Callable[[str], Any] | None = None) -> Recorder: ...


def no_recorder(number: int, created: Callable[[str], Any] | None = None) -> Recorder:
    """A RecorderFactory of trials recorded nowhere but in the study (no MLflow, tests, benchmarks)."""
    return NullRecorder()


class NullRecorder:
    """Records nothing: a trial run where no tracking is wanted or MLflow is not installed."""

    run_id: str | None = None

    def start(self, cfg: RunConfig) -> None:
        pass

    def set_tags(self, tags: dict[str, Any]) -> None:
        pass

    def log_inputs(self, cfg: RunConfig, dataset: Dataset | H5Source) -> None:
        pass

    def log_epoch(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_pruned(self, history: dict[str, list[float]], epochs: int) -> None:
        pass

    def log_result(self, result: TrainResult, dataset: Dataset | H5Source, *, log_model: bool) -> str | None:
        return None

    def finish(self, state: str, *, epochs_run: int | None = None, reason: str | None = None) -> None:
        pass
