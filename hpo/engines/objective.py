"""The Optuna objective: a trial's config from its sampled point, run by trial.runner with pruning.

    hpo worker --study quickstart --storage sqlite:///hpo.db
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass

import keras
import optuna

from hpo.config.space import SearchSpace
from hpo.config.tree import RunConfig
from hpo.data.contract import Dataset
from hpo.data.contract import same_data
from hpo.data.lazy import H5Source
from hpo.engines.checkpoints import checkpoint_folder
from hpo.engines.checkpoints import first_of
from hpo.engines.pruning import PruningCallback
from hpo.engines.suggest import config_for_trial
from hpo.errors import TrialFailed
from hpo.keys import BEST_EPOCH_KEY
from hpo.keys import CONFIG_KEY
from hpo.keys import EPOCHS_RUN_KEY
from hpo.keys import FAIL_REASON_KEY
from hpo.keys import MLFLOW_RUN_ID_KEY
from hpo.keys import MODEL_URI_KEY
from hpo.keys import RESUMED_KEY
from hpo.keys import VAL_METRICS_KEY
from hpo.keys import WORKER_KEY
from hpo.training.checkpoint import CheckpointFile
from hpo.training.checkpoint import identity
from hpo.training.checkpoint import TrainingState
from hpo.training.fusion import fusion_key
from hpo.training.stop import StopCheck
from hpo.training.stop import StopRequest
from hpo.trial.recorder import no_recorder
from hpo.trial.recorder import Recorder
from hpo.trial.recorder import RecorderFactory
from hpo.trial.runner import fail_reason
from hpo.trial.runner import run_trial
from hpo.trial.runner import run_trials_fused
from hpo.trial.runner import TrialOutcome

_logger = logging.getLogger(__name__)

@dataclass(eq=False)
class _Job:
    """What a trial runs with, between its set-up (Objective._begin) and its end."""

    pruning: PruningCallback
    callbacks: list[keras.callbacks.Callback]
    cfg: RunConfig
    recorder: Recorder
    checkpoint: CheckpointFile | None
    log_model: Callable[[float], bool]
    resumed: Callable[[TrainingState], None]
    fusion: str  # trials of one fusion key train as one program (Objective.fused)


class Objective:
    """Callable for study.optimize; every trial ends with its run (if recorded) ended too."""

    def __init__(
        self,
        space: SearchSpace,
        dataset: Dataset | H5Source,
        recorder_for: RecorderFactory = no_recorder,
        *,
        stop: StopRequest | None = None,
        data_sha256: str | None = None,
    ) -> None:
        self.space, self.dataset, self.recorder_for = space, dataset, recorder_for
        # The study's data fingerprint: a streamed file must still be the file the study began on.
        self.data_sha256 = data_sha256 or dataset.fingerprint()["sha256"]
        self.stop = stop  # a signal then ends training at a batch end
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.trial_number: int | None = None  # the trial this worker runs or ran last
        self.trial_numbers: list[int] = []  # the trials it runs or ran last, one or fused

    def __call__(self, trial: optuna.Trial) -> float:
        self.trial_number = trial.number
        self.trial_numbers = [trial.number]
        job: _Job | None = None
        try:
            job = self._begin(trial)
            outcome = self._alone(job)
        except BaseException as exc:  # noqa: BLE001  (_end records it and raises it)
            return self._end(trial, job, exc)
        return self._end(trial, job, outcome)

    def fused(self, trials: Sequence[optuna.Trial], *, strategy: str = "auto",
              ) -> list[float | BaseException]:
        """Runs `trials` as __call__ runs each, those of one fusion key (training/fusion.py) as
        one program (trial.runner.run_trials_fused), each still its own trial and run.

        Returns:
            Per trial, its value, or the exception __call__ would have raised for it (for the
            worker to tell the study).
        """
        jobs: list[_Job | None] = []
        ends: list[float | BaseException | None] = [None] * len(trials)
        for i, trial in enumerate(trials):
            try:
                jobs.append(self._begin(trial))
            except BaseException as exc:  # noqa: BLE001  (this trial's own end)
                jobs.append(None)
                ends[i] = self._ended(trial, None, exc)
        by_key: dict[str, list[int]] = {}
        for i, job in enumerate(jobs):
            if job is not None:
                by_key.setdefault(job.fusion, []).append(i)
        for group in by_key.values():
            if self.stop is not None and self.stop.requested:  # the later groups never start
                for i in group:
                    ends[i] = self._ended(trials[i], jobs[i], KeyboardInterrupt())
                continue
            members = [job for i in group if (job := jobs[i]) is not None]
            try:
                if len(members) == 1:  # nothing to fuse with: trained as __call__ trains it
                    outcomes: list[TrialOutcome | BaseException] = [self._alone(members[0])]
                else:
                    outcomes = run_trials_fused(
                        [j.cfg for j in members], self.dataset, [j.recorder for j in members],
                        callbacks=[j.callbacks for j in members], monitor=self.space.study.metric,
                        log_model=[j.log_model for j in members], check=self._check_data,
                        checkpoints=[j.checkpoint for j in members],
                        on_resume=[j.resumed for j in members], strategy=strategy)
            except BaseException as exc:  # noqa: BLE001  (the runner ends each run first)
                outcomes = [exc] * len(members)
            for i, job, outcome in zip(group, members, outcomes, strict=True):
                ends[i] = self._ended(trials[i], job, outcome)
        return ends  # type: ignore[return-value]

    def _alone(self, job: _Job) -> TrialOutcome:
        """The job's trial trained by itself (trial.runner.run_trial)."""
        return run_trial(job.cfg, self.dataset, job.recorder, callbacks=job.callbacks,
                         monitor=self.space.study.metric, log_model=job.log_model,
                         check=self._check_data, checkpoint=job.checkpoint, on_resume=job.resumed)

    def _begin(self, trial: optuna.Trial) -> _Job:
        """The trial's config, recorder, checkpoint and callbacks (its run started by the runner)."""
        trial.set_user_attr(WORKER_KEY, self.worker)
        metric = self.space.study.metric
        pruning = PruningCallback(trial, metric)
        cfg = config_for_trial(trial, self.space)
        trial.set_user_attr(CONFIG_KEY, cfg.model_dump(mode="json"))
        # The run id goes on the trial the moment the run exists; a worker that dies before
        # that leaves a run that only its tags (hpo.study, hpo.trial) tie to the trial.
        recorder = self.recorder_for(
            trial.number, lambda run_id: trial.set_user_attr(MLFLOW_RUN_ID_KEY, run_id))

        def resumed(state: TrainingState) -> None:
            # The pruner sees the values the interrupted trial reported, at their epochs.
            for epoch, value in enumerate(state.history.get(metric, [])[: state.epoch]):
                trial.report(value, epoch)
            trial.set_user_attr(RESUMED_KEY, {"trial": state.trial, "run": state.run_id,
                                              "epoch": state.epoch})

        return _Job(
            pruning=pruning,
            callbacks=[pruning] if self.stop is None else [pruning, StopCheck(self.stop)],
            cfg=cfg,
            recorder=recorder,
            checkpoint=self._checkpoint(trial, cfg),
            log_model=lambda value: self._keeps_model(trial, value),
            resumed=resumed,
            fusion=fusion_key(cfg) if cfg.train.loop == "device" else f"alone {trial.number}",
        )

    def _end(self, trial: optuna.Trial, job: _Job | None,
             outcome: TrialOutcome | BaseException) -> float:
        """Records how the trial ended on it; returns its value or raises what ended it."""
        end = self._ended(trial, job, outcome)
        if isinstance(end, BaseException):
            raise end
        return end

    def _ended(self, trial: optuna.Trial, job: _Job | None,
               outcome: TrialOutcome | BaseException) -> float | BaseException:
        """_end's records; the value, or the exception to raise (one raised while recording
        replaces it: a peer failed the trial as lost meanwhile)."""
        try:
            if isinstance(outcome, optuna.TrialPruned):
                ran = job.pruning.last_epoch + 1 if job is not None else 0
                trial.set_user_attr(EPOCHS_RUN_KEY, ran)
            elif isinstance(outcome, optuna.exceptions.UpdateFinishedTrialError):
                # A peer failed this trial as lost (it saw no heartbeat: a partition, a long
                # outage) and ended its run KILLED: leave both so; the worker says so, goes on.
                pass
            elif isinstance(outcome, KeyboardInterrupt):
                self._failed(trial, "interrupted")
            elif isinstance(outcome, Exception):  # the run, if any, was ended by the runner
                self._failed(trial, fail_reason(outcome))
            elif isinstance(outcome, BaseException):
                pass
            else:
                result = outcome.result
                trial.set_user_attr(EPOCHS_RUN_KEY, result.epochs_run)
                trial.set_user_attr(BEST_EPOCH_KEY, result.best_epoch)
                if outcome.model_uri is not None:
                    trial.set_user_attr(MODEL_URI_KEY, outcome.model_uri)
                trial.set_user_attr(VAL_METRICS_KEY, result.val_metrics)
                return outcome.value
        except Exception as exc:  # noqa: BLE001
            return exc
        return outcome

    def _checkpoint(self, trial: optuna.Trial, cfg: RunConfig) -> CheckpointFile | None:
        """The trial's checkpoint (None with study.checkpoint off): one folder for a trial and
        every copy of it that a lost worker or a stop queued again."""
        study = self.space.study
        if study.checkpoint == "off":
            return None
        first = first_of(trial.storage.get_trial_system_attrs(trial._trial_id), trial.number)
        every = study.checkpoint_every if study.checkpoint == "every_k" else 1
        return CheckpointFile(checkpoint_folder(self.space, trial.study.study_name, first),
                              identity(cfg, self.data_sha256), every=every, trial=trial.number)

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
            now = self.dataset.fingerprint()
        if not same_data(self.data_sha256, now):
            raise TrialFailed(
                f"data file {self.dataset.path} changed while the study ran (fingerprint "
                f"{self.data_sha256} at its start, {now['sha256']} now); restore it, or start a new study "
                "for the new file", kind="data")

    def _failed(self, trial: optuna.Trial, reason: str) -> None:
        """Keeps why the trial failed on it (`hpo status`), after run_trial ended its run: if a
        peer already failed the trial as lost, this raises and the worker says so."""
        _logger.warning("trial %d failed: %s", trial.number, reason)
        trial.set_user_attr(FAIL_REASON_KEY, reason[:2000])
