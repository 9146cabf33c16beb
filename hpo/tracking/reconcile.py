"""Ends MLflow trial runs left RUNNING, found by their tags hpo.study and hpo.trial.

    hpo status dropout --repair

A trial's run can outlive its trial: a worker killed between creating the run and recording its
id on the trial, or a tracking server away when the trial ended (the run cannot be ended then).
Every trial run is tagged with its study and trial number when it is created, so whoever fails a
lost trial ends every run tagged with it (`end_trial_runs`), and a worker (before each trial,
once the tracking server answers) or `hpo status --repair` (`repair`) ends the RUNNING runs
whose trial is finished (`end_orphan_runs`).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import optuna
from optuna.trial import FrozenTrial

from hpo.keys import FAIL_REASON_KEY
from hpo.keys import LOST_WORKER_REASON
from hpo.keys import MLFLOW_EXPERIMENT_KEY
from hpo.keys import MLFLOW_PARENT_RUN_KEY
from hpo.keys import MLFLOW_RUN_ID_KEY

from hpo.study.create import stored_tracking_uri
from hpo.tracking.runs import Tracker

if TYPE_CHECKING:
    from hpo.config.space import SearchSpace
    from hpo.training.stop import StopRequest

_logger = logging.getLogger(__name__)


class KillLostRuns:
    """Ends the MLflow runs of a trial failed as lost KILLED, with the reason as tag
    hpo.fail_reason: the one recorded on the trial and any other tagged with it (a worker may
    have died between creating its run and recording the id). store/heartbeat.py calls it.

    Args:
        tracker: where the runs live; default: MLFLOW_TRACKING_URI, else the URI stored with
            the study (opened at the first lost trial).
    """

    def __init__(self, tracker: Tracker | None = None) -> None:
        self.tracker = tracker

    def __call__(self, study: optuna.Study, trial: FrozenTrial, reason: str) -> None:
        if self.tracker is None:
            self.tracker = Tracker(
                os.environ.get("MLFLOW_TRACKING_URI") or stored_tracking_uri(study)
            )
        end_trial_runs(study, self.tracker, trial.number, "KILLED", reason,
                       known=trial.user_attrs.get(MLFLOW_RUN_ID_KEY))


def run_end_of(trial: FrozenTrial) -> tuple[str, str | None]:
    """The state (for Tracker.finish_trial_run) and reason a finished trial's run ends with.

    A FAIL trial without a reason lost its worker, as does one failed `interrupted`: KILLED.
    """
    if trial.state != optuna.trial.TrialState.FAIL:
        return trial.state.name, None
    reason = trial.user_attrs.get(FAIL_REASON_KEY)
    if not reason:
        return "KILLED", LOST_WORKER_REASON
    return ("KILLED" if str(reason).startswith("interrupted") else "FAIL"), str(reason)


def _experiment(study: optuna.Study, tracker: Tracker) -> str | None:
    found = study.user_attrs.get(MLFLOW_EXPERIMENT_KEY)
    if found:
        return str(found)
    experiment = tracker.client.get_experiment_by_name(study.study_name)
    return None if experiment is None else str(experiment.experiment_id)


def end_trial_runs(
    study: optuna.Study, tracker: Tracker, number: int, state: str, reason: str | None,
    known: str | None = None,
) -> list[str]:
    """Ends every RUNNING run of trial `number` (tagged with it, or `known` by id) as `state`.

    Returns:
        The ids of the runs ended.
    """
    run_ids = []
    experiment = _experiment(study, tracker)
    if experiment is not None:
        parent = study.user_attrs.get(MLFLOW_PARENT_RUN_KEY)
        found = tracker.running_trial_runs(experiment, study.study_name, number=number,
                                           parent_run_id=parent)
        run_ids = [run.info.run_id for run in found]
    if known and known not in run_ids and tracker.run_status(known) == "RUNNING":
        run_ids.append(known)
    for run_id in run_ids:
        tracker.finish_trial_run(run_id, state, reason=reason)
    return run_ids


def end_orphan_runs(study: optuna.Study, tracker: Tracker) -> list[tuple[int, str, str]]:
    """Ends the study's RUNNING trial runs whose trial is finished, each as its trial ended.

    Returns:
        (trial number, run id, state) of each run ended.
    """
    experiment = _experiment(study, tracker)
    if experiment is None:
        return []
    runs = tracker.running_trial_runs(experiment, study.study_name,
                                      parent_run_id=study.user_attrs.get(MLFLOW_PARENT_RUN_KEY))
    if not runs:
        return []
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    ended = []
    for run in runs:
        try:
            trial = trials.get(int(run.data.tags.get("hpo.trial", "")))
        except ValueError:
            continue
        if trial is None or not trial.state.is_finished():
            continue  # running, or not this storage's trial
        state, reason = run_end_of(trial)
        tracker.finish_trial_run(run.info.run_id, state, reason=reason)
        _logger.warning("study %s: ended MLflow run %s of trial %d (%s), left RUNNING",
                        study.study_name, run.info.run_id, trial.number, state)
        ended.append((trial.number, run.info.run_id, state))
    return ended


def repair(
    storage: optuna.storages.BaseStorage, study: optuna.Study, space: SearchSpace,
    tracker: Tracker,
) -> list[str]:
    """`hpo status --repair`: fails the study's stale trials (their runs ended KILLED, their
    parameters queued again, as a worker would), then ends the runs left RUNNING by finished
    trials.

    Args:
        storage: the study's storage, as make_storage opened it (heartbeats are turned on).

    Returns:
        One line per trial failed and per run ended.
    """
    from hpo.store.heartbeat import enable_heartbeat
    from hpo.store.heartbeat import grace_s
    from hpo.store.heartbeat import reap
    from hpo.tracking.runs import FINAL_STATES

    running = {t.number for t in study.get_trials(deepcopy=False,
                                                   states=(optuna.trial.TrialState.RUNNING,))}
    enable_heartbeat(storage, space, KillLostRuns(tracker))
    reap(study)
    failed = [t.number for t in study.get_trials(deepcopy=False,
                                                 states=(optuna.trial.TrialState.FAIL,))
              if t.number in running]
    lines = [f"trial {n}: no heartbeat for {grace_s(space)} s; failed, its MLflow runs ended "
             "KILLED" for n in failed]
    for number, run_id, state in end_orphan_runs(study, tracker):
        lines.append(f"trial {number}: MLflow run {run_id} was left RUNNING; "
                     f"ended {FINAL_STATES[state]}")
    return lines


def settle_tracking(
    study: optuna.Study, tracker: Tracker, stop: StopRequest | None = None
) -> None:
    """Before a worker's next trial: waits for a tracking server gone away (at most
    HPO_TRACKING_WAIT_S), then ends the study's runs left RUNNING by finished trials.

    Raises:
        TrackingError: the server did not come back within HPO_TRACKING_WAIT_S.
    """
    from hpo.tracking.retry import TrackingUnavailable
    from hpo.tracking.retry import default_wait_s

    check = stop.check if stop is not None else (lambda: None)
    for _ in range(2):
        if tracker.client.down:
            tracker.client.wait_until_up(default_wait_s(), check=check)
        try:
            end_orphan_runs(study, tracker)
            return
        except TrackingUnavailable:
            continue  # gone again: wait for it once more
        except Exception as exc:  # noqa: BLE001  a clean-up; the next pass tries again
            _logger.warning("study %s: could not end runs left RUNNING: %s", study.study_name, exc)
            return
