"""keras-tuner studies: `hpo launch` of a space with study.engine keras_tuner runs its search here.

    hpo launch search_spaces/keras_tuner.yaml

keras-tuner keeps its state in <HPO_KT_DIR or ./kt>/<study.name>; MLflow gets one parent run per
study and a nested run per trial (engines/keras_tuner.py runs the trials).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from hpo.config.space import SearchSpace
from hpo.data.baseline import data_summary
from hpo.data.contract import Dataset
from hpo.data.lazy import H5Source
from hpo.data.lazy import open_dataset
from hpo.engines.keras_tuner import Echo
from hpo.engines.keras_tuner import HpoTuner
from hpo.engines.keras_tuner import make_oracle
from hpo.engines.keras_tuner import MAX_CONSECUTIVE_FAILURES
from hpo.engines.keras_tuner import StopSearch
from hpo.engines.keras_tuner import TrialRecord
from hpo.errors import ConfigError
from hpo.errors import HpoError
from hpo.redact import redact
from hpo.study.budget import Progress
from hpo.study.create import space_changes
from hpo.study.create import stored_space
from hpo.tracking.datasets import log_data_inputs
from hpo.tracking.preflight import checked_tracker
from hpo.tracking.recorder import trial_recorders
from hpo.tracking.runs import runs_page
from hpo.tracking.runs import Tracker

_logger = logging.getLogger(__name__)

DIRECTORY_ENV = "HPO_KT_DIR"  # where keras-tuner keeps its state, default ./kt
DEFAULT_DIRECTORY = "kt"
STATE_FILE = "hpo_study.json"  # project dir: the space, the MLflow experiment and parent run
RELAUNCH_MAY_CHANGE = {"study.n_trials", "study.timeout_s", "study.tuner.max_trials"}


def launch_keras_tuner(
    space: SearchSpace, *, workers: int | None, tracking_uri: str | None, launcher: str, echo: Echo
) -> tuple[bool, Progress | None, str]:
    """study.engine keras_tuner: the search runs here, in this process (hpo/engines/keras_tuner.py).

    Returns:
        Whether the study was created now, its progress (None with --workers 0), and where the
        MLflow UI shows its runs.

    Raises:
        ConfigError: more than one worker or a launcher other than local were asked for.
    """
    name = space.study.name
    if (workers is not None and workers > 1) or launcher != "local":
        raise ConfigError(
            f"{space.source}: study.engine keras_tuner runs its trials one at a time in the "
            f"launching process; got --workers {workers} --launcher {launcher}, use --workers 1 "
            "--launcher local (keras-tuner's distributed mode needs a chief oracle and worker "
            "processes, which hpo does not run; engine optuna runs parallel workers)"
        )
    tracker = checked_tracker(tracking_uri)
    data_cfg = space.resolved_base().data
    dataset = open_dataset(data_cfg.path, max_in_memory_gb=data_cfg.max_in_memory_gb)
    project = kt_directory() / name
    created = not project.exists()
    if workers == 0:
        echo(f"study '{name}' (engine keras_tuner) runs in `hpo launch` itself: "
             "--workers 0 starts nothing")
        return created, None, runs_page(tracker.uri, tracker.experiment_id(name))
    tuner = space.study.tuner
    assert tuner is not None
    echo(
        f"study '{name}' {'created' if created else 'resumed'} in {project} "
        f"(keras-tuner {tuner.type}); MLflow: {redact(tracker.uri)}, experiment '{name}'"
    )
    records = run_search(space, dataset, tracker, echo=echo)
    values = [r.value for r in records if r.state == "COMPLETE" and r.value is not None]
    done = len(values)
    final = Progress(complete=done, pruned=0, failed=len(records) - done, running=0, waiting=0,
                     budget=space.budget(), best=min(values) if values else None)
    return created, final, runs_page(tracker.uri, tracker.experiment_id(name))


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
            data_info = data_summary(dataset)
        parent = tracker.start_study_run(experiment_id, name, space.to_yaml(), data_info)
        log_data_inputs(tracker, parent, space.resolved_base(), dataset)
    project.mkdir(parents=True, exist_ok=True)
    (project / STATE_FILE).write_text(json.dumps({
        "space": stored_space(space), "tracking_uri": redact(tracker.uri),
        "experiment_id": experiment_id, "parent_run_id": parent,
    }))

    recorder_for = trial_recorders(tracker, experiment_id=experiment_id, parent_run_id=parent,
                                   study=name)
    tuner = HpoTuner(make_oracle(space), space=space, dataset=dataset, recorder_for=recorder_for,
                     directory=root, echo=echo, epoch_budget=epoch_budget)
    try:
        tuner.search(verbose=0)
    except StopSearch as stop:
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
