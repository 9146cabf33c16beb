"""The Optuna objective: config from the trial, train with pruning, log the trial's MLflow run.

    hpo worker --study quickstart --storage sqlite:///hpo.db
"""

from __future__ import annotations

import logging
import os
import socket

import optuna

from hpo.data.contract import Dataset
from hpo.data.lazy import H5Source
from hpo.errors import ConfigError
from hpo.errors import DataContractError
from hpo.errors import HpoError
from hpo.errors import TrackingError
from hpo.errors import TrialFailed
from hpo.objective.keys import CONFIG_KEY
from hpo.objective.keys import EPOCHS_RUN_KEY
from hpo.objective.keys import FAIL_REASON_KEY
from hpo.objective.keys import MLFLOW_RUN_ID_KEY
from hpo.objective.keys import MODEL_URI_KEY
from hpo.objective.keys import VAL_METRICS_KEY
from hpo.objective.keys import WORKER_KEY
from hpo.objective.pruning import PruningCallback
from hpo.objective.space import METRICS
from hpo.objective.space import SearchSpace
from hpo.objective.suggest import config_for_trial
from hpo.redact import redact_text
from hpo.study.interrupt import StopCheck
from hpo.study.interrupt import StopRequest
from hpo.tracking import plots
from hpo.tracking.callback import MlflowEpochLogger
from hpo.tracking.datasets import log_data_inputs
from hpo.tracking.runs import Tracker
from hpo.tracking.trial_artifacts import LOSS_CURVES
from hpo.tracking.trial_artifacts import log_trial_artifacts
from hpo.training.loop import train

_logger = logging.getLogger(__name__)


class Objective:
    """Callable for study.optimize; every trial ends with its MLflow run ended too."""

    def __init__(
        self,
        space: SearchSpace,
        dataset: Dataset | H5Source,
        tracker: Tracker,
        *,
        experiment_id: str,
        parent_run_id: str | None,
        stop: StopRequest | None = None,
        data_sha256: str | None = None,
    ) -> None:
        self.space, self.dataset, self.tracker = space, dataset, tracker
        # The study's data fingerprint: a streamed file must still be the file the study began on.
        self.data_sha256 = data_sha256 or dataset.fingerprint()["sha256"]
        self.experiment_id, self.parent_run_id = experiment_id, parent_run_id
        self.stop = stop  # a signal then ends training at a batch end
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.trial_number: int | None = None  # the trial this worker runs or ran last

    def __call__(self, trial: optuna.Trial) -> float:
        self.trial_number = trial.number
        trial.set_user_attr(WORKER_KEY, self.worker)
        try:  # a trial that fails before it has a run still says why (not "worker lost")
            cfg = config_for_trial(trial, self.space)
            trial.set_user_attr(CONFIG_KEY, cfg.model_dump(mode="json"))
            # The run id goes on the trial the moment the run exists; a worker that dies before
            # that leaves a run that only its tags (hpo.study, hpo.trial) tie to the trial.
            run_id = self.tracker.start_trial_run(
                self.experiment_id, self.parent_run_id, self.space.study.name, trial.number, cfg,
                created=lambda run_id: trial.set_user_attr(MLFLOW_RUN_ID_KEY, run_id),
            )
        except Exception as exc:  # the run, if any, was ended by start_trial_run
            self._fail(trial, None, fail_reason(exc), "FAIL")
            raise
        pruning = PruningCallback(trial, self.space.study.metric)
        epochs_log = MlflowEpochLogger(self.tracker, run_id)
        callbacks = [epochs_log, pruning]  # the epoch that gets a trial pruned is logged too
        if self.stop is not None:
            callbacks.append(StopCheck(self.stop))
        try:
            log_data_inputs(self.tracker, run_id, cfg, self.dataset)
            self._check_data()
            result = train(cfg, self.dataset, callbacks=callbacks, monitor=self.space.study.metric)
            self._check_data()
            value = result.val_metrics[METRICS[self.space.study.metric]]
            # Inside the try: a failure while logging must still end the run.
            model_uri = log_trial_artifacts(self.tracker, run_id, result, self.dataset,
                                            log_model=self._keeps_model(trial, value))
        except optuna.TrialPruned:
            epochs = pruning.last_epoch + 1
            trial.set_user_attr(EPOCHS_RUN_KEY, epochs)
            try:  # why it was cut: the curves it has, up to the pruning epoch
                self.tracker.log_figure(run_id, plots.loss_curves(epochs_log.history, pruned_at=epochs),
                                        LOSS_CURVES)
            finally:
                self.tracker.finish_trial_run(run_id, "PRUNED", epochs_run=epochs)
            raise
        except TrialFailed as exc:
            self._fail(trial, run_id, fail_reason(exc), "FAIL")
            raise
        except KeyboardInterrupt:
            self._fail(trial, run_id, "interrupted", "KILLED")
            raise
        except optuna.exceptions.UpdateFinishedTrialError:
            # A peer failed this trial as lost (it saw no heartbeat: a partition, a long outage)
            # and ended its run KILLED: leave both so; the worker says so and goes on.
            raise
        except Exception as exc:
            self._fail(trial, run_id, fail_reason(exc), "FAIL")
            raise

        trial.set_user_attr(EPOCHS_RUN_KEY, result.epochs_run)
        trial.set_user_attr("best_epoch", result.best_epoch)
        if model_uri is not None:
            trial.set_user_attr(MODEL_URI_KEY, model_uri)
        trial.set_user_attr(VAL_METRICS_KEY, result.val_metrics)
        try:
            self.tracker.finish_trial_run(run_id, "COMPLETE", epochs_run=result.epochs_run)
        except Exception as exc:  # the tracking server went away: the trial fails with the reason
            self._fail(trial, run_id, fail_reason(exc), "FAIL")
            raise
        return value

    def _keeps_model(self, trial: optuna.Trial, value: float) -> bool:
        """The space's tracking.log_models policy for a trial that ended with `value`."""
        policy = self.space.tracking.log_models
        if policy != "improving":
            return policy == "all"
        done = trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        return all(value < t.value for t in done if t.value is not None)

    def _check_data(self) -> None:
        """Raises TrialFailed if the data file is no longer the one the study began on."""
        if isinstance(self.dataset, H5Source):
            now = self.dataset.fingerprint_on_disk()
        else:  # in memory: what this worker trains on, read at its start
            now = self.dataset.fingerprint()["sha256"]
        if now != self.data_sha256:
            raise TrialFailed(
                f"data file {self.dataset.path} changed while the study ran (fingerprint "
                f"{self.data_sha256} at its start, {now} now); restore it, or start a new study "
                "for the new file", kind="data")

    def _fail(self, trial: optuna.Trial, run_id: str | None, reason: str, state: str) -> None:
        reason = redact_text(reason)  # kept in the study and the run: no URL's password
        _logger.warning("trial %d failed: %s", trial.number, reason)
        try:
            # The run first: if a peer already failed this trial as lost, set_user_attr raises.
            if run_id is not None:
                self.tracker.finish_trial_run(run_id, state, reason=reason)
        except Exception as exc:  # noqa: BLE001  the server may be why the trial failed
            # The trial's own error goes on; the run is ended once the server answers
            # (study/reconcile.py).
            _logger.warning("could not end MLflow run %s of trial %d: %s", run_id, trial.number,
                            redact_text(str(exc)))
        finally:
            # Kept even when the tracking server is the reason the trial failed.
            trial.set_user_attr(FAIL_REASON_KEY, reason[:2000])


def fail_reason(exc: BaseException) -> str:
    """A failed trial's reason, prefixed with what failed (`hpo status` shows it): "config: " a
    point no network or split can be made of, "data: " the data file, "tracking: " the MLflow
    store; no prefix for the training itself (NaN loss, out of memory, a library error)."""
    text = str(exc) if isinstance(exc, HpoError) else f"{type(exc).__name__}: {exc}"
    kind = fail_kind(exc)
    return f"{kind}: {text}" if kind else text


def fail_kind(exc: BaseException) -> str | None:
    if isinstance(exc, TrackingError) or type(exc).__module__.startswith("mlflow"):
        return "tracking"
    if isinstance(exc, TrialFailed):
        return exc.kind
    if isinstance(exc, ConfigError):
        return "config"
    if isinstance(exc, DataContractError):
        return "data"
    return None
