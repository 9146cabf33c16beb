"""`hpo launch`: validate a space, create or join its study, start local workers, show progress.

    hpo launch search_spaces/quickstart.yaml --workers 2
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna

from hpo.data.contract import Dataset
from hpo.data.lazy import H5Source
from hpo.data.lazy import open_dataset
from hpo.errors import HpoError
from hpo.objective.space import SearchSpace
from hpo.objective.space import load_space
from hpo.study.budget import Progress
from hpo.study.budget import progress
from hpo.study.create import TRACKING_URI_KEY
from hpo.study.create import create_or_join
from hpo.study.storage import default_storage_url
from hpo.study.storage import make_storage
from hpo.study.storage import redact
from hpo.study.worker import finish_parent_run
from hpo.tracking.runs import MLFLOW_EXPERIMENT_KEY
from hpo.tracking.runs import MLFLOW_PARENT_RUN_KEY
from hpo.tracking.runs import Tracker

POLL_S = 2.0


@dataclass(frozen=True)
class LaunchResult:
    study_name: str
    created: bool
    progress: Progress | None


def describe(space: SearchSpace) -> str:
    """The validated space as YAML plus its grid size or trial budget (for --dry-run)."""
    lines = [space.to_yaml().rstrip(), "---"]
    if space.study.sampler.type == "grid":
        lines.append(f"grid: {space.grid_size()} points; budget: {space.budget()} trials")
    else:
        lines.append(f"sampler: {space.study.sampler.type}; budget: {space.budget()} trials")
    return "\n".join(lines)


def launch(
    spec: str | Path,
    *,
    workers: int = 1,
    storage_url: str | None = None,
    tracking_uri: str | None = None,
    echo: callable = print,  # type: ignore[valid-type]
) -> LaunchResult:
    """Creates or resumes the study of `spec`, runs `workers` local workers until the budget is spent.

    With workers=0 the study is created or updated and nothing is started (external workers).
    """
    space = load_space(spec)
    storage_url = storage_url or default_storage_url()
    tracker = Tracker(tracking_uri)
    tracker.check()  # a dead tracking server is an error now, not in every trial
    data_cfg = space.resolved_base().data
    # A broken file fails here, before any trial starts.
    dataset = open_dataset(data_cfg.path, max_in_memory_gb=data_cfg.max_in_memory_gb)
    storage = make_storage(storage_url)
    study, created = create_or_join(storage, space)
    name = space.study.name
    if MLFLOW_PARENT_RUN_KEY not in study.user_attrs:
        experiment_id = tracker.experiment_id(name)
        parent = tracker.start_study_run(experiment_id, name, space.to_yaml(), _data_info(dataset))
        study.set_user_attr(MLFLOW_EXPERIMENT_KEY, experiment_id)
        study.set_user_attr(MLFLOW_PARENT_RUN_KEY, parent)
        study.set_user_attr(TRACKING_URI_KEY, tracker.uri)
    elif tracker.run_status(study.user_attrs[MLFLOW_PARENT_RUN_KEY]) != "RUNNING":
        tracker.client.update_run(study.user_attrs[MLFLOW_PARENT_RUN_KEY], status="RUNNING")
    echo(f"study '{name}' {'created' if created else 'joined'} in {redact(storage_url)}; "
         f"MLflow: {tracker.uri}, experiment '{name}'")
    if workers == 0:
        return LaunchResult(name, created, progress(study, space))

    final = _run_local_workers(study, space, storage_url, tracker.uri, workers, echo)
    finish_parent_run(study, tracker)
    return LaunchResult(name, created, final)


def _run_local_workers(
    study: optuna.Study, space: SearchSpace, storage_url: str, tracking_uri: str, n: int, echo: callable  # type: ignore[valid-type]
) -> Progress:
    env = {**os.environ, "HPO_THREADS": str(max(1, (os.cpu_count() or 1) // n))}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "hpo", "worker", "--study", space.study.name,
             "--storage", storage_url, "--tracking-uri", tracking_uri, "--worker-index", str(i)],
            env=env,
        )
        for i in range(n)
    ]
    last = None
    t0 = time.monotonic()
    try:
        while any(p.poll() is None for p in procs):
            time.sleep(POLL_S)
            last = _report(study, space, last, t0, echo)
    except KeyboardInterrupt:
        echo("interrupted: stopping workers (their running trials end as FAIL, runs as KILLED)")
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        raise
    final = _report(study, space, None, t0, echo)
    codes = [p.returncode for p in procs]
    if any(codes) and not final.spent:
        raise HpoError(f"workers exited with codes {codes} before the budget was spent; see their output")
    return final


def _report(study: optuna.Study, space: SearchSpace, last: Progress | None, t0: float, echo: callable) -> Progress:  # type: ignore[valid-type]
    p = progress(study, space)
    if p != last:
        elapsed = time.monotonic() - t0
        left = ""
        if 0 < p.done < p.budget:
            left = f" | ~{elapsed / p.done * (p.budget - p.done):.0f}s left"
        best = f"{p.best:.4f}" if p.best is not None else "-"
        echo(f"[{elapsed:6.0f}s] done {p.done}/{p.budget} (complete {p.complete}, pruned {p.pruned})"
             f" | failed {p.failed} | running {p.running} | best val_residual_std {best}{left}")
    return p


FLOORS_MAX_CLUSTERS = 20_000  # enough for floors to 3 digits; a streamed file is not read whole


def _data_info(dataset: Dataset | H5Source) -> dict:
    from hpo.data.baseline import floors

    info: dict = {"fingerprint": dataset.fingerprint(), "path": str(dataset.path)}
    if dataset.log_mass is not None:
        sample = dataset if isinstance(dataset, Dataset) else dataset.subset(np.arange(min(len(dataset), FLOORS_MAX_CLUSTERS)))
        info["floors"] = {k: v for k, v in floors(sample).items() if v is not None}
    return info
