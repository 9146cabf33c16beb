"""`hpo launch --launcher docker`: the exact `docker run` commands (no Docker engine needed)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hpo.envfile import load_secrets_file
from hpo.envfile import parse_env_file
from hpo.envfile import write_env_file
from hpo.errors import ConfigError
from hpo.errors import DataContractError
from hpo.launch.docker import _READ_CHECK
from hpo.launch.docker import check_readable
from hpo.launch.docker import CONTAINER_WORKDIR
from hpo.launch.docker import ContainerUser
from hpo.launch.docker import data_mount
from hpo.launch.docker import DEFAULT_IMAGE
from hpo.launch.docker import docker_workers
from hpo.launch.docker import SECRETS_MOUNT
from hpo.launch.worker_processes import LAUNCHERS
from hpo.launch.worker_processes import Plan

ROOT = Path(__file__).resolve().parents[2]
PG = "postgresql+psycopg://hpo:s3cret@127.0.0.1:5432/optuna"
ML = "http://127.0.0.1:5000"
ANN = ContainerUser(1234, 567, (20, 44), "ann")


@pytest.fixture
def fake_docker(tmp_path, monkeypatch):
    """A `docker` command first on PATH that records its argv in calls.json and answers with
    FAKE_DOCKER_RC (default 0), FAKE_DOCKER_OUT and FAKE_DOCKER_ERR."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.json"
    script = bin_dir / "docker"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        f"log = {str(log)!r}\n"
        "calls = json.load(open(log)) if os.path.exists(log) else []\n"
        "json.dump(calls + [sys.argv[1:]], open(log, 'w'))\n"
        "sys.stdout.write(os.environ.get('FAKE_DOCKER_OUT', ''))\n"
        "sys.stderr.write(os.environ.get('FAKE_DOCKER_ERR', ''))\n"
        "sys.exit(int(os.environ.get('FAKE_DOCKER_RC', '0')))\n"
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return lambda: json.loads(log.read_text()) if log.exists() else []


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
    first, second = _workers(secrets_file=Path("/tmp/hpo-secrets-x/worker.env"), threads=3,
                             user=ANN)
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
        "--user",
        "1234:567",
        "--group-add",
        "20",
        "--group-add",
        "44",
        "-e",
        "HOME=/tmp",
        "-e",
        "USER=ann",
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


def test_containers_run_as_the_launching_user():
    # Rule: a worker container runs as the user and group of the process that launches it, with
    # that user's other groups, so a file the user can read (in a folder only they can enter) the
    # workers can read; HOME is writable for any id, USER names the user for MLflow.
    me = ContainerUser.current()
    assert (me.uid, me.gid) == (os.getuid(), os.getgid())
    assert set(me.groups) == set(os.getgroups()) - {os.getgid()}
    (worker,) = _workers(gpus=["0"])
    run = worker.run
    assert run[run.index("--user") + 1] == f"{os.getuid()}:{os.getgid()}"
    assert run.index("--user") < run.index(DEFAULT_IMAGE)  # an option of docker run, not of hpo
    assert [run[i + 1] for i, a in enumerate(run) if a == "--group-add"] == [
        str(g) for g in me.groups]
    assert "HOME=/tmp" in run and f"USER={me.name}" in run


def test_the_calibration_file_is_mounted_as_the_data_file_is():
    # Rule: data.calibration_path, read by workers too, has its folder mounted read-only where
    # /app/<path> resolves; a folder shared with the data file is mounted once.
    (worker,) = _workers(gpus=["0"], calibration_path="/scratch/cal.h5", user=ANN)
    mounts = [worker.run[i + 1] for i, a in enumerate(worker.run) if a == "-v"]
    assert mounts == ["/home/u/proj/data:/app/data:ro", "/scratch:/scratch:ro"]
    (worker,) = _workers(gpus=["0"], calibration_path="data/cal.h5", user=ANN)
    assert [a for a in worker.run if a.endswith(":ro")] == ["/home/u/proj/data:/app/data:ro"]


def test_the_readability_check_runs_the_image_as_the_workers_run(fake_docker):
    # Rule: before any worker starts, the image runs once (no network) as the workers' user with
    # their mounts, and opens every data file at the path a worker opens.
    check_readable(["data/mock.h5", "/scratch/cal.h5"], cwd=Path("/p"), image="img:1", user=ANN)
    (argv,) = fake_docker()
    assert argv[:4] == ["run", "--rm", "--network", "none"]
    assert argv[argv.index("--user") + 1] == "1234:567"
    assert ["-v", "/p/data:/app/data:ro"] == argv[argv.index("-v"):argv.index("-v") + 2]
    assert "/scratch:/scratch:ro" in argv
    tail = argv[argv.index("--entrypoint"):]
    assert tail[:3] == ["--entrypoint", "python3", "img:1"]
    assert tail[-2:] == ["/app/data/mock.h5", "/scratch/cal.h5"]


def test_a_file_the_containers_cannot_read_is_one_line_naming_it_and_the_user(
        fake_docker, monkeypatch, tmp_path):
    # Rule: a data file the image's check cannot open is a DataContractError of one line that
    # names the file as the space gives it, its path inside, the user and the reason.
    monkeypatch.setenv("FAKE_DOCKER_RC", "1")
    monkeypatch.setenv("FAKE_DOCKER_OUT", "/app/data/mock.h5\tEACCES\tPermission denied\n")
    with pytest.raises(DataContractError) as err:
        check_readable(["data/mock.h5"], cwd=tmp_path, image="img:1", user=ANN)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("worker containers cannot read the data file data/mock.h5 "
                              "(/app/data/mock.h5 in image img:1, as user ann (uid 1234, gid 567))"
                              ": Permission denied; make it and its folder readable by that user")
    # A symbolic link to a file of another name mounts the target's folder, where it is not.
    (tmp_path / "store").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mock.h5").symlink_to(tmp_path / "store" / "real.h5")
    monkeypatch.setenv("FAKE_DOCKER_OUT", "/app/data/mock.h5\tENOENT\tNo such file or directory\n")
    with pytest.raises(DataContractError, match="No such file.*symbolic link to .*real.h5"):
        check_readable(["data/mock.h5"], cwd=tmp_path, image="img:1", user=ANN)


def test_an_image_that_cannot_run_is_one_line_before_any_worker(fake_docker, monkeypatch):
    # Rule: an image docker cannot run (not built, not pullable) is one ConfigError line with
    # docker's own error, not docker's usage hint; no docker command at all is one line too.
    monkeypatch.setenv("FAKE_DOCKER_RC", "125")
    monkeypatch.setenv("FAKE_DOCKER_ERR", "Unable to find image 'img:1' locally\ndocker: Error "
                       "response from daemon: pull access denied for img.\n"
                       "See 'docker run --help'.\n")
    with pytest.raises(ConfigError, match=r"img:1 cannot be run .*exited 125: docker: Error "
                       r"response from daemon: pull access denied for img\.\); build it"):
        check_readable(["data/mock.h5"], cwd=Path("/p"), image="img:1", user=ANN)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ConfigError, match="runs the docker command, which cannot be run here"):
        check_readable(["data/mock.h5"], cwd=Path("/p"), image="img:1", user=ANN)


def test_the_in_image_check_opens_each_file_as_a_worker_would(tmp_path):
    # Rule: the script the image runs exits 0 when every file opens, else prints the first that
    # does not with its errno name and the reason, tab-separated, and exits 1.
    ok = tmp_path / "ok.h5"
    ok.write_bytes(b"x")
    run = [sys.executable, "-c", _READ_CHECK]
    assert subprocess.run([*run, str(ok)], capture_output=True).returncode == 0
    proc = subprocess.run([*run, str(ok), str(tmp_path / "gone.h5"), str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stdout == f"{tmp_path / 'gone.h5'}\tENOENT\tNo such file or directory\n"


def test_secrets_reach_the_container_in_a_mounted_file_only(fake_docker):
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
    (check,) = fake_docker()  # the data file was checked before the worker was returned
    assert check[-1] == "/app/data/mock.h5"


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


def test_containers_sharing_a_gpu_are_told_they_take_turns_on_it():
    # Rule: MPS runs inside a container for its own K workers (--workers-per-gpu K), not across
    # containers: when more containers than GPUs share one, one line says so and what to do
    # instead; one container per GPU, or CPU containers, say nothing.
    from hpo.launch.mps import across_containers

    three = _workers(workers=3, gpus=["0", "1"])
    assert [c.gpu for c in three] == ["0", "1", "0"]
    assert across_containers([c.gpu for c in three]) == (
        "MPS: not used across worker containers (GPU 0: 2 containers), which take turns on their "
        "GPU; --workers-per-gpu K runs K workers side by side in one container, under MPS where "
        "its image has nvidia-cuda-mps-control")
    assert across_containers([c.gpu for c in _workers()]) == ""
    assert across_containers([c.gpu for c in _workers(workers=3, gpus=[])]) == ""
