"""One trial from start to end: record the run, train, score, log, and end the run however it ends.

    hpo worker ...      # engines/objective.py (Optuna), engines/keras_tuner.py, `hpo train` use this

Every engine and script runs a configuration through `run_trial`; what differs between them is
how the config is chosen (an Optuna trial, a keras-tuner trial, a file) and where the run is
recorded (a Recorder: MLflow, or nowhere).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from collections.abc import Generator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import keras
import optuna

from hpo.config.tree import RunConfig
from hpo.data.contract import Dataset
from hpo.data.lazy import H5Source
from hpo.errors import ConfigError
from hpo.errors import DataContractError
from hpo.errors import first_line
from hpo.errors import HpoError
from hpo.errors import TrackingError
from hpo.errors import TrialFailed
from hpo.keys import FUSED_TAG
from hpo.keys import METRIC
from hpo.keys import METRICS
from hpo.keys import RESUMED_AT_TAG
from hpo.keys import RESUMES_RUN_TAG
from hpo.redact import redact_text
from hpo.training.callbacks import learning_rate
from hpo.training.checkpoint import CheckpointFile
from hpo.training.checkpoint import TrainingState
from hpo.training.loop import train
from hpo.training.loop import TrainResult
from hpo.trial.recorder import Recorder

_logger = logging.getLogger(__name__)

MAX_CONSECUTIVE_FAILURES = 5  # a worker or search whose every trial fails is misconfigured: stop it


@dataclass
class TrialOutcome:
    """A trial that trained to its end: its value (the monitored metric), the run, the model's URI."""

    value: float
    result: TrainResult
    model_uri: str | None


class EpochLog(keras.callbacks.Callback):
    """Sends loss and the val_*/train_* metrics (and the learning rate) of each epoch to a recorder.

    step_offset: epochs the model trained before this fit (a warm-started trial), added to steps.
    history: what it sent, per metric: the loss curves of a trial cut short.
    """

    def __init__(self, recorder: Recorder, *, step_offset: int = 0) -> None:
        super().__init__()
        self.recorder, self.step_offset = recorder, step_offset
        self.history: dict[str, list[float]] = {}
        self.last_epoch = -1

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        metrics = {k: float(v) for k, v in (logs or {}).items() if isinstance(v, (int, float))}
        if getattr(self.model.optimizer, "learning_rate", None) is not None:
            metrics["learning_rate"] = learning_rate(self.model)
        self.record(metrics, epoch)

    def record(self, metrics: dict[str, float], epoch: int) -> None:
        """Keeps and logs one epoch's metrics (of this run, or of the run it resumes)."""
        for key, value in metrics.items():
            self.history.setdefault(key, []).append(value)
        self.last_epoch = epoch
        self.recorder.log_epoch(metrics, step=epoch + self.step_offset)

    def replay(self, state: TrainingState) -> None:
        """Logs the epochs of the run that `state` resumes, as that run logged them."""
        for epoch in range(state.epoch):
            metrics = {k: v[epoch] for k, v in state.history.items() if epoch < len(v)}
            if epoch < len(state.learning_rate):
                metrics["learning_rate"] = state.learning_rate[epoch]
            self.record(metrics, epoch)


def run_trial(
    cfg: RunConfig,
    dataset: Dataset | H5Source,
    recorder: Recorder,
    *,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    monitor: str = METRIC,
    step_offset: int = 0,
    log_model: bool | Callable[[float], bool] = True,
    check: Callable[[], None] | None = None,
    on_trained: Callable[[TrainResult], None] | None = None,
    checkpoint: CheckpointFile | None = None,
    on_resume: Callable[[TrainingState], None] | None = None,
    verbose: int = 0,
) -> TrialOutcome:
    """Trains `cfg` on `dataset` as one recorded run; every way out of it ends the run.

    Args:
        callbacks: Keras callbacks of the engine (pruning, a stop request, warm start), after
            the epoch log: the epoch that gets a trial pruned is recorded too.
        monitor: the metric that is the trial's value (study.metric), at the best epoch.
        step_offset: epochs the model trained before (a warm-started keras-tuner trial).
        log_model: whether to log the model, or a function of the trial's value that says so.
        check: called before and after training; raises TrialFailed if the trial must not count
            (the study's data file changed under it).
        on_trained: called with the result before it is logged (keras-tuner saves weights).
        checkpoint: the trial's checkpoint: resumed if it holds one of this config and data
            (its epochs logged again in this run, which is tagged with the run it resumes),
            saved at epoch ends, and removed when the trial ends, unless it was interrupted
            (its copy resumes it).
        on_resume: called with the checkpoint's state when the run resumes it (the engine
            tells its pruner the values it saw).

    Raises:
        optuna.TrialPruned: the pruner cut the trial; its run ended PRUNED with its curves.
        KeyboardInterrupt: a stop request; the run ended KILLED, reason "interrupted".
        optuna.exceptions.UpdateFinishedTrialError: a peer failed the Optuna trial as lost and
            ended the run KILLED; it is left so.
        Exception: anything else, after ending the run FAIL with `fail_reason` of it.
    """
    steps = _trial_steps(cfg, dataset, recorder, callbacks=callbacks, monitor=monitor,
                         step_offset=step_offset, log_model=log_model, check=check,
                         on_trained=on_trained, checkpoint=checkpoint, on_resume=on_resume)
    call = next(steps)
    try:
        result: TrainResult | BaseException = train(
            cfg, dataset, callbacks=call.callbacks, monitor=monitor, verbose=verbose,
            checkpoint=checkpoint, resume=call.resume, on_resume=call.on_resume)
    except BaseException as exc:  # noqa: BLE001  (the trial's steps end its run and raise it)
        result = exc
    return _conclude(steps, result)


def run_trials_fused(
    cfgs: Sequence[RunConfig],
    dataset: Dataset | H5Source,
    recorders: Sequence[Recorder],
    *,
    callbacks: Sequence[Sequence[keras.callbacks.Callback]],
    monitor: str = METRIC,
    log_model: Sequence[bool | Callable[[float], bool]] | None = None,
    check: Callable[[], None] | None = None,
    checkpoints: Sequence[CheckpointFile | None] | None = None,
    on_resume: Sequence[Callable[[TrainingState], None] | None] | None = None,
    strategy: str = "auto",
) -> list[TrialOutcome | BaseException]:
    """Runs configs of one fusion key (training/fusion.py) as one fused program
    (training.loop.train_fused), each still its own recorded run, ended as run_trial ends it.

    Args: per trial, as run_trial's (callbacks, log_model, checkpoints, on_resume: one entry
    each); a trial whose checkpoint holds a state to resume trains alone afterwards.

    Returns:
        Per trial, its TrialOutcome, or the exception run_trial would have raised for it
        (optuna.TrialPruned, TrialFailed, ...), for its engine to raise.
    """
    from hpo.training.loop import train_fused

    n = len(cfgs)
    log_model = log_model or [True] * n
    checkpoints = checkpoints or [None] * n
    on_resume = on_resume or [None] * n
    outcomes: list[TrialOutcome | BaseException | None] = [None] * n
    steps, calls = [], []
    for i, cfg in enumerate(cfgs):
        gen = _trial_steps(cfg, dataset, recorders[i], callbacks=callbacks[i], monitor=monitor,
                           log_model=log_model[i], check=check, checkpoint=checkpoints[i],
                           on_resume=on_resume[i])
        try:
            calls.append(next(gen))
        except BaseException as exc:  # noqa: BLE001  (its run ended before training)
            outcomes[i], calls = exc, [*calls, None]
        steps.append(gen)
    fused = [i for i in range(n) if outcomes[i] is None and calls[i].resume is None]
    for i in fused if len(fused) > 1 else ():
        try:
            recorders[i].set_tags({FUSED_TAG: len(fused)})
        except Exception as exc:  # noqa: BLE001  (the tracking store: the trial fails with it)
            outcomes[i] = _outcome(steps[i], exc)
    fused = [i for i in fused if outcomes[i] is None]
    results: list[TrainResult | BaseException] = [RuntimeError("not trained")] * n
    if fused:
        try:
            for i, r in zip(fused, train_fused(
                    [cfgs[i] for i in fused], dataset, callbacks=[calls[i].callbacks for i in fused],
                    monitor=monitor, checkpoints=[checkpoints[i] for i in fused],
                    strategy=strategy), strict=True):
                results[i] = r
        except BaseException as exc:  # noqa: BLE001  (an interrupt, a refused group: every member)
            for i in fused:
                results[i] = exc
    for i in range(n):
        if outcomes[i] is not None:
            continue
        if i not in fused:  # a checkpoint to resume: this trial alone
            try:
                results[i] = train(cfgs[i], dataset, callbacks=calls[i].callbacks,
                                   monitor=monitor, checkpoint=checkpoints[i],
                                   resume=calls[i].resume, on_resume=calls[i].on_resume)
            except BaseException as exc:  # noqa: BLE001
                results[i] = exc
        outcomes[i] = _outcome(steps[i], results[i])
    return outcomes  # type: ignore[return-value]


@dataclass
class _TrainCall:
    """What a trial's steps ask of the training between their start and their end."""

    callbacks: list[keras.callbacks.Callback]
    resume: TrainingState | None
    on_resume: Callable[[TrainingState], None]


def _trial_steps(
    cfg: RunConfig,
    dataset: Dataset | H5Source,
    recorder: Recorder,
    *,
    callbacks: Sequence[keras.callbacks.Callback],
    monitor: str,
    step_offset: int = 0,
    log_model: bool | Callable[[float], bool],
    check: Callable[[], None] | None,
    on_trained: Callable[[TrainResult], None] | None = None,
    checkpoint: CheckpointFile | None,
    on_resume: Callable[[TrainingState], None] | None,
) -> Generator[_TrainCall, TrainResult, TrialOutcome]:
    """One trial's run as steps around its training: yields what to train with once, takes the
    result (or has the training's exception thrown in, which ends the run as run_trial says)."""
    recorder.start(cfg)  # a run that cannot record its config is ended by `start` itself
    epochs = EpochLog(recorder, step_offset=step_offset)

    def resumed(state: TrainingState) -> None:
        _logger.info("trial resumes run %s at epoch %d (checkpoint %s)", state.run_id,
                     state.epoch, checkpoint.path if checkpoint else "")
        recorder.set_tags({RESUMES_RUN_TAG: state.run_id or "", RESUMED_AT_TAG: state.epoch})
        epochs.replay(state)
        if on_resume is not None:
            on_resume(state)

    try:
        recorder.log_inputs(cfg, dataset)
        if check is not None:
            check()
        resume = None
        if checkpoint is not None:
            checkpoint.run_id = recorder.run_id
            resume = checkpoint.load()
        result = yield _TrainCall([epochs, *callbacks], resume, resumed)
        if check is not None:
            check()
        value = float(result.val_metrics[METRICS[monitor]])
        if not math.isfinite(value):
            raise TrialFailed(f"{monitor} is {value}")
        if on_trained is not None:
            on_trained(result)
        keep = log_model(value) if callable(log_model) else log_model
        # Inside the try: a failure while logging must still end the run.
        model_uri = recorder.log_result(result, dataset, log_model=keep)
    except optuna.TrialPruned:
        ran = epochs.last_epoch + 1
        try:  # why it was cut: the curves it has, up to the pruning epoch
            recorder.log_pruned(epochs.history, ran)
        finally:
            drop(checkpoint)
            recorder.finish("PRUNED", epochs_run=ran)
        raise
    except KeyboardInterrupt:  # the checkpoint stays: the trial's copy resumes it
        end_failed(recorder, "KILLED", "interrupted")
        raise
    except optuna.exceptions.UpdateFinishedTrialError:
        raise  # a peer failed the trial as lost: its copy resumes the checkpoint
    except Exception as exc:
        drop(checkpoint)
        end_failed(recorder, "FAIL", fail_reason(exc))
        raise
    drop(checkpoint)
    try:
        recorder.finish("COMPLETE", epochs_run=result.epochs_run)
    except Exception as exc:  # the tracking server went away: the trial fails with the reason
        end_failed(recorder, "FAIL", fail_reason(exc))
        raise
    return TrialOutcome(value, result, model_uri)


def _conclude(steps: Generator[_TrainCall, TrainResult, TrialOutcome],
              result: TrainResult | BaseException) -> TrialOutcome:
    """Hands a trial's steps its training's result, or throws in the exception that ended the
    training; returns the outcome, or raises what the steps raise."""
    try:
        if isinstance(result, BaseException):
            steps.throw(result)
        else:
            steps.send(result)
    except StopIteration as done:
        return done.value
    raise RuntimeError("a trial's steps train once")


def _outcome(steps: Generator[_TrainCall, TrainResult, TrialOutcome],
             result: TrainResult | BaseException) -> TrialOutcome | BaseException:
    """_conclude's outcome, or the exception it raised (a fused trial's, for its engine)."""
    try:
        return _conclude(steps, result)
    except BaseException as exc:  # noqa: BLE001
        return exc


def drop(checkpoint: CheckpointFile | None) -> None:
    """Removes the checkpoint of a trial that has ended; one that cannot be removed is said."""
    if checkpoint is None:
        return
    try:
        checkpoint.remove()
    except OSError as exc:
        _logger.warning("could not remove checkpoint %s: %s", checkpoint.path, first_line(exc))


def end_failed(recorder: Recorder, state: str, reason: str) -> None:
    """Ends a failed trial's run, if it has one; a recorder that cannot (the server may be why
    the trial failed) is logged, not raised: the trial's own error goes on, and the run is ended
    once the server answers (tracking/reconcile.py)."""
    if recorder.run_id is None:
        return
    try:
        recorder.finish(state, reason=redact_text(reason))
    except Exception as exc:  # noqa: BLE001
        _logger.warning("could not end run %s: %s", recorder.run_id, redact_text(first_line(exc)))


def fail_reason(exc: BaseException) -> str:
    """A failed trial's reason, prefixed with what failed (`hpo status` shows it): "config: " a
    point no network or split can be made of, "data: " the data file, "tracking: " the tracking
    store; no prefix for the training itself (NaN loss, out of memory, a library error). URLs
    in it are masked."""
    text = str(exc) if isinstance(exc, HpoError) else f"{type(exc).__name__}: {exc}"
    kind = fail_kind(exc)
    return redact_text(f"{kind}: {text}" if kind else text)


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
