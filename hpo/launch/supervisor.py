"""What supervises workers: starts their processes, prints progress until they exit, stops them.

Ctrl-C stops them cleanly: each worker gets one SIGINT, fails its running trial with reason
"interrupted", ends its MLflow run as KILLED and re-queues its parameters; a worker still alive
after HPO_STOP_TIMEOUT_S (default 60) is killed and its trial failed and re-queued here. A local
worker that dies (a crash, kill -9) has its trial failed and re-queued at once, without waiting
for its heartbeat to go stale.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable

import optuna
from optuna.trial import TrialState

from hpo.config.space import SearchSpace
from hpo.errors import ConfigError
from hpo.errors import HpoError
from hpo.keys import WORKER_KEY
from hpo.launch.mps import mps_for
from hpo.launch.worker_processes import WorkerProcess
from hpo.store.heartbeat import fail_lost
from hpo.study.budget import Progress
from hpo.study.budget import progress
from hpo.tracking.reconcile import KillLostRuns
from hpo.tracking.runs import Tracker

POLL_S = 2.0
STOP_TIMEOUT_S = 60.0  # how long stopped workers get to end their trial and MLflow run
STOP_TIMEOUT_ENV = "HPO_STOP_TIMEOUT_S"  # overrides it: keep it below a platform's kill grace
KILLED_REASON = "interrupted: worker killed by the launcher"

Echo = Callable[[str], None]


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
    with mps_for([w.env.get("CUDA_VISIBLE_DEVICES") for w in processes], echo) as mps:
        return _supervise(study, space, processes, echo, tracker, mps)


def _supervise(
    study: optuna.Study,
    space: SearchSpace,
    processes: list[WorkerProcess],
    echo: Echo,
    tracker: Tracker | None,
    mps: dict[str, str],
) -> Progress:
    """supervise, with `mps` (mps.mps_for) in every worker's environment."""
    stop_timeout = stop_timeout_s()
    for w in processes:
        echo(f"starting {w.label}")
    # Own sessions: a terminal's Ctrl-C reaches only the launcher, which sends each worker
    # exactly one SIGINT (a second one would stop a worker before it ends its trial cleanly).
    procs = [subprocess.Popen(w.argv, env={**w.env, **mps}, start_new_session=True)
             for w in processes]
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
