"""What starts workers: a Plan (the study, its stores, the GPUs), and the worker processes a
launcher makes of it.

    local   `hpo worker` processes on this machine, worker i on GPU i mod n (round robin)
    docker  one worker container per GPU (hpo/launch/docker.py)

LAUNCHERS maps `hpo launch --launcher NAME` to its function; supervisor.supervise runs what
they return.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

from hpo.config.space import SearchSpace
from hpo.launch.docker import check_readable
from hpo.launch.docker import ContainerUser
from hpo.launch.docker import DEFAULT_IMAGE
from hpo.launch.docker import DEFAULT_NETWORK
from hpo.launch.docker import docker_workers
from hpo.launch.docker import write_secrets_file
from hpo.launch.gpus import gpu_env
from hpo.launch.gpus import gpu_memory_mb
from hpo.launch.gpus import round_robin
from hpo.launch.gpus import sharing
from hpo.launch.mps import across_containers

_logger = logging.getLogger(__name__)


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
    calibration_path: str | None = None  # data.calibration_path, which workers read too
    checkpoint_dir: str | None = None  # study.checkpoint_dir, which workers write (None: off)

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


def worker_env(space: SearchSpace) -> dict[str, str]:
    """This process's environment for a study's workers, with KERAS_BACKEND=jax where the
    study trains on the device path (train.loop device, study.fuse) and none is set."""
    env = dict(os.environ)
    if "KERAS_BACKEND" not in env and space.resolved_base().train.loop == "device":
        env["KERAS_BACKEND"] = "jax"
    return env


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
    workers_per_gpu K each container runs K worker processes on its GPU.

    The containers run as this process's user; a data file they cannot read even so is refused
    here, before any study or trial exists (docker.check_readable).
    """
    user = ContainerUser.current()
    containers = docker_workers(
        plan.study,
        storage_url=plan.storage_url,
        tracking_uri=plan.tracking_uri,
        data_path=plan.data_path,
        calibration_path=plan.calibration_path,
        checkpoint_dir=plan.checkpoint_dir,
        gpus=plan.gpus,
        workers=plan.workers,
        image=plan.image,
        network=plan.network,
        cwd=plan.cwd,
        launch_id=str(os.getpid()),
        secrets_file=write_secrets_file(plan.storage_url, plan.tracking_uri, plan.env),
        threads=_threads_per_worker(plan.workers or len(plan.gpus)),
        workers_per_gpu=plan.workers_per_gpu,
        user=user,
    )
    files = [plan.data_path, *([plan.calibration_path] if plan.calibration_path else [])]
    check_readable(files, cwd=plan.cwd, image=plan.image, user=user)
    if notice := across_containers([c.gpu for c in containers]):
        _logger.warning(notice)
    return [WorkerProcess(c.name, c.run, plan.env, c.kill, c.key) for c in containers]


LAUNCHERS: dict[str, Callable[[Plan], list[WorkerProcess]]] = {
    "local": local_workers,
    "docker": container_workers,
}
