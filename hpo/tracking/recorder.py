"""A trial's run in MLflow: the Recorder that trial.runner records through.

    hpo worker ...   # a nested run trial-<n> under the study's parent run
    hpo train run.yaml   # a standalone run
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hpo.config.tree import RunConfig
from hpo.data.contract import Dataset
from hpo.data.lazy import H5Source
from hpo.tracking import plots
from hpo.tracking.datasets import log_data_inputs
from hpo.tracking.runs import Tracker
from hpo.tracking.trial_artifacts import log_trial_artifacts
from hpo.tracking.trial_artifacts import LOSS_CURVES
from hpo.training.loop import TrainResult
from hpo.trial.recorder import RecorderFactory


class MlflowRecorder:
    """One run in `tracker`: a study's trial (`trial` set) or a standalone `hpo train` run.

    Args:
        experiment_id: the study's experiment; for a standalone run, `experiment` names it.
        parent_run_id: the study's parent run, under which the trial's run nests.
        study, trial: the run's name trial-<trial> and its tags hpo.study and hpo.trial.
        created: called with the run id as soon as the run exists (the Optuna objective records
            it on its trial there, before anything else can fail).
    """

    def __init__(
        self,
        tracker: Tracker,
        *,
        experiment_id: str | None = None,
        parent_run_id: str | None = None,
        study: str | None = None,
        trial: int | None = None,
        created: Callable[[str], Any] | None = None,
        experiment: str | None = None,
        run_name: str | None = None,
    ) -> None:
        self.tracker = tracker
        self.experiment_id, self.parent_run_id = experiment_id, parent_run_id
        self.study, self.trial, self.created = study, trial, created
        self.experiment, self.run_name = experiment, run_name
        self.run_id: str | None = None

    @classmethod
    def standalone(cls, tracker: Tracker, experiment: str, run_name: str | None) -> MlflowRecorder:
        """A run of its own in `experiment` (`hpo train`), not a study's trial."""
        return cls(tracker, experiment=experiment, run_name=run_name)

    def start(self, cfg: RunConfig) -> None:
        if self.trial is None:
            self.run_id = self.tracker.start_single_run(self.experiment or "train", cfg, self.run_name)
            return
        assert self.experiment_id is not None and self.study is not None

        def created(run_id: str) -> None:
            self.run_id = run_id
            if self.created is not None:
                self.created(run_id)

        self.tracker.start_trial_run(self.experiment_id, self.parent_run_id, self.study, self.trial,
                                     cfg, created=created)

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.tracker.set_tags(self._run(), tags)

    def log_inputs(self, cfg: RunConfig, dataset: Dataset | H5Source) -> None:
        log_data_inputs(self.tracker, self._run(), cfg, dataset)

    def log_epoch(self, metrics: dict[str, float], step: int) -> None:
        self.tracker.log_epoch(self._run(), metrics, step=step)

    def log_pruned(self, history: dict[str, list[float]], epochs: int) -> None:
        self.tracker.log_figure(self._run(), plots.loss_curves(history, pruned_at=epochs), LOSS_CURVES)

    def log_result(self, result: TrainResult, dataset: Dataset | H5Source, *, log_model: bool) -> str | None:
        return log_trial_artifacts(self.tracker, self._run(), result, dataset, log_model=log_model)

    def finish(self, state: str, *, epochs_run: int | None = None, reason: str | None = None) -> None:
        if self.trial is None:  # a standalone run has no trial state to tag
            self.tracker.end_run(self._run(), "FINISHED" if state == "COMPLETE" else
                                 {"KILLED": "KILLED"}.get(state, "FAILED"))
            return
        self.tracker.finish_trial_run(self._run(), state, epochs_run=epochs_run, reason=reason)

    def _run(self) -> str:
        assert self.run_id is not None, "start() first"
        return self.run_id


def trial_recorders(
    tracker: Tracker, *, experiment_id: str, parent_run_id: str | None, study: str
) -> RecorderFactory:
    """The recorder of each trial of `study`: a run trial-<n> nested under its parent run."""

    def recorder_for(number: int, created: Callable[[str], Any] | None = None) -> MlflowRecorder:
        return MlflowRecorder(tracker, experiment_id=experiment_id, parent_run_id=parent_run_id,
                              study=study, trial=number, created=created)

    return recorder_for
