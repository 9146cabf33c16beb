"""keras-tuner as a study engine: the space's params as kt.HyperParameters, trials run by hpo."""

from __future__ import annotations

import gc
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt
import numpy as np

from hpo.config.overrides import apply_overrides
from hpo.config.space import decode_choice
from hpo.config.space import Distribution
from hpo.config.space import SearchSpace
from hpo.config.tree import RunConfig
from hpo.data.contract import Dataset
from hpo.data.lazy import H5Source
from hpo.errors import ConfigError
from hpo.errors import TrialFailed
from hpo.keys import METRIC
from hpo.training.loop import TrainResult
from hpo.trial.recorder import no_recorder
from hpo.trial.recorder import Recorder
from hpo.trial.recorder import RecorderFactory
from hpo.trial.runner import end_failed
from hpo.trial.runner import fail_reason
from hpo.trial.runner import MAX_CONSECUTIVE_FAILURES
from hpo.trial.runner import run_trial

_logger = logging.getLogger(__name__)

RECORD_FILE = "hpo_record.json"  # in each trial dir: what run_search returns for it
WEIGHTS_FILE = "hpo_weights.npz"  # each trial dir (hyperband + warm_start): its final weights

Echo = Callable[[str], None]


@dataclass
class TrialRecord:
    """One keras-tuner trial as run by `run_search`.

    Attributes:
        trial_id: keras-tuner's trial id ("0007"); `number`: as an int (MLflow run trial-<n>).
        state: COMPLETE or FAIL.
        value: val_residual_std of a COMPLETE trial (its best epoch), else None.
        epochs_run: epochs this trial trained; a warm-started Hyperband trial counts only its own,
            a failed one the epochs it started.
        epochs_total: epochs its model has seen in all (keras-tuner's tuner/epochs with Hyperband).
        warm_from: the trial whose weights it started from, or None.
        params: {dotted path: value} it ran with.
        run_id: its MLflow run (None when its config was refused before a run started).
        reason: why it failed.
    """

    trial_id: str
    number: int
    state: str
    value: float | None
    epochs_run: int
    epochs_total: int
    warm_from: str | None
    params: dict[str, Any]
    run_id: str | None
    reason: str | None = None


# ------------------------------------------------------------------------------ the search space
def hyperparameters(space: SearchSpace) -> kt.HyperParameters:
    """The params of `space` (and train.seed with repeats > 1) as keras-tuner hyperparameters."""
    hp = kt.HyperParameters()
    for path, dist in space.params.items():
        if dist.categorical is not None:
            hp.Choice(path, _kt_choices(dist))
        elif dist.int_ is not None:
            lo, hi = dist.int_
            if dist.log:
                hp.Int(path, lo, hi, sampling="log")
            else:
                hp.Int(path, lo, hi, step=int(dist.step or 1))
        else:
            lo, hi = dist.float_  # type: ignore[misc]
            if dist.log:
                hp.Float(path, lo, hi, sampling="log")
            elif dist.step is None:
                hp.Float(path, lo, hi)
            else:
                # keras-tuner counts grid values with float floor division (0.5 // 0.05 == 9.0):
                # a hair above `hi` keeps `hi` on its grid; config_values rounds it back.
                hp.Float(path, lo, hi + dist.step * 1e-6, step=dist.step)
    if space.study.repeats > 1:
        hp.Choice("train.seed", list(range(space.study.repeats)))
    return hp


def config_values(space: SearchSpace, values: dict[str, Any]) -> dict[str, Any]:
    """{dotted path: config value} from a trial's hyperparameter values (choices decoded)."""
    out: dict[str, Any] = {}
    for path, dist in space.params.items():
        value = values[path]
        if dist.categorical is not None:
            value = decode_choice((dist.grid() or [])[_kt_choices(dist).index(value)])
        elif dist.int_ is not None:
            value = int(value)
        elif dist.step is not None:
            value = min(round(float(value), 12), dist.float_[1])  # type: ignore[index]
        else:
            value = float(value)
        out[path] = value
    if space.study.repeats > 1:
        out["train.seed"] = int(values["train.seed"])
    return out


def _kt_choices(dist: Distribution) -> list[Any]:
    """A Choice holds one type of str, int, float or bool: ints beside floats become floats, and
    choices of mixed types (or null) become JSON strings."""
    values = dist.grid() or []
    kinds = {type(v) for v in values}
    if len(kinds) == 1 and kinds <= {str, int, float, bool}:
        return values
    if kinds <= {int, float}:
        return [float(v) for v in values]
    return [json.dumps(v) for v in values]


def make_oracle(space: SearchSpace) -> kt.Oracle:
    """keras-tuner's oracle for `space.study.tuner`, minimising val_residual_std."""
    tuner = space.study.tuner
    if tuner is None:
        raise ConfigError(f"{space.source}: a keras-tuner search needs study.engine keras_tuner")
    common: dict[str, Any] = {
        "objective": kt.Objective(METRIC, "min"),
        "hyperparameters": hyperparameters(space),
        "seed": tuner.seed + 1,  # keras-tuner reads seed 0 as "none" and draws a random one
        "max_retries_per_trial": 0,  # run_trial raises FailedTrialError: FAILED, never retried
        "max_consecutive_failed_trials": MAX_CONSECUTIVE_FAILURES,
    }
    if tuner.type == "hyperband":
        return kt.oracles.HyperbandOracle(
            max_epochs=space.resolved_base().train.epochs,
            factor=tuner.factor,
            hyperband_iterations=tuner.hyperband_iterations,
            **common,
        )
    trials = space.tuner_budget()[0]
    if tuner.type == "random":
        return kt.oracles.RandomSearchOracle(max_trials=trials, **common)
    return kt.oracles.BayesianOptimizationOracle(max_trials=trials, **common)


# ------------------------------------------------------------------------------ the tuner
class HpoTuner(kt.Tuner):
    """A keras-tuner Tuner whose trials are hpo training runs, tracked in MLflow as Optuna's are.

    The search algorithm is the oracle's (make_oracle): with a HyperbandOracle this tuner runs
    keras-tuner's Hyperband, with RandomSearchOracle or BayesianOptimizationOracle those tuners
    (kt.Hyperband, kt.RandomSearch and kt.BayesianOptimization are kt.Tuner with that oracle and
    a run_trial that fits a hypermodel; this run_trial replaces it).

    run_trial builds the trial's RunConfig with `space.config_for`, as an Optuna trial's (a
    refused combination fails that trial only) and runs it with hpo.trial.runner.run_trial, so the
    metric, the network, the data split and the NaN guard are an Optuna trial's.

    Hyperband: a trial trains for the epochs keras-tuner assigns. A trial promoted to a later
    round (tuner/trial_id set) starts from the weights its parent trial ended with (its best
    epoch) and trains tuner/epochs - tuner/initial_epoch more epochs, as keras-tuner's own
    Hyperband does; as there, the optimizer and its learning-rate schedule start afresh, and a
    gaussian_nll MSE warm-up counts the parent's epochs. With tuner.warm_start false (or when
    the parent's weights are missing) it trains from scratch for all tuner/epochs.

    A trial that raises (TrialFailed: NaN loss, a refused config, the tracking server away; or any
    other error) ends its MLflow run FAILED and is FAILED in keras-tuner, which goes on with the
    next trial; MAX_CONSECUTIVE_FAILURES failures in a row stop the search (run_search raises
    HpoError). Ctrl-C ends the running trial's run KILLED; a relaunch reruns that trial.
    """

    def __init__(
        self,
        oracle: kt.Oracle,
        *,
        space: SearchSpace,
        dataset: Dataset | H5Source,
        recorder_for: RecorderFactory = no_recorder,
        directory: Path,
        echo: Echo | None = None,
        epoch_budget: int | None = None,
    ) -> None:
        super().__init__(oracle=oracle, directory=str(directory), project_name=space.study.name,
                         overwrite=False)
        self.space, self.dataset, self.recorder_for = space, dataset, recorder_for
        self.echo = echo or (lambda line: None)
        self.base = space.resolved_base()
        tuner = space.study.tuner
        assert tuner is not None
        self.hyperband = tuner.type == "hyperband"
        self.warm_start = self.hyperband and tuner.warm_start
        self.epoch_budget = epoch_budget
        timeout = space.study.timeout_s
        self.deadline = None if timeout is None else time.monotonic() + timeout

    # -------------------------------------------------------------------- one trial
    def run_trial(self, trial: kt.engine.trial.Trial, *args: Any, **kwargs: Any) -> float:
        values = trial.hyperparameters.values
        params = config_values(self.space, values)
        total = int(values.get("tuner/epochs", self.base.train.epochs))
        parent = values.get("tuner/trial_id") if self.warm_start else None
        initial = int(values.get("tuner/initial_epoch", 0)) if parent is not None else 0
        weights = Path(self.get_trial_dir(parent)) / WEIGHTS_FILE if parent is not None else None
        if weights is not None and not weights.exists():
            _logger.warning("trial %s: no weights of trial %s; training from scratch",
                            trial.trial_id, parent)
            parent, initial, weights = None, 0, None
        record = TrialRecord(trial.trial_id, int(trial.trial_id), "FAIL", None, 0, total, parent,
                             params, None)

        keras.backend.clear_session()  # as keras-tuner does before each build: no graph piles up
        gc.collect()
        counter = _EpochCounter()
        callbacks: list[keras.callbacks.Callback] = [counter]
        if weights is not None:
            callbacks.insert(0, _WarmStart(weights))
        recorder = self.recorder_for(record.number)
        try:
            cfg = self._config(trial.trial_id, params, total - initial, initial)
            outcome = run_trial(
                cfg, self.dataset, _Tagged(recorder, {
                    "hpo.engine": "keras_tuner", "kt.trial_id": trial.trial_id, "kt.epochs": total,
                    "kt.initial_epoch": initial, "kt.warm_from": parent or "",
                    **{f"kt.{k}": values[k] for k in ("tuner/bracket", "tuner/round") if k in values},
                }),
                callbacks=callbacks, step_offset=initial,
                on_trained=self._save_weights(trial.trial_id) if self.warm_start else None,
            )
        except KeyboardInterrupt:
            raise  # the run ended KILLED; a relaunch reruns this trial
        except Exception as exc:  # the run, if any, was ended FAILED by run_trial
            reason = fail_reason(exc)
            _logger.warning("trial %s failed: %s", trial.trial_id, reason)
            record.run_id = recorder.run_id
            record.reason, record.epochs_run = reason[:2000], counter.epochs
            self._save_record(record)
            raise kt.errors.FailedTrialError(reason) from exc
        record.run_id = recorder.run_id
        record.state, record.value = "COMPLETE", outcome.value
        record.epochs_run = outcome.result.epochs_run
        self._save_record(record)
        return outcome.value

    def _config(
        self, trial_id: str, params: dict[str, Any], epochs: int, initial: int
    ) -> RunConfig:
        overrides = dict(params)
        if self.hyperband:
            overrides["train.epochs"] = epochs
        where = f"trial {trial_id}"
        try:
            cfg = self.space.config_for(overrides, where, base=self.base)
            warm = cfg.train.loss.warm_start_epochs
            if initial and warm:  # the MSE warm-up counts the parent's epochs
                left = {"train.loss.warm_start_epochs": max(0, warm - initial)}
                cfg = apply_overrides(left, base=cfg, where=where)
        except ConfigError as exc:
            raise TrialFailed(str(exc), kind="config") from None
        return cfg

    def _save_weights(self, trial_id: str) -> Callable[[TrainResult], None]:
        """Keeps a trial's final weights for the trials Hyperband promotes from it."""
        path = Path(self.get_trial_dir(trial_id)) / WEIGHTS_FILE

        def save(result: TrainResult) -> None:
            np.savez(path, *result.model.get_weights())

        return save

    # -------------------------------------------------------------------- between trials
    def on_trial_end(self, trial: kt.engine.trial.Trial) -> None:
        super().on_trial_end(trial)  # the oracle records it (and may stop on consecutive failures)
        records = self.records()
        done = [r for r in records if r.state == "COMPLETE"]
        best = min((r.value for r in done if r.value is not None), default=None)
        last = records[-1] if records and records[-1].trial_id == trial.trial_id else None
        spent = sum(r.epochs_run for r in records)
        if last is not None:
            what = f"FAIL ({last.reason})" if last.value is None else f"{last.value:.4f}"
            self.echo(
                f"trial {last.trial_id}: {what} after {last.epochs_run} epochs | complete "
                f"{len(done)}, failed {len(records) - len(done)} | best val_residual_std "
                f"{'-' if best is None else f'{best:.4f}'} | {spent} epochs in all"
            )
        if self.epoch_budget is not None and spent >= self.epoch_budget:
            raise StopSearch(f"epoch budget of {self.epoch_budget} spent")
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise StopSearch(f"timeout of {self.space.study.timeout_s} s reached")

    def records(self) -> list[TrialRecord]:
        """Every trial that ended (in this or an earlier launch), in keras-tuner's start order."""
        out = []
        for trial_id in self.oracle.start_order:
            path = Path(self.project_dir) / f"trial_{trial_id}" / RECORD_FILE
            if path.exists():
                out.append(TrialRecord(**json.loads(path.read_text())))
        return out

    def _save_record(self, record: TrialRecord) -> None:
        path = Path(self.get_trial_dir(record.trial_id)) / RECORD_FILE
        path.write_text(json.dumps(asdict(record)))


class StopSearch(Exception):
    """Raised between trials when the epoch budget or the study's timeout is spent."""


class _EpochCounter(keras.callbacks.Callback):
    """Epochs started: a failed trial's count includes the epoch it failed in."""

    def __init__(self) -> None:
        super().__init__()
        self.epochs = 0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.epochs += 1


class _WarmStart(keras.callbacks.Callback):
    """Loads a parent trial's weights into the freshly built network before its first epoch."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path, self.loaded = path, False

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        if not self.loaded:  # train() may fit twice (an MSE warm-up first)
            with np.load(self.path) as saved:
                self.model.set_weights([saved[f"arr_{i}"] for i in range(len(saved.files))])
            self.loaded = True


class _Tagged:
    """A recorder that tags its run with `tags` as soon as the run exists."""

    def __init__(self, recorder: Recorder, tags: dict[str, Any]) -> None:
        self.recorder, self.tags = recorder, tags

    def __getattr__(self, name: str) -> Any:
        return getattr(self.recorder, name)

    def start(self, cfg: RunConfig) -> None:
        self.recorder.start(cfg)
        try:
            self.recorder.set_tags(self.tags)
        except Exception as exc:  # as a recorder's start does: a run it cannot label is ended
            end_failed(self.recorder, "FAIL", fail_reason(exc))
            raise
