"""`hpo worker --workers-per-gpu K`: K worker processes on this node's GPU, supervised as one.

    hpo worker --study dropout --storage postgresql+psycopg://... --workers-per-gpu 4
"""

from __future__ import annotations

import os
from pathlib import Path

from hpo.launch.gpus import visible_gpus
from hpo.launch.supervisor import Echo
from hpo.launch.supervisor import supervise
from hpo.launch.worker_processes import local_workers
from hpo.launch.worker_processes import Plan
from hpo.launch.worker_processes import worker_env
from hpo.launch.worker_processes import WorkerProcess
from hpo.store.storage import make_storage
from hpo.study.budget import Progress
from hpo.study.create import load_study
from hpo.study.create import stored_tracking_uri
from hpo.tracking.runs import Tracker


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
    study, space = load_study(make_storage(storage_url), study_name)
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or stored_tracking_uri(study) or ""
    plan = Plan(study_name, storage_url, uri, str(space.resolved_base().data.path),
                workers_per_gpu, visible_gpus()[:1], Path.cwd(), env=worker_env(space))
    processes = []
    for i, w in enumerate(local_workers(plan)):
        argv = list(w.argv)
        argv[argv.index("--worker-index") + 1] = str(worker_index * workers_per_gpu + i)
        env = {**w.env, "HPO_WORKERS_PER_GPU": "1"}  # each child is one worker
        processes.append(WorkerProcess(w.label, argv, env, w.kill_argv))
    return supervise(study, space, processes, echo, Tracker(uri) if uri else None)
