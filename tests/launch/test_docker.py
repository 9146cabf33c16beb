"""`hpo launch --launcher docker`: the exact `docker run` commands (no Docker engine needed)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import yaml

from hpo.envfile import load_secrets_file
from hpo.envfile import parse_env_file
from hpo.envfile import write_env_file
from hpo.errors import ConfigError
from hpo.launch.docker import CONTAINER_WORKDIR
from hpo.launch.docker import data_mount
from hpo.launch.docker import DEFAULT_IMAGE
from hpo.launch.docker import docker_workers
from hpo.launch.docker import SECRETS_MOUNT
from hpo.launch.worker_processes import LAUNCHERS
from hpo.launch.worker_processes import Plan

ROOT = Path(__file__).resolve().parents[2]
PG = "postgresql+psycopg://hpo:s3cret@127.0.0.1:5432/optuna"
ML = "http://127.0.0.1:5000"


def _workers(**kw):
    args = dict(
        storage_url=PG,
        tracking_uri=ML,
        data_path="data/mock.h5",
        gpus=["0", "1"],
        cwd=Path("/home/u/proj"),
        launch_id="42",
    )
    return docker_workers("dropout", **{**args, **kw})


def test_one_container_per_gpu_with_the_worker_command():
    # Rule: one `docker run` per GPU, each pinned to its GPU, running the image's `hpo worker` with
    # its index.
    first, second = _workers(secrets_file=Path("/tmp/hpo-secrets-x/worker.env"), threads=3)
    assert first.run == [
        "docker",
        "run",
        "--rm",
        "--name",
        "hpo-dropout-42-0",
        "--hostname",
        "hpo-dropout-42-0",
        "--network",
        "host",
        "--gpus",
        "device=0",
        "-e",
        "HPO_STUDY=dropout",
        "-e",
        "HPO_THREADS=3",
        "-e",
        f"HPO_SECRETS_FILE={SECRETS_MOUNT}",
        "-v",
        f"/tmp/hpo-secrets-x/worker.env:{SECRETS_MOUNT}:ro",
        "-v",
        "/home/u/proj/data:/app/data:ro",
        DEFAULT_IMAGE,
        "worker",
        "--worker-index",
        "0",
    ]
    assert second.run[second.run.index("--gpus") + 1] == "device=1"
    assert second.run[-1] == "1" and second.name == "hpo-dropout-42-1"
    assert first.kill == ["docker", "kill", "hpo-dropout-42-0"]
    assert first.key == "hpo-dropout-42-0:1"  # the WORKER_KEY of its trials


def test_secrets_reach_the_container_in_a_mounted_file_only():
    # Rule: the database password, the tracking URI (which may hold a password) and the MLflow
    # credentials travel in a file that only its owner's directory leads to, mounted read-only;
    # never on argv nor in the container's environment (`-e NAME=VALUE` and `-e NAME` both show
    # the value in `docker inspect`).
    ml = "https://ann:tr4ck@mlflow.example.org"
    env = {"PATH": "/bin", "MLFLOW_TRACKING_USERNAME": "ann", "MLFLOW_TRACKING_PASSWORD": "pw9"}
    plan = Plan("dropout", PG, ml, "data/mock.h5", None, ["0"], Path("/p"), env=env)
    (proc,) = LAUNCHERS["docker"](plan)
    argv = " ".join(proc.argv)
    for secret in ("s3cret", "tr4ck", "pw9", "-e HPO_STORAGE", "-e MLFLOW_TRACKING"):
        assert secret not in argv
    mount = proc.argv[proc.argv.index(f"HPO_SECRETS_FILE={SECRETS_MOUNT}") + 2]
    host_file = Path(mount.split(":")[0])
    assert mount == f"{host_file}:{SECRETS_MOUNT}:ro"
    assert stat.S_IMODE(host_file.parent.stat().st_mode) == 0o700
    assert parse_env_file(host_file) == {
        "HPO_STORAGE": PG,
        "MLFLOW_TRACKING_URI": ml,
        "MLFLOW_TRACKING_USERNAME": "ann",
        "MLFLOW_TRACKING_PASSWORD": "pw9",
    }
    assert proc.kill_argv == ["docker", "kill", proc.label] and proc.key == f"{proc.label}:1"


def test_the_worker_reads_its_secrets_file_without_overriding_the_environment(tmp_path):
    # Rule: HPO_SECRETS_FILE fills the variables the environment lacks; quotes and `export` as a
    # shell env file writes them; a broken line is one error naming the file and line, not its
    # text (which may hold a password).
    secrets = write_env_file(tmp_path / "w.env", {"HPO_STORAGE": PG, "X": "'q'"})
    with secrets.open("a") as f:
        f.write("# comment\n\nexport MLFLOW_TRACKING_PASSWORD='pw 9'\n")
    environ = {"HPO_SECRETS_FILE": str(secrets), "X": "kept"}
    assert load_secrets_file(environ) == ["HPO_STORAGE", "MLFLOW_TRACKING_PASSWORD"]
    assert environ["HPO_STORAGE"] == PG and environ["X"] == "kept"
    assert environ["MLFLOW_TRACKING_PASSWORD"] == "pw 9"
    assert parse_env_file(secrets)["X"] == "'q'"
    assert load_secrets_file({}) == []
    with secrets.open("a") as f:
        f.write("postgresql://u:s3cret@h/db\n")
    with pytest.raises(ConfigError, match=r"w\.env, line 6: expected NAME=VALUE$"):
        load_secrets_file(environ)
    with pytest.raises(ConfigError, match="HPO_SECRETS_FILE .*nope.env: cannot read it"):
        load_secrets_file({"HPO_SECRETS_FILE": str(tmp_path / "nope.env")})


def test_more_workers_than_gpus_round_robin_and_cpu_containers():
    # Rule: --workers N gives N containers over the GPUs round robin; with no GPU, N CPU
    # containers.
    assert [w.run[w.run.index("--gpus") + 1] for w in _workers(workers=3)] == [
        "device=0",
        "device=1",
        "device=0",
    ]
    cpu = _workers(gpus=[], workers=2)
    assert len(cpu) == 2 and all("--gpus" not in w.run for w in cpu)
    with pytest.raises(ConfigError, match="found no GPU.*--workers N"):
        _workers(gpus=[])


def test_file_stores_and_loopback_on_a_bridge_network_are_refused():
    # Rule: containers cannot share a SQLite file, nor reach 127.0.0.1 of the host off the host
    # network.
    with pytest.raises(ConfigError, match="--storage sqlite://... is a file"):
        _workers(storage_url="sqlite:///hpo.db")
    with pytest.raises(ConfigError, match="--tracking-uri sqlite://... is a file"):
        _workers(tracking_uri="sqlite:///mlflow.db")
    with pytest.raises(ConfigError, match="127.0.0.1.*network 'xray-hpo_default'"):
        _workers(network="xray-hpo_default")
    ok = _workers(
        network="xray-hpo_default",
        storage_url="postgresql+psycopg://hpo:pw@postgres:5432/optuna",
        tracking_uri="http://mlflow:5000",
    )
    assert ok[0].run[ok[0].run.index("--network") + 1] == "xray-hpo_default"


def test_data_is_mounted_where_the_worker_looks_for_it():
    # Rule: a relative data.path resolves under /app in the container as under the launch directory
    # here.
    assert data_mount("data/mock.h5", Path("/p")) == ("/p/data", "/app/data")
    assert data_mount("mock.h5", Path("/p")) == ("/p", "/app")
    assert data_mount("/scratch/d/mock.h5", Path("/p")) == ("/scratch/d", "/scratch/d")


def test_defaults_agree_with_the_worker_image_and_compose():
    # Rule: the launcher runs the image docker-compose.yml builds, whose entrypoint is `hpo`, in
    # /app.
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert compose["services"]["worker"]["image"] == DEFAULT_IMAGE
    dockerfile = (ROOT / "docker" / "worker.Dockerfile").read_text()
    assert f"WORKDIR {CONTAINER_WORKDIR}" in dockerfile and 'ENTRYPOINT ["hpo"]' in dockerfile
    env = set(compose["services"]["worker"]["environment"])
    assert {
        "HPO_STUDY",
        "HPO_STORAGE",
        "MLFLOW_TRACKING_URI",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
    } <= env
