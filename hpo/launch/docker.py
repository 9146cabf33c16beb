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

Containers run as the user who launches them (`--user UID:GID`, with that user's other groups),
not as the image's own user: a data file you can read, in a folder only you can enter (every
`mktemp -d`), your workers can read. HOME is /tmp inside (an id the image does not know has no
home there; Keras and matplotlib keep their caches under it) and USER is your name (MLflow records
it as each run's user). Before any trial starts, `check_readable` runs the image once with the
same user and mounts and refuses a data file it still cannot read (a path outside the mounts,
user namespaces, root squash) with one line naming the file and the user.
"""

from __future__ import annotations

import atexit
import getpass
import os
import posixpath
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from hpo.envfile import SECRETS_FILE_ENV
from hpo.envfile import write_env_file
from hpo.errors import ConfigError
from hpo.errors import DataContractError
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
CONTAINER_HOME = "/tmp"  # HOME inside: writable whatever the user's id (Keras, matplotlib caches)
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


@dataclass(frozen=True)
class ContainerUser:
    """Who worker processes run as inside their containers: by default the launching user."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()  # supplementary groups, given with --group-add
    name: str = "hpo"  # USER inside, which MLflow records as the user of each run

    @classmethod
    def current(cls) -> ContainerUser:
        """The user and groups of this process."""
        uid, gid = os.getuid(), os.getgid()
        try:
            name = getpass.getuser()
        except (KeyError, OSError):  # an id without a passwd entry (itself in a container)
            name = f"uid{uid}"
        return cls(uid, gid, tuple(sorted(set(os.getgroups()) - {gid})), name)

    def run_args(self) -> list[str]:
        """The `docker run` options that make a container's processes this user."""
        args = ["--user", f"{self.uid}:{self.gid}"]
        for group in self.groups:
            args += ["--group-add", str(group)]
        return args + ["-e", f"HOME={CONTAINER_HOME}", "-e", f"USER={self.name}"]

    def __str__(self) -> str:
        return f"user {self.name} (uid {self.uid}, gid {self.gid})"


@dataclass(frozen=True)
class DockerWorker:
    """One worker container: the command that runs it (attached) and the one that kills it."""

    name: str
    run: list[str]
    kill: list[str]
    gpu: str | None = None  # the GPU it is given (--gpus device=...), None for a CPU container

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
    calibration_path: str | None = None,
    checkpoint_dir: str | None = None,
    workers: int | None = None,
    image: str = DEFAULT_IMAGE,
    network: str = DEFAULT_NETWORK,
    cwd: Path,
    launch_id: str,
    secrets_file: Path | None = None,
    threads: int | None = None,
    workers_per_gpu: int = 1,
    user: ContainerUser | None = None,
) -> list[DockerWorker]:
    """The containers of a docker launch, worker i on gpus[i % len(gpus)].

    Args:
        study: study name (HPO_STUDY).
        storage_url: the Optuna storage the containers use; they read it from `secrets_file`.
        tracking_uri: the MLflow server the containers log to; read from `secrets_file` too.
        data_path: the space's data.path as written (relative paths are relative to `cwd`).
        gpus: GPUs to hand out (CUDA_VISIBLE_DEVICES entries); none runs CPU containers.
        calibration_path: the space's data.calibration_path, mounted as the data file is.
        checkpoint_dir: the space's study.checkpoint_dir, mounted read-write where the workers
            find it (None: checkpoints off).
        workers: number of containers; default one per GPU.
        image: the worker image.
        network: the Docker network of the containers.
        cwd: the launch directory, which plays the part of /app.
        launch_id: makes container names unique to this launch.
        secrets_file: the file (see write_secrets_file) mounted at SECRETS_MOUNT.
        threads: HPO_THREADS of each container (CPU threads of TensorFlow); None: all cores.
        workers_per_gpu: worker processes in each container, sharing its GPU (HPO_WORKERS_PER_GPU).
        user: who the containers run as; default the launching user (ContainerUser.current).

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
    mounts = data_mount_args([data_path, *([calibration_path] if calibration_path else [])], cwd)
    if checkpoint_dir is not None:
        host = Path(checkpoint_dir) if Path(checkpoint_dir).is_absolute() else cwd / checkpoint_dir
        host.mkdir(parents=True, exist_ok=True)  # else the engine makes it, owned by root
        mounts += ["-v", f"{host.resolve()}:{container_path(checkpoint_dir)}"]
    user = user or ContainerUser.current()
    out = []
    for i, gpu in enumerate(round_robin(workers, gpus)):
        name = f"hpo-{study}-{launch_id}-{i}"
        # Its own host name: on the host network it would be this machine's, and every
        # container's trials would carry the same worker key.
        cmd = ["docker", "run", "--rm", "--name", name, "--hostname", name, "--network", network]
        cmd += user.run_args()
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
        cmd += [*mounts, image, "worker", "--worker-index", str(i)]
        out.append(DockerWorker(name=name, run=cmd, kill=["docker", "kill", name], gpu=gpu))
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


# Run in the image by check_readable: opens each file as a worker would, prints the first that
# fails, its errno name and the reason, tab-separated, and exits 1.
_READ_CHECK = """\
import errno, sys
for path in sys.argv[1:]:
    try:
        open(path, "rb").close()
    except OSError as exc:
        code = errno.errorcode.get(exc.errno or 0, "")
        print(path, code, exc.strerror or type(exc).__name__, sep="\\t")
        sys.exit(1)
"""


def check_readable(
    files: list[str], *, cwd: Path, image: str, user: ContainerUser | None = None
) -> None:
    """Refuses, before any trial starts, a data file that worker containers cannot read.

    Runs `image` once (no network, no GPU) as `user`, with the mounts docker_workers gives, and
    opens every file as a worker would.

    Args:
        files: the data files as the space gives them (relative to `cwd`, as data.path).
        cwd: the launch directory, which plays the part of /app.
        image: the worker image.
        user: who the containers run as; default the launching user.

    Raises:
        DataContractError: a file the containers cannot read, naming it, the user and why.
        ConfigError: the image cannot be run (not found, no docker command).
    """
    user = user or ContainerUser.current()
    inside = {container_path(f): f for f in files}
    cmd = ["docker", "run", "--rm", "--network", "none", *user.run_args()]
    cmd += [*data_mount_args(files, cwd), "--entrypoint", "python3", image, "-c", _READ_CHECK]
    cmd += list(inside)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise ConfigError(
            f"--launcher docker runs the docker command, which cannot be run here ({exc.strerror})"
        ) from None
    if proc.returncode == 0:
        return
    found = proc.stdout.strip().split("\t") if proc.returncode == 1 else []
    if len(found) == 3 and found[0] in inside:
        there, code, reason = found
        path = inside[there]
        raise DataContractError(
            f"worker containers cannot read the data file {path} ({there} in image {image}, "
            f"as {user}): {reason}; {_unreadable_fix(path, cwd, code)}"
        )
    raise ConfigError(
        f"worker image {image} cannot be run as {user} (docker run exited {proc.returncode}: "
        f"{_docker_said(proc.stderr + proc.stdout)}); build it (docker/worker.Dockerfile, "
        "docker/build-local.sh) or name another with --image"
    )


def _docker_said(output: str) -> str:
    """The line of docker's output that says what went wrong (not "See 'docker run --help'")."""
    lines = [s.strip() for s in output.splitlines() if s.strip() and not s.startswith("See '")]
    errors = [s for s in lines if "rror" in s]
    return (errors or lines or ["no output"])[-1]


def _unreadable_fix(path: str, cwd: Path, code: str) -> str:
    """What to do about a file the containers could not open with errno `code` (its name)."""
    host = cwd / path
    if host.is_symlink():
        return (
            f"it is a symbolic link to {os.readlink(host)}, which containers do not see: set "
            "data.path to the file itself"
        )
    if code in ("EACCES", "EPERM"):
        return (
            "make it and its folder readable by that user (the engine may map ids: user "
            "namespaces, a root-squashing file system)"
        )
    host_dir, container_dir = data_mount(path, cwd)
    return f"containers see only {host_dir}, at {container_dir}"


def data_mount_args(files: list[str], cwd: Path) -> list[str]:
    """The `-v` options that mount, read-only, the folder of each file (see data_mount)."""
    folders: dict[str, str] = {}  # container folder: host folder (one mount per container folder)
    for f in files:
        host_dir, container_dir = data_mount(f, cwd)
        folders.setdefault(container_dir, host_dir)
    return [arg for inside, host in folders.items() for arg in ("-v", f"{host}:{inside}:ro")]


def container_path(data_path: str) -> str:
    """Where a worker in /app finds `data_path` inside its container."""
    return posixpath.normpath(posixpath.join(CONTAINER_WORKDIR, Path(data_path).as_posix()))


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
