"""A worker: joins a study and runs trials until its budget is spent (what a container runs).

    hpo worker --study quickstart --storage sqlite:///hpo.db
"""

from __future__ import annotations

import logging
import os
import time

import optuna

from hpo.data.lazy import open_dataset
from hpo.errors import HpoError
from hpo.errors import TrialFailed
from hpo.objective.objective import Objective
from hpo.study.budget import grid_exhausted
from hpo.study.budget import progress
from hpo.study.create import TRACKING_URI_KEY
from hpo.study.create import load_study
from hpo.study.storage import make_storage
from hpo.tracking.runs import MLFLOW_EXPERIMENT_KEY
from hpo.tracking.runs import MLFLOW_PARENT_RUN_KEY
from hpo.tracking.runs import Tracker

_logger = logging.getLogger(__name__)

MAX_CONSECUTIVE_FAILURES = 5  # a worker whose every trial fails is misconfigured: stop it


def run_worker(
    study_name: str,
    storage_url: str | None = None,
    tracking_uri: str | None = None,
    *,
    worker_index: int = 0,
) -> int:
    """Runs trials of `study_name` until COMPLETE + PRUNED reach n_trials (or the timeout passes).

    Returns:
        The number of trials this worker ran.

    Raises:
        HpoError: the study, its data or its tracking store cannot be used, or trials keep failing.
    """
    _limit_threads()
    storage = make_storage(storage_url)
    study, space = load_study(storage, study_name, worker_index)
    tracker = Tracker(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or study.user_attrs.get(TRACKING_URI_KEY))
    tracker.check()
    data_cfg = space.resolved_base().data
    dataset = open_dataset(data_cfg.path, max_in_memory_gb=data_cfg.max_in_memory_gb)
    objective = Objective(
        space,
        dataset,
        tracker,
        experiment_id=study.user_attrs.get(MLFLOW_EXPERIMENT_KEY) or tracker.experiment_id(study_name),
        parent_run_id=study.user_attrs.get(MLFLOW_PARENT_RUN_KEY),
    )
    started = time.monotonic()
    ran = failures = 0
    while True:
        p = progress(study, space)
        if p.spent or p.done + p.running >= p.budget or grid_exhausted(study, space):
            break
        if space.study.timeout_s is not None and time.monotonic() - started > space.study.timeout_s:
            _logger.info("study %s: timeout of %s s reached", study_name, space.study.timeout_s)
            break
        study.optimize(objective, n_trials=1, catch=(TrialFailed,), gc_after_trial=True)
        ran += 1
        last = study.get_trials(deepcopy=False)[-1]
        failures = failures + 1 if last.state == optuna.trial.TrialState.FAIL else 0
        if failures >= MAX_CONSECUTIVE_FAILURES:
            reason = last.user_attrs.get("fail_reason", "see the worker log")
            raise HpoError(f"study '{study_name}': {failures} trials in a row failed; last: {reason}")
    if progress(study, space).spent or grid_exhausted(study, space):
        finish_parent_run(study, tracker)
    return ran


def finish_parent_run(study: optuna.Study, tracker: Tracker) -> None:
    """Ends the study's parent run with its best value (idempotent: any worker may call it)."""
    parent = study.user_attrs.get(MLFLOW_PARENT_RUN_KEY)
    if not parent:
        return
    try:
        best = study.best_trial
        tracker.log_metrics(parent, {"best_val_residual_std": float(best.value or float("nan"))})
        tracker.set_tags(parent, {"hpo.best_trial": best.number})
    except ValueError:  # no complete trial
        pass
    tracker.end_run(parent, "FINISHED")


def _limit_threads() -> None:
    # N workers on one machine must share its cores instead of each taking all of them.
    threads = os.environ.get("HPO_THREADS")
    if threads:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(int(threads))
        tf.config.threading.set_inter_op_parallelism_threads(max(1, int(threads)))
