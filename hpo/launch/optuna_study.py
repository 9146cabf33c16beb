"""An Optuna study launched: created or joined, its parent MLflow run, its workers started and
supervised until the budget is spent (launcher.launch calls it once the space passed its checks).
"""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import TrialState

from hpo.config.space import SearchSpace
from hpo.data.contract import Dataset
from hpo.data.contract import same_data
from hpo.data.lazy import H5Source
from hpo.data.lazy import open_dataset
from hpo.errors import DataContractError
from hpo.errors import HpoError
from hpo.keys import DATA_FINGERPRINT_KEY
from hpo.keys import FAIL_REASON_KEY
from hpo.keys import LOST_WORKER_REASON
from hpo.keys import MLFLOW_PARENT_RUN_KEY
from hpo.launch.gpus import visible_gpus
from hpo.launch.supervisor import Echo
from hpo.launch.supervisor import stop_timeout_s
from hpo.launch.supervisor import supervise
from hpo.launch.worker_processes import LAUNCHERS
from hpo.launch.worker_processes import Plan
from hpo.launch.worker_processes import worker_env
from hpo.launch.worker_processes import WorkerProcess
from hpo.redact import redact
from hpo.store.storage import default_storage_url
from hpo.store.storage import make_storage
from hpo.study.budget import Progress
from hpo.study.budget import progress
from hpo.study.create import create_or_join
from hpo.tracking.parent_run import end_parent_run
from hpo.tracking.parent_run import finish_parent_run
from hpo.tracking.parent_run import start_parent_run
from hpo.tracking.preflight import checked_tracker
from hpo.tracking.runs import runs_page


def launch_optuna(
    space: SearchSpace,
    *,
    workers: int | None,
    storage_url: str | None,
    tracking_uri: str | None,
    launcher: str,
    image: str,
    network: str,
    workers_per_gpu: int,
    echo: Echo,
) -> tuple[bool, Progress, str]:
    """Creates or joins the study of `space` (checked: launch.checks), runs its workers until the
    budget is spent (none with `workers` 0), ends its parent MLflow run.

    Returns:
        Whether the study was created now, its progress, and where the MLflow UI shows its runs.

    Raises:
        HpoError: an unreachable store, a data file not the study's, or workers that failed
            before the budget was spent.
    """
    name = space.study.name
    storage_url = storage_url or default_storage_url()
    # A dead tracking server is an error now, not in every trial.
    tracker = checked_tracker(tracking_uri)
    data_cfg = space.resolved_base().data
    # A broken file fails here, before any trial starts.
    dataset = open_dataset(data_cfg.path, max_in_memory_gb=data_cfg.max_in_memory_gb)
    # A launcher's own errors (no GPU, a file URL for containers) come before the study exists.
    processes: list[WorkerProcess] | None = None
    if workers != 0:
        cal = data_cfg.calibration_path
        plan = Plan(
            name, storage_url, tracker.uri, str(data_cfg.path), workers, visible_gpus(),
            Path.cwd(), image, network, workers_per_gpu=workers_per_gpu,
            calibration_path=None if cal is None else str(cal),
            checkpoint_dir=None if space.study.checkpoint == "off" else space.study.checkpoint_dir,
            env=worker_env(space),
        )
        processes = LAUNCHERS[launcher](plan)
        stop_timeout_s()  # a bad HPO_STOP_TIMEOUT_S too
    study, created = create_or_join(make_storage(storage_url), space)
    _same_data(study, dataset)
    if DATA_FINGERPRINT_KEY not in study.user_attrs:  # what workers and promote check the file against
        study.set_user_attr(DATA_FINGERPRINT_KEY, dataset.fingerprint()["sha256"])
    start_parent_run(study, space, tracker, dataset)
    echo(
        f"study '{name}' {'created' if created else 'joined'} in {redact(storage_url)}; "
        f"MLflow: {redact(tracker.uri)}, experiment '{name}'"
    )
    if processes is None:
        final = progress(study, space)
    else:
        parent = study.user_attrs[MLFLOW_PARENT_RUN_KEY]
        try:
            final = supervise(study, space, processes, echo, tracker)
            _some_trial_finished(study, final)
        except BaseException as exc:  # a relaunch resumes the run
            status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            end_parent_run(tracker, parent, status)
            raise
        finish_parent_run(study, tracker, space.study.metric)
    return created, final, runs_page(tracker.uri, tracker.experiment_id(name))


def _same_data(study: optuna.Study, dataset: Dataset | H5Source) -> None:
    """Raises DataContractError when the data file is not the one the study began on (each of
    its trials would fail on it)."""
    began = study.user_attrs.get(DATA_FINGERPRINT_KEY)
    found = dataset.fingerprint()
    now = found["sha256"]
    if began is not None and not same_data(began, found):
        raise DataContractError(
            f"data file {dataset.path} is not the one study '{study.study_name}' began on "
            f"(fingerprint {began} at its start, {now} now); restore it, or rename study.name "
            "to start a new study on this file"
        )


def _some_trial_finished(study: optuna.Study, final: Progress) -> None:
    """Raises HpoError when the workers stopped (grid exhausted, timeout) with trials failed and
    none finished: the launch produced nothing, whatever the workers' exit codes."""
    if final.done or not final.failed:
        return
    last = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))[-1]
    reason = last.user_attrs.get(FAIL_REASON_KEY, LOST_WORKER_REASON)
    raise HpoError(
        f"study '{study.study_name}': no trial finished, {final.failed} failed; last, trial "
        f"{last.number}: {reason}"
    )
