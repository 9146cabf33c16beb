"""keras-tuner as a study engine: the space's params as kt.HyperParameters, trials run by hpo."""

from __future__ import annotations

import gc
import json
import logging
import math
import os
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
from hpo.config.tree import RunConfig
from hpo.data.contract import Dataset
from hpo.data.lazy import H5Source
from hpo.errors import ConfigError
from hpo.errors import HpoError
from hpo.errors import TrialFailed
from hpo.errors import first_line
from hpo.objective.space import Distribution
from hpo.objective.space import SearchSpace
from hpo.objective.space import decode_choice
from hpo.redact import redact
from hpo.study.create import space_changes
from hpo.study.create import stored_space
from hpo.study.worker import MAX_CONSECUTIVE_FAILURES
from hpo.tracking.callback import MlflowEpochLogger
from hpo.tracking.datasets import log_data_inputs
from hpo.tracking.runs import Tracker
from hpo.tracking.trial_artifacts import log_trial_artifacts
from hpo.training.loop import train

_logger = logging.getLogger(__name__)

OBJECTIVE = "val_residual_std"
DIRECTORY_ENV = "HPO_KT_DIR"  # where keras-tuner keeps its state, default ./kt
DEFAULT_DIRECTORY = "kt"
STATE_FILE = "hpo_study.json"  # project dir: the space, the MLflow experiment and parent run
RECORD_FILE = "hpo_record.json"  # in each trial dir: what run_search returns for it
WEIGHTS_FILE = "hpo_weights.npz"  # each trial dir (hyperband + warm_start): its final weights
RELAUNCH_MAY_CHANGE = {"study.n_trials", "study.timeout_s", "study.tuner.max_trials"}

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
        "objective": kt.Objective(OBJECTIVE, "min"),
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

    run_trial builds the trial's RunConfig by apply_overrides on `space.resolved_base()` (a
    refused combination fails that trial only) and trains it with hpo.training.loop.train, so the
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
        tracker: Tracker,
        experiment_id: str,
        parent_run_id: str | None,
        directory: Path,
        echo: Echo | None = None,
        epoch_budget: int | None = None,
    ) -> None:
        super().__init__(oracle=oracle, directory=str(directory), project_name=space.study.name,
                         overwrite=False)
        self.space, self.dataset, self.tracker = space, dataset, tracker
        self.experiment_id, self.parent_run_id = experiment_id, parent_run_id
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
        try:
            cfg = self._config(trial.trial_id, params, total - initial, initial)
            record.run_id = self.tracker.start_trial_run(
                self.experiment_id, self.parent_run_id, self.space.study.name, record.number, cfg
            )
            log_data_inputs(self.tracker, record.run_id, cfg, self.dataset)
            self.tracker.set_tags(record.run_id, {
                "hpo.engine": "keras_tuner", "kt.trial_id": trial.trial_id, "kt.epochs": total,
                "kt.initial_epoch": initial, "kt.warm_from": parent or "",
                **{f"kt.{k}": values[k] for k in ("tuner/bracket", "tuner/round") if k in values},
            })
            logger = MlflowEpochLogger(self.tracker, record.run_id, step_offset=initial)
            callbacks: list[keras.callbacks.Callback] = [counter, logger]
            if weights is not None:
                callbacks.insert(0, _WarmStart(weights))
            result = train(cfg, self.dataset, callbacks=callbacks)
            value = float(result.val_metrics["residual_std"])
            if not math.isfinite(value):
                raise TrialFailed(f"val_residual_std is {value}")
            if self.warm_start:
                path = Path(self.get_trial_dir(trial.trial_id)) / WEIGHTS_FILE
                np.savez(path, *result.model.get_weights())
            log_trial_artifacts(self.tracker, record.run_id, result, self.dataset)
            self.tracker.finish_trial_run(record.run_id, "COMPLETE", epochs_run=result.epochs_run)
        except KeyboardInterrupt:
            self._end_failed(record.run_id, "KILLED", "interrupted")
            raise
        except Exception as exc:
            reason = str(exc)
            if not isinstance(exc, TrialFailed):
                reason = f"{type(exc).__name__}: {first_line(exc, None)}"
            _logger.warning("trial %s failed: %s", trial.trial_id, reason)
            record.reason, record.epochs_run = reason[:2000], counter.epochs
            self._end_failed(record.run_id, "FAIL", reason)
            self._save_record(record)
            raise kt.errors.FailedTrialError(reason) from exc
        record.state, record.value, record.epochs_run = "COMPLETE", value, result.epochs_run
        self._save_record(record)
        return value

    def _config(
        self, trial_id: str, params: dict[str, Any], epochs: int, initial: int
    ) -> RunConfig:
        overrides = dict(params)
        if self.hyperband:
            overrides["train.epochs"] = epochs
        where = f"trial {trial_id}"
        try:
            cfg = apply_overrides(overrides, base=self.base, where=where)
            warm = cfg.train.loss.warm_start_epochs
            if initial and warm:  # the MSE warm-up counts the parent's epochs
                left = {"train.loss.warm_start_epochs": max(0, warm - initial)}
                cfg = apply_overrides(left, base=cfg, where=where)
        except ConfigError as exc:
            raise TrialFailed(str(exc)) from None
        return cfg

    def _end_failed(self, run_id: str | None, state: str, reason: str) -> None:
        if run_id is None:
            return
        try:
            self.tracker.finish_trial_run(run_id, state, reason=reason)
        except Exception as exc:  # the tracking server may be why the trial failed
            _logger.warning("could not end MLflow run %s: %s", run_id, first_line(exc))

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
            raise _StopSearch(f"epoch budget of {self.epoch_budget} spent")
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise _StopSearch(f"timeout of {self.space.study.timeout_s} s reached")

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


class _StopSearch(Exception):
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


# ------------------------------------------------------------------------------ the search
def kt_directory(directory: str | Path | None = None) -> Path:
    """Where keras-tuner keeps studies: `directory`, else HPO_KT_DIR, else ./kt."""
    return Path(directory or os.environ.get(DIRECTORY_ENV) or DEFAULT_DIRECTORY).resolve()


def run_search(
    space: SearchSpace,
    dataset: Dataset | H5Source,
    tracker: Tracker,
    *,
    directory: str | Path | None = None,
    echo: Echo | None = None,
    epoch_budget: int | None = None,
    data_info: dict[str, Any] | None = None,
) -> list[TrialRecord]:
    """Runs (or resumes) the keras-tuner search of `space` in this process.

    Args:
        space: a space with study.engine keras_tuner (sampler and pruner are not used).
        dataset: the data every trial trains on.
        tracker: MLflow: experiment `study.name`, one parent run per study, a nested run per trial.
        directory: keras-tuner's state lives in <directory>/<study.name> (default kt_directory());
            a relaunch with the same directory resumes the search, a finished one runs nothing.
        echo: gets one progress line per trial.
        epoch_budget: stop starting trials once the trials have trained this many epochs
            (benchmarks); study.timeout_s likewise stops it after that many seconds.
        data_info: the parent run's data params (default: the launcher's, with floors).

    Returns:
        Every ended trial of the study, this launch's and earlier ones', in start order.

    Raises:
        ConfigError: the directory holds this study with a different search space.
        HpoError: MAX_CONSECUTIVE_FAILURES trials in a row failed.
    """
    if space.study.tuner is None:
        raise ConfigError(f"{space.source}: a keras-tuner search needs study.engine keras_tuner")
    name = space.study.name
    root = kt_directory(directory)
    project = root / name
    state = _check_state(project, space)
    experiment_id = tracker.experiment_id(name)
    same_store = state.get("tracking_uri") == redact(tracker.uri)
    parent = state.get("parent_run_id") if same_store else None
    if parent is not None and tracker.run_status(parent) != "RUNNING":
        tracker.client.update_run(parent, status="RUNNING")
    if parent is None:
        if data_info is None:
            from hpo.study.launcher import _data_info  # the Optuna engine's parent-run data params

            data_info = _data_info(dataset)
        parent = tracker.start_study_run(experiment_id, name, space.to_yaml(), data_info)
        log_data_inputs(tracker, parent, space.resolved_base(), dataset)
    project.mkdir(parents=True, exist_ok=True)
    (project / STATE_FILE).write_text(json.dumps({
        "space": stored_space(space), "tracking_uri": redact(tracker.uri),
        "experiment_id": experiment_id, "parent_run_id": parent,
    }))

    tuner = HpoTuner(make_oracle(space), space=space, dataset=dataset, tracker=tracker,
                     experiment_id=experiment_id, parent_run_id=parent, directory=root, echo=echo,
                     epoch_budget=epoch_budget)
    try:
        tuner.search(verbose=0)
    except _StopSearch as stop:
        _logger.info("study %s: %s", name, stop)
    except KeyboardInterrupt:
        tracker.end_run(parent, "KILLED")  # a relaunch resumes it
        raise
    except RuntimeError as exc:
        if "consecutive failures" not in str(exc):
            raise
        tracker.end_run(parent, "FAILED")
        last = next((r.reason for r in reversed(tuner.records()) if r.reason), "see the log")
        raise HpoError(
            f"study '{name}': {MAX_CONSECUTIVE_FAILURES} trials in a row failed; last: {last}"
        ) from None
    records = tuner.records()
    values = {r.number: r.value for r in records if r.state == "COMPLETE" and r.value is not None}
    if values:
        best = min(values, key=values.__getitem__)
        tracker.log_metrics(parent, {"best_val_residual_std": values[best]})
        tracker.set_tags(parent, {"hpo.best_trial": best})
    tracker.end_run(parent, "FINISHED")
    return records


def _check_state(project: Path, space: SearchSpace) -> dict[str, Any]:
    """The study's stored state, after checking that its space is `space` (or {} if none)."""
    path = project / STATE_FILE
    if not path.exists():
        return {}
    state = json.loads(path.read_text())
    changes = space_changes(state["space"], space, str(path))
    changed = [k for k in changes if k not in RELAUNCH_MAY_CHANGE]
    if changed:
        raise ConfigError(
            f"{space.source}: study '{space.study.name}' already exists in {project} with a "
            f"different search space ({', '.join(changed)}); use another study.name or delete "
            f"{project}"
        )
    return state
