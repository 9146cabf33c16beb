"""`hpo launch --launcher docker`: one worker container per GPU, as plain `docker run` commands.

    hpo launch search_spaces/dropout.yaml --launcher docker \
        --storage postgresql+psycopg://USER:PASSWORD@127.0.0.1:5432/optuna --tracking-uri http://127.0.0.1:5000

Each container runs the worker image's `hpo worker --worker-index I` (docker/worker.Dockerfile)
with the variables docker-compose.yml gives its `worker` service. Secrets (HPO_STORAGE, which
holds the database password, and the MLflow credentials) are passed as `-e NAME` without a
value, so that Docker copies them from the launcher's environment and no command line shows
them. The data file's directory is mounted read-only where the worker, in /app, looks for it.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from hpo.errors import ConfigError
from hpo.study.gpus import round_robin

DEFAULT_IMAGE = "xray-hpo-worker:0.1.0"  # the `worker` image of docker-compose.yml
DEFAULT_NETWORK = "host"  # so that 127.0.0.1 in the URLs means this machine inside containers too
CONTAINER_WORKDIR = "/app"  # WORKDIR of docker/worker.Dockerfile
SECRET_ENV = (
    "HPO_STORAGE",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


@dataclass(frozen=True)
class DockerWorker:
    """One worker container: the command that runs it (attached) and the one that kills it."""

    name: str
    run: list[str]
    kill: list[str]


def docker_workers(
    study: str,
    *,
    storage_url: str,
    tracking_uri: str,
    data_path: str,
    gpus: list[str],
    workers: int | None = None,
    image: str = DEFAULT_IMAGE,
    network: str = DEFAULT_NETWORK,
    cwd: Path,
    launch_id: str,
    env_present: frozenset[str] = frozenset(),
) -> list[DockerWorker]:
    """The containers of a docker launch, worker i on gpus[i % len(gpus)].

    Args:
        study: study name (HPO_STUDY).
        storage_url: the Optuna storage the containers use; sent through the environment.
        tracking_uri: the MLflow server the containers log to.
        data_path: the space's data.path as written (relative paths are relative to `cwd`).
        gpus: GPUs to hand out (CUDA_VISIBLE_DEVICES entries); none runs CPU containers.
        workers: number of containers; default one per GPU.
        image: the worker image.
        network: the Docker network of the containers.
        cwd: the launch directory, which plays the part of /app.
        launch_id: makes container names unique to this launch.
        env_present: names of secret variables set in the launcher's environment, passed on.

    Raises:
        ConfigError: no GPU and no --workers, or a URL that containers cannot reach.
    """
    if workers is None:
        if not gpus:
            raise ConfigError(
                "--launcher docker starts one container per GPU but found no GPU "
                "(nvidia-smi, CUDA_VISIBLE_DEVICES); give --workers N to run N CPU containers"
            )
        workers = len(gpus)
    _check_reachable("--storage", storage_url, network, ("postgresql", "grpc", "mysql"))
    _check_reachable(
        "--tracking-uri", tracking_uri, network, ("http", "https", "postgresql", "mysql")
    )
    host_dir, container_dir = data_mount(data_path, cwd)
    out = []
    for i, gpu in enumerate(round_robin(workers, gpus)):
        name = f"hpo-{study}-{launch_id}-{i}"
        cmd = ["docker", "run", "--rm", "--name", name, "--network", network]
        if gpu is not None:
            cmd += ["--gpus", f"device={gpu}"]
        cmd += ["-e", f"HPO_STUDY={study}", "-e", f"MLFLOW_TRACKING_URI={tracking_uri}"]
        for var in SECRET_ENV:
            if var == "HPO_STORAGE" or var in env_present:
                cmd += ["-e", var]  # value copied from the launcher's environment, never on argv
        cmd += ["-v", f"{host_dir}:{container_dir}:ro", image, "worker", "--worker-index", str(i)]
        out.append(DockerWorker(name=name, run=cmd, kill=["docker", "kill", name]))
    return out


def data_mount(data_path: str, cwd: Path) -> tuple[str, str]:
    """(host directory, container directory) of the data file: where /app/<data_path> resolves."""
    path = Path(data_path)
    if path.is_absolute():
        return str(path.parent), path.parent.as_posix()
    host = (cwd / path).resolve().parent
    container = posixpath.normpath(posixpath.join(CONTAINER_WORKDIR, path.parent.as_posix()))
    return str(host), container


def _check_reachable(flag: str, url: str, network: str, schemes: tuple[str, ...]) -> None:
    parts = urlsplit(url)
    scheme = parts.scheme.split("+")[0]
    if scheme not in schemes:
        raise ConfigError(
            f"{flag} {url.split('://')[0]}://... is a file on this machine that worker "
            "containers cannot share; --launcher docker needs a server URL "
            f"({', '.join(s + '://' for s in schemes)})"
        )
    if network != "host" and (parts.hostname or "") in _LOOPBACK:
        raise ConfigError(
            f"{flag} points at {parts.hostname}, which inside containers on network "
            f"'{network}' is the "
            "container itself; use --docker-network host or a host name the containers resolve"
        )
