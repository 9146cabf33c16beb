"""`hpo launch`: validate a space, create or join its study, start workers, show progress.

    hpo launch search_spaces/quickstart.yaml --workers 2
    hpo launch search_spaces/dropout.yaml --launcher docker --storage postgresql+psycopg://... \
        --tracking-uri http://127.0.0.1:5000

Workers are processes the launcher starts and watches: `local` runs `hpo worker` here, each
with its own GPU (round robin over the visible ones, through CUDA_VISIBLE_DEVICES); `docker`
runs one worker container per GPU. Ctrl-C stops them cleanly: each worker gets one SIGINT,
fails its running trial with reason "interrupted", ends its MLflow run as KILLED and re-queues
its parameters; a worker still alive after HPO_STOP_TIMEOUT_S (default 60) is killed and its
trial failed and re-queued by the launcher. A local worker that dies (a crash, kill -9) has its
trial failed and re-queued at once, without waiting for its heartbeat to go stale.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

import optuna
from optuna.trial import TrialState

from hpo.config.space import SearchSpace
from hpo.data.baseline import data_summary
from hpo.data.contract import Dataset
from hpo.data.lazy import H5Source
from hpo.data.lazy import open_dataset
from hpo.errors import ConfigError
from hpo.errors import DataContractError
from hpo.errors import first_line
from hpo.errors import HpoError
from hpo.keys import DATA_FINGERPRINT_KEY
from hpo.keys import FAIL_REASON_KEY
from hpo.keys import LOST_WORKER_REASON
from hpo.keys import METRIC
from hpo.keys import MLFLOW_EXPERIMENT_KEY
from hpo.keys import MLFLOW_PARENT_RUN_KEY
from hpo.keys import TRACKING_URI_KEY
from hpo.keys import WORKER_KEY
from hpo.launch.checks import check_launch
from hpo.launch.docker import DEFAULT_IMAGE
from hpo.launch.docker import DEFAULT_NETWORK
from hpo.launch.docker import docker_workers
from hpo.launch.docker import write_secrets_file
from hpo.launch.gpus import gpu_env
from hpo.launch.gpus import gpu_memory_mb
from hpo.launch.gpus import round_robin
from hpo.launch.gpus import sharing
from hpo.launch.gpus import visible_gpus
from hpo.launch.keras_tuner import launch_keras_tuner
from hpo.launch.worker import finish_parent_run
from hpo.store.heartbeat import fail_lost
from hpo.store.storage import default_storage_url
from hpo.store.storage import make_storage
from hpo.store.storage import redact
from hpo.study.budget import grid_exhausted
from hpo.study.budget import Progress
from hpo.study.budget import progress
from hpo.study.create import create_or_join
from hpo.study.create import store_tracking_uri
from hpo.study.create import stored_tracking_uri
from hpo.tracking.datasets import log_data_inputs
from hpo.tracking.preflight import checked_tracker
from hpo.tracking.reconcile import KillLostRuns
from hpo.tracking.runs import runs_page
from hpo.tracking.runs import Tracker

POLL_S = 2.0
STOP_TIMEOUT_S = 60.0  # how long stopped workers get to end their trial and MLflow run
STOP_TIMEOUT_ENV = "HPO_STOP_TIMEOUT_S"  # overrides it: keep it below a platform's kill grace
KILLED_REASON = "interrupted: worker killed by the launcher"

Echo = Callable[[str], None]


@dataclass(frozen=True)
class LaunchResult:
    study_name: str
    created: bool
    progress: Progress | None  # None when nothing ran (--workers 0 of a keras-tuner study)
    metric: str = METRIC
    runs: str = ""  # where the MLflow UI shows the study's runs (tracking.runs.runs_page)


@dataclass(frozen=True)
class Plan:
    """What a launcher needs to start the workers of one study."""

    study: str
    storage_url: str
    tracking_uri: str
    data_path: str
    workers: int | None
    gpus: list[str]
    cwd: Path
    image: str = DEFAULT_IMAGE
    network: str = DEFAULT_NETWORK
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    workers_per_gpu: int = 1

    def worker_count(self) -> int:
        """plan.workers, or by default workers_per_gpu per visible GPU (1 without a GPU)."""
        if self.workers is not None:
            return self.workers
        return self.workers_per_gpu * len(self.gpus) if self.gpus else 1


@dataclass(frozen=True)
class WorkerProcess:
    """One worker as the launcher starts it: argv, environment, and how to force it to stop."""

    label: str
    argv: list[str]
    env: dict[str, str]
    kill_argv: list[str] | None = None  # None: SIGKILL the process itself
    key: str | None = None  # WORKER_KEY of its trials; None: this host and the process's pid


def local_workers(plan: Plan) -> list[WorkerProcess]:
    """`hpo worker` processes on this machine, worker i on GPU i mod n (see Plan.worker_count).

    Workers sharing a GPU each get a bounded share of its memory (gpus.gpu_env). The storage
    URL and tracking URI, which may hold passwords, go in their environment (HPO_STORAGE,
    MLFLOW_TRACKING_URI), never on their command line, which every user of the machine can read.
    """
    n = plan.worker_count()
    assigned = round_robin(n, plan.gpus)
    on_gpu = sharing(assigned)
    memory = gpu_memory_mb() if any(k > 1 for k in on_gpu.values()) else {}
    out = []
    for i, gpu in enumerate(assigned):
        env = {**plan.env, "HPO_THREADS": str(_threads_per_worker(n)), "HPO_STORAGE": plan.storage_url}
        if plan.tracking_uri:
            env["MLFLOW_TRACKING_URI"] = plan.tracking_uri
        if gpu is not None:
            env.update(gpu_env(gpu, on_gpu[gpu], memory.get(gpu)))
        argv = [
            sys.executable,
            "-m",
            "hpo",
            "worker",
            "--study",
            plan.study,
            "--worker-index",
            str(i),
        ]
        out.append(
            WorkerProcess(f"worker {i}" + (f" (GPU {gpu})" if gpu is not None else ""), argv, env)
        )
    return out


def _threads_per_worker(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(workers, 1))


def container_workers(plan: Plan) -> list[WorkerProcess]:
    """One worker container per GPU (or plan.workers containers), see hpo/launch/docker.py; with
    workers_per_gpu K each container runs K worker processes on its GPU."""
    containers = docker_workers(
        plan.study,
        storage_url=plan.storage_url,
        tracking_uri=plan.tracking_uri,
        data_path=plan.data_path,
        gpus=plan.gpus,
        workers=plan.workers,
        image=plan.image,
        network=plan.network,
        cwd=plan.cwd,
        launch_id=str(os.getpid()),
        secrets_file=write_secrets_file(plan.storage_url, plan.tracking_uri, plan.env),
        threads=_threads_per_worker(plan.workers or len(plan.gpus)),
        workers_per_gpu=plan.workers_per_gpu,
    )
    return [WorkerProcess(c.name, c.run, plan.env, c.kill, c.key) for c in containers]


LAUNCHERS: dict[str, Callable[[Plan], list[WorkerProcess]]] = {
    "local": local_workers,
    "docker": container_workers,
}


def launch(
    spec: str | Path,
    *,
    workers: int | None = 1,
    storage_url: str | None = None,
    tracking_uri: str | None = None,
    launcher: str = "local",
    image: str = DEFAULT_IMAGE,
    network: str = DEFAULT_NETWORK,
    workers_per_gpu: int = 1,
    echo: Echo = print,
) -> LaunchResult:
    """Creates or resumes the study of `spec`, runs its workers until the budget is spent.

    A space with study.engine keras_tuner is searched in this process instead (launch_keras_tuner).

    Args:
        spec: the search-space file.
        workers: number of workers; 0 creates or updates the study and starts nothing; None
            means `workers_per_gpu` per visible GPU (1 on a machine without GPUs for `local`).
        storage_url: Optuna storage (default HPO_STORAGE or sqlite:///hpo.db).
        tracking_uri: MLflow tracking URI (default MLFLOW_TRACKING_URI or sqlite:///mlflow.db).
        launcher: a name in LAUNCHERS.
        image: worker image (docker).
        network: Docker network of the containers (docker).
        workers_per_gpu: workers sharing each GPU, each with a bounded share of its memory.
        echo: where progress lines go.

    Raises:
        HpoError: a bad space or data file (check_launch), an unreachable store, or workers that
            failed before the budget was spent.
    """
    if launcher not in LAUNCHERS:
        raise ConfigError(f"--launcher must be one of: {', '.join(LAUNCHERS)}; got {launcher!r}")
    if workers_per_gpu < 1:
        raise ConfigError(f"--workers-per-gpu must be at least 1, got {workers_per_gpu}")
    # A space no trial of which could run is refused before a study or run exists.
    space = check_launch(spec).space
    if space.study.engine == "keras_tuner":
        created, final, runs = launch_keras_tuner(
            space, workers=workers, tracking_uri=tracking_uri, launcher=launcher, echo=echo
        )
        return LaunchResult(space.study.name, created, final, runs=runs)
    name = space.study.name
    storage_url = storage_url or default_storage_url()
    # A dead tracking server is an error now, not in every trial.
    tracker = checked_tracker(tracking_uri)
    data_cfg = space.resolved_base().data
    # A broken file fails here, before any trial starts.
    dataset = open_dataset(data_cfg.path, max_in_memory_gb=data_cfg.max_in_memory_gb)
    # A launcher's own errors (no GPU, a file URL for containers) come before the study exists.
    plan, processes = None, []
    if workers != 0:
        gpus = visible_gpus()
        data_path = str(space.resolved_base().data.path)
        plan = Plan(
            name, storage_url, tracker.uri, data_path, workers, gpus, Path.cwd(), image, network,
            workers_per_gpu=workers_per_gpu,
        )
        processes = LAUNCHERS[launcher](plan)
        stop_timeout_s()  # a bad HPO_STOP_TIMEOUT_S too
    storage = make_storage(storage_url)
    study, created = create_or_join(storage, space)
    _same_data(study, dataset)
    if DATA_FINGERPRINT_KEY not in study.user_attrs:  # what workers and promote check the file against
        study.set_user_attr(DATA_FINGERPRINT_KEY, dataset.fingerprint()["sha256"])
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
    echo(
        f"study '{name}' {'created' if created else 'joined'} in {redact(storage_url)}; "
        f"MLflow: {redact(tracker.uri)}, experiment '{name}'"
    )
    if plan is None:
        final = progress(study, space)
    else:
        parent = study.user_attrs[MLFLOW_PARENT_RUN_KEY]
        try:
            final = supervise(study, space, processes, echo, tracker)
            _some_trial_finished(study, final)
        except BaseException as exc:  # a relaunch resumes the run
            status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            _end_parent(tracker, parent, status)
            raise
        finish_parent_run(study, tracker, space.study.metric)
    runs = runs_page(tracker.uri, tracker.experiment_id(name))
    return LaunchResult(name, created, final, space.study.metric, runs)


def _same_data(study: optuna.Study, dataset: Dataset | H5Source) -> None:
    """Raises DataContractError when the data file is not the one the study began on (each of
    its trials would fail on it)."""
    began = study.user_attrs.get(DATA_FINGERPRINT_KEY)
    now = dataset.fingerprint()["sha256"]
    if began is not None and began != now:
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


def _end_parent(tracker: Tracker, run_id: str, status: str) -> None:
    try:
        tracker.end_run(run_id, status)
    except Exception as exc:  # noqa: BLE001  the launch's own error is the one to report
        print(f"could not end the study's MLflow run {run_id} as {status}: {first_line(exc)}",
              file=sys.stderr)


def worker_group(
    study_name: str,
    storage_url: str,
    tracking_uri: str | None,
    *,
    workers_per_gpu: int,
    worker_index: int = 0,
    echo: Echo = print,
) -> Progress:
    """`hpo worker --workers-per-gpu K`: K worker processes on this node's GPU, as one worker.

    What a container, a pod or a Slurm task with one GPU runs to pack K trials onto it: each
    process gets the same bounded memory share as under `hpo launch --workers-per-gpu K`, and
    worker index `worker_index * K + i`. A signal to this process stops all K cleanly.

    Raises:
        HpoError: the study is unknown, or its workers failed before the budget was spent.
    """
    from hpo.study.create import load_study

    study, space = load_study(make_storage(storage_url), study_name)
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or stored_tracking_uri(study) or ""
    plan = Plan(study_name, storage_url, uri, str(space.resolved_base().data.path),
                workers_per_gpu, visible_gpus()[:1], Path.cwd())
    processes = []
    for i, w in enumerate(local_workers(plan)):
        argv = list(w.argv)
        argv[argv.index("--worker-index") + 1] = str(worker_index * workers_per_gpu + i)
        env = {**w.env, "HPO_WORKERS_PER_GPU": "1"}  # each child is one worker
        processes.append(WorkerProcess(w.label, argv, env, w.kill_argv))
    return supervise(study, space, processes, echo, Tracker(uri) if uri else None)


def supervise(
    study: optuna.Study,
    space: SearchSpace,
    processes: list[WorkerProcess],
    echo: Echo,
    tracker: Tracker | None = None,
) -> Progress:
    """Starts the workers, prints progress until they exit, stops them all on Ctrl-C.

    A local worker that exits leaves no RUNNING trial: the launcher fails and re-queues it,
    its MLflow run ended KILLED through `tracker` (default: the study's, see StaleTrialHandler).

    Raises:
        HpoError: workers exited with errors before the budget was spent.
        KeyboardInterrupt: after the workers were stopped.
    """
    stop_timeout = stop_timeout_s()
    for w in processes:
        echo(f"starting {w.label}")
    # Own sessions: a terminal's Ctrl-C reaches only the launcher, which sends each worker
    # exactly one SIGINT (a second one would stop a worker before it ends its trial cleanly).
    procs = [subprocess.Popen(w.argv, env=w.env, start_new_session=True) for w in processes]
    last = None
    exited: set[int] = set()
    t0 = time.monotonic()
    try:
        while any(p.poll() is None for p in procs):
            time.sleep(POLL_S)
            _fail_exited(study, space, processes, procs, exited, tracker, echo)
            last = _report(study, space, last, t0, echo)
        _fail_exited(study, space, processes, procs, exited, tracker, echo)
    except BaseException as exc:  # Ctrl-C, or an error of the launcher: workers never outlive it
        if isinstance(exc, KeyboardInterrupt):
            echo("interrupted: stopping workers (running trials end FAIL, MLflow runs KILLED)")
        # A second Ctrl-C must not cut the clean stop short (workers are killed after a timeout).
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            _stop(study, space, processes, procs, stop_timeout, tracker, echo)
        finally:
            signal.signal(signal.SIGINT, previous)
        raise
    final = _report(study, space, None, t0, echo)
    codes = [p.returncode for p in procs]
    if any(codes) and not final.spent:
        raise HpoError(
            f"workers exited with codes {codes} before the budget was spent; see their output"
        )
    return final


def _stop(
    study: optuna.Study,
    space: SearchSpace,
    processes: list[WorkerProcess],
    procs: list[subprocess.Popen],
    timeout: float,
    tracker: Tracker | None,
    echo: Echo,
) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    deadline = time.monotonic() + timeout
    killed = set()
    for w, p in zip(processes, procs, strict=True):
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            echo(f"{w.label} did not stop within {timeout:g} s: killing it")
            if w.kill_argv is not None:
                subprocess.run(w.kill_argv, capture_output=True, check=False)
            p.kill()
            p.wait()
            killed.add(w.key or f"{socket.gethostname()}:{p.pid}")
    if killed:
        fail_trials_of(study, space, killed, tracker=tracker)


def stop_timeout_s() -> float:
    """Seconds stopped workers get before they are killed: HPO_STOP_TIMEOUT_S, else 60.

    Raises:
        ConfigError: HPO_STOP_TIMEOUT_S is not a positive number.
    """
    raw = os.environ.get(STOP_TIMEOUT_ENV)
    if not raw:
        return STOP_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"{STOP_TIMEOUT_ENV} must be a positive number of seconds, got {raw!r}")
    return value


def fail_trials_of(
    study: optuna.Study,
    space: SearchSpace,
    workers: set[str],
    reason: str = KILLED_REASON,
    tracker: Tracker | None = None,
) -> list[int]:
    """Fails the RUNNING trials of workers known dead (WORKER_KEY in `workers`) and re-queues
    their parameters, as the heartbeat reaper does (heartbeat.fail_lost).

    Returns:
        The numbers of the trials failed.
    """
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    mine = [t for t in running if t.user_attrs.get(WORKER_KEY) in workers]
    return fail_lost(study, space, mine, reason, KillLostRuns(tracker))


def _fail_exited(
    study: optuna.Study,
    space: SearchSpace,
    processes: list[WorkerProcess],
    procs: list[subprocess.Popen],
    seen: set[int],
    tracker: Tracker | None,
    echo: Echo,
) -> None:
    """Fails and re-queues at once the trials of local workers that exited (a crash, kill -9):
    nothing else will end them before their heartbeat goes stale."""
    for i, (w, p) in enumerate(zip(processes, procs, strict=True)):
        # A container's `docker run` client is not the worker: its trials are keyed by container.
        if i in seen or p.poll() is None or w.kill_argv is not None:
            continue
        seen.add(i)
        reason = f"worker lost: its process exited with code {p.returncode}"
        failed = fail_trials_of(study, space, {f"{socket.gethostname()}:{p.pid}"}, reason, tracker)
        if failed:
            echo(f"{w.label} exited ({p.returncode}) during trial(s) {failed}: failed, re-queued")


def _report(
    study: optuna.Study, space: SearchSpace, last: Progress | None, t0: float, echo: Echo
) -> Progress:
    p = progress(study, space)
    if p != last:
        elapsed = time.monotonic() - t0
        left = ""
        if 0 < p.done < p.budget:
            left = f" | ~{elapsed / p.done * (p.budget - p.done):.0f}s left"
        best = f"{p.best:.4f}" if p.best is not None else "-"
        echo(
            f"[{elapsed:6.0f}s] done {p.done}/{p.budget} "
            f"(complete {p.complete}, pruned {p.pruned})"
            f" | failed {p.failed} | running {p.running} | best {space.study.metric} {best}{left}"
        )
    return p


