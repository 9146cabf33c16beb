"""Heartbeats: a lost worker's trial is failed, its MLflow run KILLED, its parameters re-queued.

    hpo worker --study dropout --storage postgresql+psycopg://USER:PASSWORD@HOST/DB

Each running trial beats every `study.heartbeat_s` seconds (Optuna's heartbeat thread, which
runs under study.optimize). A RUNNING trial silent for `study.grace_s` seconds is stale, and
whoever notices first fails it: a worker about to start a trial, a worker waiting for the
study's last trials, a worker about to exit, or `hpo storage-proxy` on its timer.
`StaleTrialHandler` then ends the trial's MLflow runs as KILLED (found by id and by their tags
hpo.study and hpo.trial, see reconcile.py) and, while the budget is not
spent, re-queues its parameters with Optuna's RetryHeartbeatStaleTrialCallback (up to
`study.max_retry` times), so the next free worker runs them again. A trial whose worker is known
gone without waiting for silence (a launcher saw its process exit; a signal stopped it) takes
the same path through `fail_lost` and `StaleTrialHandler.requeue`.
"""

from __future__ import annotations

import copy
import logging
import os
import time
import warnings
from typing import TYPE_CHECKING
from typing import Any

import optuna
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from hpo.errors import HpoError
from hpo.objective.keys import FAIL_REASON_KEY
from hpo.objective.keys import MLFLOW_RUN_ID_KEY
from hpo.objective.space import SearchSpace
from hpo.study.budget import progress
from hpo.study.create import stored_tracking_uri

if TYPE_CHECKING:
    from hpo.tracking.runs import Tracker

_logger = logging.getLogger(__name__)

BEAT_KEY = "hpo:heartbeat"  # trial system attr: the wall time of a gRPC worker's last beat
LOST_REASON = "worker lost: no heartbeat for {grace} s"


def grace_s(space: SearchSpace) -> int:
    """Seconds of silence after which a RUNNING trial is stale (default 4 x heartbeat_s)."""
    return space.study.grace_s or 4 * space.study.heartbeat_s


def enable_heartbeat(
    storage: optuna.storages.BaseStorage, space: SearchSpace, tracker: Tracker | None = None
) -> StaleTrialHandler:
    """Turns on heartbeats with the study's settings; stale trials go to a StaleTrialHandler.

    Raises:
        HpoError: the storage cannot beat (only those of `make_storage` can).
    """
    if not hasattr(storage, "enable_heartbeat"):
        raise HpoError(
            f"storage {type(storage).__name__} has no heartbeats; open it with make_storage(url)"
        )
    handler = StaleTrialHandler(space, tracker)
    storage.enable_heartbeat(space.study.heartbeat_s, grace_s(space), handler)
    return handler


def reap(study: optuna.Study) -> None:
    """Fails the study's stale trials now (each goes through the storage's StaleTrialHandler)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


class StaleTrialHandler:
    """Optuna's heartbeat_stale_trial_callback: ends the lost trial's MLflow run, re-queues it.

    Args:
        space: the study's search space (budget, max_retry, grace).
        tracker: where the trial runs live; default: MLFLOW_TRACKING_URI, else the URI stored
            with the study.
    """

    def __init__(self, space: SearchSpace, tracker: Tracker | None = None) -> None:
        self.space, self.tracker = space, tracker
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._retry = optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=space.study.max_retry
            )

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        reason = LOST_REASON.format(grace=grace_s(self.space))
        _logger.warning("study %s: trial %d failed: %s", study.study_name, trial.number, reason)
        self.end_run(study, trial, reason)
        self.requeue(study, trial)

    def requeue(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Queues a WAITING copy of the failed `trial` with its parameters, unless the budget is
        spent or its parameters were re-queued `study.max_retry` times already."""
        if progress(study, self.space).spent:
            return  # the budget is spent: nothing would run the copy
        retry = copy.deepcopy(trial)
        retry.user_attrs = {}  # run id, worker and reason belong to the lost attempt
        retry.system_attrs = {k: v for k, v in trial.system_attrs.items() if k != BEAT_KEY}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._retry(study, retry)

    def end_run(self, study: optuna.Study, trial: FrozenTrial, reason: str) -> None:
        """Ends the trial's MLflow runs as KILLED, with the reason as tag hpo.fail_reason: the
        one recorded on the trial and any other tagged with it (a worker may have died between
        creating its run and recording the id)."""
        from hpo.study.reconcile import end_trial_runs

        run_id = trial.user_attrs.get(MLFLOW_RUN_ID_KEY)
        try:
            tracker = self._tracker(study)
            end_trial_runs(study, tracker, trial.number, "KILLED", reason, known=run_id)
        # The trial is failed already: an unreachable tracker must not undo that (MLflow's
        # errors come as many types), so say it and go on; a worker ends the runs once it
        # answers (reconcile.py).
        except Exception as exc:  # noqa: BLE001
            _logger.warning(
                "could not end the MLflow runs of trial %d: %s", trial.number, exc
            )

    def _tracker(self, study: optuna.Study) -> Tracker:
        if self.tracker is None:
            from hpo.tracking.runs import Tracker

            self.tracker = Tracker(
                os.environ.get("MLFLOW_TRACKING_URI") or stored_tracking_uri(study)
            )
        return self.tracker


def fail_lost(
    study: optuna.Study,
    space: SearchSpace,
    trials: list[FrozenTrial],
    reason: str,
    tracker: Tracker | None = None,
) -> list[int]:
    """Fails RUNNING `trials` whose worker is known gone, as the reaper does a silent one: FAIL
    with `reason` (trial attr fail_reason), MLflow run KILLED, a copy re-queued.

    A trial finished meanwhile (by its worker, or failed by a reaper) is left alone.

    Returns:
        The numbers of the trials failed.
    """
    handler = StaleTrialHandler(space, tracker)
    failed = []
    for t in trials:
        try:
            study._storage.set_trial_user_attr(t._trial_id, FAIL_REASON_KEY, reason)
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        _logger.warning("study %s: trial %d failed: %s", study.study_name, t.number, reason)
        handler.end_run(study, t, reason)
        handler.requeue(study, t)
        failed.append(t.number)
    return failed


class SilenceWatch:
    """Trials whose beat value has not changed for a grace period, timed on this process's clock.

    Looking twice more than a grace period apart and finding the same beat is proof enough:
    a live worker would have beaten in between. No clock of another machine is read.
    """

    def __init__(self) -> None:
        self._seen: dict[int, dict[int, tuple[Any, float]]] = {}

    def silent(self, study_id: int, beats: dict[int, Any], grace_s: float) -> list[int]:
        """Ids among `beats` ({trial_id: last beat value}) silent for longer than `grace_s`."""
        now = time.monotonic()
        seen = self._seen.setdefault(study_id, {})
        for gone in set(seen) - set(beats):
            del seen[gone]
        stale = []
        for trial_id, value in beats.items():
            last = seen.get(trial_id)
            if last is None or last[0] != value:
                seen[trial_id] = (value, now)
            elif now - last[1] > grace_s:
                stale.append(trial_id)
        return stale
