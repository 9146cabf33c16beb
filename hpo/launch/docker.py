"""`hpo launch --launcher docker`: one worker container per GPU, as plain `docker run` commands.

    hpo launch search_spaces/dropout.yaml --launcher docker \
        --storage postgresql+psycopg://USER:PASSWORD@127.0.0.1:5432/optuna --tracking-uri http://127.0.0.1:5000

Each container runs the worker image's `hpo worker --worker-index I` (docker/worker.Dockerfile)
with the variables docker-compose.yml gives its `worker` service. Secrets (HPO_STORAGE, which
holds the database password, MLFLOW_TRACKING_URI, which may hold one, and the MLflow
credentials) are written to a file that is mounted read-only at SECRETS_MOUNT and named by
HPO_SECRETS_FILE (hpo/envfile.py): a value given with `-e NAME=VALUE` would show on the command
line in `ps`, and in `docker inspect` (so would `-e NAME`). The data file's directory
is mounted read-only where the worker, in /app, looks for it.
"""

from __future__ import annotations

import atexit
import posixpath
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from hpo.envfile import SECRETS_FILE_ENV
from hpo.envfile import write_env_file
from hpo.errors import ConfigError
from hpo.launch.gpus import round_robin

DEFAULT_IMAGE = "xray-hpo-worker:0.1.0"  # the `worker` image of docker-compose.yml
DEFAULT_NETWORK = "host"  # so that 127.0.0.1 in the URLs means this machine inside containers too
CONTAINER_WORKDIR = "/app"  # WORKDIR of docker/worker.Dockerfile
SECRET_ENV = (
    "HPO_STORAGE",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)
SECRETS_MOUNT = "/run/secrets/hpo.env"
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


@dataclass(frozen=True)
class DockerWorker:
    """One worker container: the command that runs it (attached) and the one that kills it."""

    name: str
    run: list[str]
    kill: list[str]

    @property
    def key(self) -> str:
        """The WORKER_KEY (host:pid) of its trials: the container is its host, `hpo` its pid 1."""
        return f"{self.name}:1"


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
    secrets_file: Path | None = None,
    threads: int | None = None,
    workers_per_gpu: int = 1,
) -> list[DockerWorker]:
    """The containers of a docker launch, worker i on gpus[i % len(gpus)].

    Args:
        study: study name (HPO_STUDY).
        storage_url: the Optuna storage the containers use; they read it from `secrets_file`.
        tracking_uri: the MLflow server the containers log to; read from `secrets_file` too.
        data_path: the space's data.path as written (relative paths are relative to `cwd`).
        gpus: GPUs to hand out (CUDA_VISIBLE_DEVICES entries); none runs CPU containers.
        workers: number of containers; default one per GPU.
        image: the worker image.
        network: the Docker network of the containers.
        cwd: the launch directory, which plays the part of /app.
        launch_id: makes container names unique to this launch.
        secrets_file: the file (see write_secrets_file) mounted at SECRETS_MOUNT.
        threads: HPO_THREADS of each container (CPU threads of TensorFlow); None: all cores.
        workers_per_gpu: worker processes in each container, sharing its GPU (HPO_WORKERS_PER_GPU).

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
        # Its own host name: on the host network it would be this machine's, and every
        # container's trials would carry the same worker key.
        cmd = ["docker", "run", "--rm", "--name", name, "--hostname", name, "--network", network]
        if gpu is not None:
            cmd += ["--gpus", f"device={gpu}"]
        cmd += ["-e", f"HPO_STUDY={study}"]
        if threads is not None:
            cmd += ["-e", f"HPO_THREADS={threads}"]
        if workers_per_gpu > 1:
            cmd += ["-e", f"HPO_WORKERS_PER_GPU={workers_per_gpu}"]
        if secrets_file is not None:
            cmd += ["-e", f"{SECRETS_FILE_ENV}={SECRETS_MOUNT}"]
            cmd += ["-v", f"{secrets_file}:{SECRETS_MOUNT}:ro"]
        cmd += ["-v", f"{host_dir}:{container_dir}:ro", image, "worker", "--worker-index", str(i)]
        out.append(DockerWorker(name=name, run=cmd, kill=["docker", "kill", name]))
    return out


def write_secrets_file(storage_url: str, tracking_uri: str, env: Mapping[str, str]) -> Path:
    """HPO_STORAGE, MLFLOW_TRACKING_URI and the MLflow credentials set in `env`, in a new file
    for SECRETS_MOUNT.

    The file lies in a fresh directory that only this user can enter, removed when this
    process exits.
    """
    folder = Path(tempfile.mkdtemp(prefix="hpo-secrets-"))  # mode 0700
    atexit.register(shutil.rmtree, folder, True)
    values = {"HPO_STORAGE": storage_url, "MLFLOW_TRACKING_URI": tracking_uri}
    values |= {v: env[v] for v in SECRET_ENV if v not in values and env.get(v)}
    return write_env_file(folder / "worker.env", values)


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
