"""Heartbeats: a lost worker's trial is failed, its MLflow run KILLED, its parameters re-queued.

    hpo worker --study dropout --storage postgresql+psycopg://USER:PASSWORD@HOST/DB

Each running trial beats every `study.heartbeat_s` seconds (Optuna's heartbeat thread, which
runs under study.optimize). A RUNNING trial silent for `study.grace_s` seconds is stale, and
whoever notices first fails it: a worker about to start a trial, a worker waiting for the
study's last trials, a worker about to exit, or `hpo storage-proxy` on its timer.
`StaleTrialHandler` then ends the trial's runs through the `end_runs` it was given (the MLflow
runs KILLED, found by id and by their tags: tracking/reconcile.py's KillLostRuns) and, while
the budget is not spent, re-queues its parameters with Optuna's RetryHeartbeatStaleTrialCallback (up to
`study.max_retry` times), so the next free worker runs them again. A trial whose worker is known
gone without waiting for silence (a launcher saw its process exit; a signal stopped it) takes
the same path through `fail_lost` and `StaleTrialHandler.requeue`.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
import warnings
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any

import optuna
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from hpo.config.space import SearchSpace
from hpo.errors import first_line
from hpo.errors import HpoError
from hpo.keys import BEAT_KEY
from hpo.keys import FAIL_REASON_KEY
from hpo.study.budget import progress

_logger = logging.getLogger(__name__)

LOST_REASON = "worker lost: no heartbeat for {grace} s"

# Ends the runs of a trial failed as lost, given the study, the trial and the reason.
EndRuns = Callable[[optuna.Study, FrozenTrial, str], None]


def grace_s(space: SearchSpace) -> int:
    """Seconds of silence after which a RUNNING trial is stale (default 4 x heartbeat_s)."""
    return space.study.grace_s or 4 * space.study.heartbeat_s


def enable_heartbeat(
    storage: optuna.storages.BaseStorage, space: SearchSpace, end_runs: EndRuns | None = None
) -> StaleTrialHandler:
    """Turns on heartbeats with the study's settings; stale trials go to a StaleTrialHandler.

    Raises:
        HpoError: the storage cannot beat (only those of `make_storage` can).
    """
    if not hasattr(storage, "enable_heartbeat"):
        raise HpoError(
            f"storage {type(storage).__name__} has no heartbeats; open it with make_storage(url)"
        )
    handler = StaleTrialHandler(space, end_runs)
    storage.enable_heartbeat(space.study.heartbeat_s, grace_s(space), handler)
    return handler


def reap(study: optuna.Study) -> None:
    """Fails the study's stale trials now (each goes through the storage's StaleTrialHandler)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


@contextmanager
def beating(study: optuna.Study, trial_ids: Sequence[int]) -> Iterator[None]:
    """Heartbeats of running trials that study.optimize does not run (a worker's fused trials,
    asked together): every heartbeat interval, one beat per trial, on a thread of its own."""
    storage = study._storage
    interval = storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None
    if not interval:
        yield
        return
    done = threading.Event()

    def beat() -> None:
        while True:
            for trial_id in trial_ids:
                try:
                    storage.record_heartbeat(trial_id)
                except optuna.exceptions.UpdateFinishedTrialError:
                    pass  # ended, or failed as lost by a peer: its report says so
                except Exception as exc:  # noqa: BLE001  (retried inside; the trial's next call says it)
                    _logger.warning("heartbeat of trial id %d: %s", trial_id, first_line(exc))
            if done.wait(interval):
                return

    thread = threading.Thread(target=beat, daemon=True, name="heartbeats")
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


class StaleTrialHandler:
    """Optuna's heartbeat_stale_trial_callback: ends the lost trial's runs, re-queues it.

    Args:
        space: the study's search space (budget, max_retry, grace).
        end_runs: ends the trial's runs (None: the trial has none to end).
    """

    def __init__(self, space: SearchSpace, end_runs: EndRuns | None = None) -> None:
        self.space, self.end_runs = space, end_runs
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
        """Ends the trial's runs with `reason`; the trial is failed already, so a tracking store
        that cannot be reached (its errors come as many types) is said, not raised: a worker
        ends the runs once it answers (tracking/reconcile.py)."""
        if self.end_runs is None:
            return
        try:
            self.end_runs(study, trial, reason)
        except Exception as exc:  # noqa: BLE001
            _logger.warning(
                "could not end the MLflow runs of trial %d: %s", trial.number, exc
            )


def fail_lost(
    study: optuna.Study,
    space: SearchSpace,
    trials: list[FrozenTrial],
    reason: str,
    end_runs: EndRuns | None = None,
) -> list[int]:
    """Fails RUNNING `trials` whose worker is known gone, as the reaper does a silent one: FAIL
    with `reason` (trial attr fail_reason), its runs ended by `end_runs`, a copy re-queued.

    A trial finished meanwhile (by its worker, or failed by a reaper) is left alone.

    Returns:
        The numbers of the trials failed.
    """
    handler = StaleTrialHandler(space, end_runs)
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

    Args:
        clock: this process's clock (time.monotonic), replaced by a test's fake clock.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._seen: dict[int, dict[int, tuple[Any, float]]] = {}

    def silent(self, study_id: int, beats: dict[int, Any], grace_s: float) -> list[int]:
        """Ids among `beats` ({trial_id: last beat value}) silent for longer than `grace_s`."""
        now = self._clock()
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
