"""A study's parent MLflow run: its trials' runs nest under it.

`hpo launch` starts it (or sets it RUNNING again when it resumes the study), whoever spends the
budget ends it FINISHED with the best value (the launch, or any worker: finishing is
idempotent), and a launch stopped early ends it KILLED (Ctrl-C) or FAILED; a relaunch resumes it.
The run's id and experiment are kept with the study (MLFLOW_PARENT_RUN_KEY, MLFLOW_EXPERIMENT_KEY).
"""

from __future__ import annotations

import sys

import optuna

from hpo.config.space import SearchSpace
from hpo.data.baseline import data_summary
from hpo.data.contract import Dataset
from hpo.data.lazy import H5Source
from hpo.errors import first_line
from hpo.keys import METRIC
from hpo.keys import MLFLOW_EXPERIMENT_KEY
from hpo.keys import MLFLOW_PARENT_RUN_KEY
from hpo.keys import TRACKING_URI_KEY
from hpo.redact import redact
from hpo.study.budget import grid_exhausted
from hpo.study.budget import progress
from hpo.study.create import store_tracking_uri
from hpo.tracking.datasets import log_data_inputs
from hpo.tracking.runs import Tracker


def start_parent_run(
    study: optuna.Study, space: SearchSpace, tracker: Tracker, dataset: Dataset | H5Source
) -> None:
    """Starts the study's parent run, with the space and the data it trains on, the first time;
    sets it RUNNING again when a study with budget left is resumed (a finished study's run stays
    FINISHED)."""
    name = space.study.name
    if MLFLOW_PARENT_RUN_KEY not in study.user_attrs:
        experiment_id = tracker.experiment_id(name)
        parent = tracker.start_study_run(experiment_id, name, space.to_yaml(), data_summary(dataset))
        log_data_inputs(tracker, parent, space.resolved_base(), dataset)  # the runs table's Dataset
        study.set_user_attr(MLFLOW_EXPERIMENT_KEY, experiment_id)
        study.set_user_attr(MLFLOW_PARENT_RUN_KEY, parent)
        store_tracking_uri(study, tracker.uri)
    elif tracker.run_status(study.user_attrs[MLFLOW_PARENT_RUN_KEY]) != "RUNNING" and not (
        progress(study, space).spent or grid_exhausted(study, space)
    ):  # resumed; a finished study's run stays FINISHED
        tracker.client.update_run(study.user_attrs[MLFLOW_PARENT_RUN_KEY], status="RUNNING")
    stored = study.user_attrs.get(TRACKING_URI_KEY)
    if stored and stored != redact(stored):  # kept in full by an older hpo
        store_tracking_uri(study, stored)


def finish_parent_run(study: optuna.Study, tracker: Tracker, metric: str = METRIC) -> None:
    """Ends the study's parent run with its best value, as best_<metric> (idempotent: any worker
    may call it)."""
    parent = study.user_attrs.get(MLFLOW_PARENT_RUN_KEY)
    if not parent:
        return
    try:
        best = study.best_trial
        tracker.log_metrics(parent, {f"best_{metric}": float(best.value or float("nan"))})
        tracker.set_tags(parent, {"hpo.best_trial": best.number})
    except ValueError:  # no complete trial
        pass
    tracker.end_run(parent, "FINISHED")


def end_parent_run(tracker: Tracker, run_id: str, status: str) -> None:
    """Ends the parent run `run_id` as `status` (KILLED, FAILED) for a launch that stopped early;
    a failure to do so is one line on stderr, since the launch's own error is the one to report."""
    try:
        tracker.end_run(run_id, status)
    except Exception as exc:  # noqa: BLE001  the launch's own error is the one to report
        print(f"could not end the study's MLflow run {run_id} as {status}: {first_line(exc)}",
              file=sys.stderr)
