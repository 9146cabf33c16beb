"""A worker: joins a study and runs trials until its budget is spent (what a container runs).

    hpo worker --study quickstart --storage sqlite:///hpo.db

Each pass of the loop fails stale trials (a lost peer's: see heartbeat.py), then either runs
one trial (its budget check and the trial's start are one step under the study's start lock,
claim.py), or waits while the rest of the budget is running on other workers (so that it can
run a lost one again), or stops: budget spent, grid exhausted or study.timeout_s passed.
Before it exits it waits, at most a grace period, for RUNNING trials of dead peers to go stale
and fails them, so that none stays RUNNING.
"""

from __future__ import annotations

import gc
import logging
import os
import time
import warnings
from collections.abc import Callable

import optuna
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from hpo.config.space import SearchSpace
from hpo.data.lazy import open_dataset
from hpo.engines.checkpoints import remove_stranded
from hpo.engines.objective import Objective
from hpo.errors import first_line
from hpo.errors import HpoError
from hpo.errors import TrialFailed
from hpo.keys import DATA_FINGERPRINT_KEY
from hpo.keys import FAIL_REASON_KEY
from hpo.keys import LOST_WORKER_REASON
from hpo.keys import MLFLOW_EXPERIMENT_KEY
from hpo.keys import MLFLOW_PARENT_RUN_KEY
from hpo.keys import MLFLOW_RUN_ID_KEY
from hpo.outputs import check_writable_folder
from hpo.store.claim import trial_start_lock
from hpo.store.heartbeat import enable_heartbeat
from hpo.store.heartbeat import fail_lost
from hpo.store.heartbeat import grace_s
from hpo.store.heartbeat import reap
from hpo.store.heartbeat import beating
from hpo.store.heartbeat import StaleTrialHandler
from hpo.store.retry import is_transient
from hpo.store.retry import RETRY_WINDOW_S
from hpo.store.storage import default_storage_url
from hpo.store.storage import make_storage
from hpo.store.storage import redact
from hpo.study.budget import grid_exhausted
from hpo.study.budget import progress
from hpo.study.create import load_study
from hpo.study.create import stored_tracking_uri
from hpo.tracking.parent_run import finish_parent_run
from hpo.tracking.preflight import checked_tracker
from hpo.tracking.reconcile import KillLostRuns
from hpo.tracking.reconcile import settle_tracking
from hpo.tracking.recorder import trial_recorders
from hpo.tracking.runs import Tracker
from hpo.training import device
from hpo.training.stop import StopRequest
from hpo.trial.runner import MAX_CONSECUTIVE_FAILURES

_logger = logging.getLogger(__name__)


def run_worker(
    study_name: str,
    storage_url: str | None = None,
    tracking_uri: str | None = None,
    *,
    worker_index: int = 0,
    stop: StopRequest | None = None,
) -> int:
    """Runs trials of `study_name` until COMPLETE + PRUNED reach n_trials (or the timeout passes).

    Args:
        study_name: the study to join.
        storage_url: its Optuna storage (default HPO_STORAGE or sqlite:///hpo.db).
        tracking_uri: MLflow (default MLFLOW_TRACKING_URI, else the URI stored with the study).
        worker_index: offsets the sampler seed.
        stop: set by SIGINT/SIGTERM (`StopRequest().install()`); the worker then stops at a safe
            point and raises KeyboardInterrupt.

    Returns:
        The number of trials this worker ran.

    Raises:
        HpoError: the study, its data or its tracking store cannot be used, or trials keep failing.
    """
    device.configure()  # this worker's threads and GPU memory share (HPO_THREADS, HPO_GPU_MEMORY_MB)
    storage = make_storage(storage_url)
    study, space = load_study(storage, study_name, worker_index)
    if space.study.fuse > 1 and (backend := device.backend()) != "jax":
        raise HpoError(f"study '{study_name}': study.fuse {space.study.fuse} trains trials as one "
                       f"program on Keras' JAX backend, this worker runs {backend}: start it "
                       "with KERAS_BACKEND=jax (hpo launch passes it on to its workers)")
    if space.study.checkpoint != "off":  # where this worker's trials keep their checkpoints
        check_writable_folder(space.study.checkpoint_dir, option="study.checkpoint_dir")
    env_uri = os.environ.get("MLFLOW_TRACKING_URI")
    tracker = checked_tracker(tracking_uri or env_uri or stored_tracking_uri(study))
    data_cfg = space.resolved_base().data
    dataset = open_dataset(data_cfg.path, max_in_memory_gb=data_cfg.max_in_memory_gb)
    stop = stop or StopRequest()
    experiment_id = study.user_attrs.get(MLFLOW_EXPERIMENT_KEY) or tracker.experiment_id(study_name)
    parent_run_id = study.user_attrs.get(MLFLOW_PARENT_RUN_KEY)
    recorder_for = trial_recorders(tracker, experiment_id=experiment_id,
                                   parent_run_id=parent_run_id, study=study_name)
    objective = Objective(
        space, dataset, recorder_for, stop=stop, data_sha256=study.user_attrs.get(DATA_FINGERPRINT_KEY)
    )
    enable_heartbeat(storage, space, KillLostRuns(tracker))
    if not os.environ.get("HPO_DEBUG"):
        logging.getLogger("optuna.study._optimize").addFilter(_no_traceback_of_a_lost_trial)
    try:
        ran = _run_until_spent(study, space, objective, tracker, stop)
    except Exception as exc:
        if not is_transient(exc):
            raise
        cause = first_line(exc.__cause__ or exc, None)
        url = redact(storage_url or default_storage_url())
        window_s = getattr(storage, "retry_window_s", RETRY_WINDOW_S)
        raise HpoError(
            f"study storage {url} did not answer for {window_s:.0f} s ({cause}); the "
            "running trial is failed and rerun by other workers once its heartbeat stops; "
            "restart this worker when the database is back"
        ) from None
    if progress(study, space).spent or grid_exhausted(study, space):
        finish_parent_run(study, tracker, space.study.metric)
    return ran


def _run_until_spent(
    study: optuna.Study, space: SearchSpace, objective: Objective, tracker: Tracker,
    stop: StopRequest,
) -> int:
    """The worker loop (see the module docstring); returns the number of trials it ran."""
    poll_s = float(min(5, space.study.heartbeat_s))
    deadline = None if space.study.timeout_s is None else time.monotonic() + space.study.timeout_s
    ran = failures = 0
    while True:
        stop.check()
        reap(study)
        settle_tracking(study, tracker, stop)  # waits for a tracking server gone away
        # The check and the new trial's start are one step for all workers (see claim.py).
        with trial_start_lock(study, grace_s(space)) as started:
            p = progress(study, space)
            if p.spent or grid_exhausted(study, space):
                break
            if deadline is not None and time.monotonic() > deadline:
                _logger.info(
                    "study %s: timeout of %s s reached", study.study_name, space.study.timeout_s
                )
                break
            free = p.budget - p.done - p.running
            busy = free <= 0
            if not busy:
                take = min(space.study.fuse, free)
                try:
                    with stop.in_trial():
                        if take > 1:
                            ended = _run_fused(study, objective, tracker, started, take)
                        else:
                            ended = [t for t in [_run_one(study, objective, tracker, started)] if t]
                except KeyboardInterrupt:
                    _requeue_interrupted(study, space, objective, tracker)
                    raise
        if busy:
            # The rest of the budget runs elsewhere: stay, to run it again if its worker is lost.
            time.sleep(poll_s)
            continue
        for last in ended:
            ran += 1
            failures = failures + 1 if last.state == TrialState.FAIL else 0
            if failures >= MAX_CONSECUTIVE_FAILURES:
                reason = last.user_attrs.get(FAIL_REASON_KEY, "see the worker log")
                raise HpoError(
                    f"study '{study.study_name}': {failures} trials in a row failed; last: {reason}"
                )
    _reap_before_exit(study, space, poll_s)
    remove_stranded(study, space)
    settle_tracking(study, tracker, stop)
    return ran


def _run_one(
    study: optuna.Study, objective: Objective, tracker: Tracker, started: Callable[[], None]
) -> FrozenTrial | None:
    """Runs one trial, calling `started` once it is RUNNING; None when a peer failed it as lost
    meanwhile (its copy runs again)."""
    finished: list[FrozenTrial] = []
    objective.trial_number = None  # set by the objective once this pass's trial exists
    objective.trial_numbers = []

    def run(trial: optuna.Trial) -> float:
        started()
        return objective(trial)

    try:
        study.optimize(
            run,
            n_trials=1,
            catch=(TrialFailed,),
            gc_after_trial=True,
            callbacks=[lambda _, trial: finished.append(trial)],
        )
    except Exception as exc:
        if _lost_to_peer(study, objective.trial_number):
            # A peer saw no heartbeat from us for a grace period (a long database outage, a
            # frozen process) and failed the trial: Optuna refuses our late report or result
            # (UpdateFinishedTrialError, "Cannot tell a FAIL trial", or its "Should not reach"
            # when the peer came between our last write and the result).
            _lost(study, objective.trial_number, tracker)
            return None
        # A trial's own error (Keras refusing a layer, a GPU out of memory, a library bug) ends
        # that trial FAIL with its reason, recorded by the objective; the worker goes on. Storage
        # loss and the product's own errors (tracking away, a bad study) still end the worker.
        if isinstance(exc, HpoError) or is_transient(exc):
            raise
        mine = _this_trial(study, objective.trial_number)
        if mine is None or mine.state != TrialState.FAIL:
            raise
        _logger.warning("trial %s failed (%s: %s); going on", objective.trial_number,
                        type(exc).__name__, first_line(exc))
        return mine
    return finished[-1] if finished else None


def _run_fused(
    study: optuna.Study, objective: Objective, tracker: Tracker, started: Callable[[], None],
    n: int,
) -> list[FrozenTrial]:
    """Runs `n` trials asked together (study.fuse), those of one fusion key as one program
    (Objective.fused), each told as study.optimize tells one; returns those that ended here
    (not those a peer failed as lost meanwhile, whose copies run again).

    Raises:
        KeyboardInterrupt: a stop request ended them (each FAIL, reason interrupted).
        HpoError, a transient storage error: as _run_one raises them, after every trial is told.
    """
    trials: list[optuna.Trial] = []
    try:
        with warnings.catch_warnings():  # `beating` gives these trials their heartbeats
            warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
            for _ in range(n):
                trials.append(study.ask())
    finally:
        objective.trial_numbers = [t.number for t in trials]
        started()
    with beating(study, [t._trial_id for t in trials]):
        ends = objective.fused(trials)
    ended: list[FrozenTrial] = []
    stop: BaseException | None = None
    for trial, end in zip(trials, ends, strict=True):
        try:
            if isinstance(end, optuna.TrialPruned):
                told = _tell(study, trial, state=TrialState.PRUNED)
            elif isinstance(end, BaseException):
                told = _tell(study, trial, state=TrialState.FAIL)
            else:
                told = _tell(study, trial, end)
        except Exception:
            if not _lost_to_peer(study, trial.number):
                raise
            # A peer saw no heartbeat (a partition, a long outage) and failed the trial: Optuna
            # refuses our tell, as _run_one's trial refuses its late report.
            _lost(study, trial.number, tracker)
            continue
        ended.append(told)
        if not isinstance(end, BaseException) or isinstance(end, optuna.TrialPruned):
            continue
        if isinstance(end, KeyboardInterrupt):
            stop = stop or end
        elif not isinstance(end, TrialFailed) and (
                isinstance(end, HpoError) or is_transient(end) or not isinstance(end, Exception)):
            stop = stop or end  # the worker's end, as _run_one lets it go
        else:
            _logger.warning("trial %d failed (%s: %s); going on", trial.number,
                            type(end).__name__, first_line(end))
    gc.collect()
    if stop is not None:
        raise stop
    return ended


def _tell(study: optuna.Study, trial: optuna.Trial, value: float | None = None,
          state: TrialState | None = None) -> FrozenTrial:
    """study.tell, and the trial as told. A grid sampler stops the study at the grid's last
    point with Study.stop, which Optuna allows inside study.optimize only (the trial is told by
    then); the worker loop sees the exhausted grid itself."""
    try:
        return study.tell(trial, value, state=state)
    except RuntimeError as exc:
        told = _this_trial(study, trial.number)
        if "Study.stop" not in str(exc) or told is None or not told.state.is_finished():
            raise
        return told


def _requeue_interrupted(
    study: optuna.Study, space: SearchSpace, objective: Objective, tracker: Tracker
) -> None:
    """A trial stopped by a signal is not at fault: its parameters are queued again, as a lost
    trial's are, and one still RUNNING (a second signal cut its own ending short) is failed."""
    for number in objective.trial_numbers:
        trial = _this_trial(study, number)
        if trial is None:
            continue
        if trial.state == TrialState.RUNNING:
            fail_lost(study, space, [trial], "interrupted", KillLostRuns(tracker))
        elif trial.state == TrialState.FAIL and FAIL_REASON_KEY in trial.user_attrs:
            # (without a reason a peer failed it as lost, and queued its copy)
            StaleTrialHandler(space, KillLostRuns(tracker)).requeue(study, trial)


def _this_trial(study: optuna.Study, number: int | None) -> FrozenTrial | None:
    """Trial `number` as the storage has it now (None before it exists)."""
    mine = [t for t in study.get_trials(deepcopy=False) if t.number == number]
    return mine[0] if mine else None


def _lost_to_peer(study: optuna.Study, number: int | None) -> bool:
    mine = _this_trial(study, number)
    # A trial this worker failed itself carries its reason; a lost one was failed without.
    return mine is not None and mine.state == TrialState.FAIL and FAIL_REASON_KEY not in mine.user_attrs


def _lost(study: optuna.Study, number: int | None, tracker: Tracker) -> None:
    """Says that a peer failed trial `number` as lost, and leaves its run KILLED."""
    _logger.warning("trial %s was failed by another worker (no heartbeat seen); going on", number)
    # The peer failed the trial and ended its run KILLED; if that fell between this worker's last
    # write to the trial and its end of the run, the run ended FINISHED after the peer's KILLED.
    # A run the peer found ended already (this worker ended it after the trial's last write, and
    # its tell was then refused) has no reason from the peer: it gets the lost worker's.
    mine = _this_trial(study, number)
    run_id = mine.user_attrs.get(MLFLOW_RUN_ID_KEY) if mine is not None else None
    try:
        if run_id and tracker.run_status(run_id) != "KILLED":
            tracker.finish_trial_run(run_id, "KILLED", reason=LOST_WORKER_REASON)
    except Exception as exc:  # noqa: BLE001  the next settle_tracking pass leaves it as it is
        _logger.warning("could not end MLflow run %s of lost trial %s KILLED: %s", run_id,
                        number, first_line(exc))


def _no_traceback_of_a_lost_trial(record: logging.LogRecord) -> bool:
    # Optuna logs a failed trial with its traceback; for a trial a peer failed meanwhile (its
    # late report refused) `_run_one` says what happened in one line instead.
    exc = record.exc_info[1] if record.exc_info else None
    return not isinstance(exc, optuna.exceptions.UpdateFinishedTrialError)


def _reap_before_exit(study: optuna.Study, space: SearchSpace, poll_s: float) -> None:
    # A dead peer's trial goes stale within a grace period; a live one beats and ends on its own.
    deadline = time.monotonic() + grace_s(space) + space.study.heartbeat_s
    while time.monotonic() < deadline:
        reap(study)
        if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            return
        time.sleep(poll_s)
