"""Studies in real worker containers: the image of docker/build-local.sh on a Docker engine.

    python -m pytest tests/launch/test_containers.py -m e2e -q -p no:cacheprovider

Uses the engine DOCKER_HOST (or the default socket) names, else starts one with
docker/engine.sh (root and Debian's docker.io needed), and builds the CPU worker image of this
checkout (the first build takes minutes; later ones reuse the base, the wheelhouse and the
dependency layer). Containers run on the host network against the PostgreSQL of 127.0.0.1:5432
and a real `mlflow server`. Skipped, with the reason, where no engine can be had.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState

from hpo.launch.docker import SECRETS_MOUNT
from tests._servers import mlflow_server
from tests._workers import TINY
from tests._workers import clean_env
from tests._workers import finish
from tests._workers import trials_of
from tests._workers import wait_for
from tests.conftest import make_signal_data
from tests.conftest import write_h5

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "xray-hpo-worker:test"
PREREQUISITE_MISSING = 3  # exit status of docker/engine.sh and build-local.sh: cannot run here
# Trust auth ignores a password: these reach the containers like real ones and must not leak.
DB_PASSWORD = "db-s3cret-7f2a"
MLFLOW_PASSWORD = "mlflow-s3cret-91c4"
FINISHED = ("COMPLETE", "PRUNED")


def docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


def _engine_answers() -> bool:
    return docker("info", check=False, timeout=30).returncode == 0


@pytest.fixture(scope="module")
def worker_image() -> Iterator[str]:
    """The CPU worker image of this checkout, on an engine that DOCKER_HOST (now) names."""
    if shutil.which("docker") is None:
        pytest.skip("no docker CLI (apt-get install docker.io)")
    started, old_host = False, os.environ.get("DOCKER_HOST")
    if not _engine_answers():
        proc = subprocess.run([str(ROOT / "docker" / "engine.sh"), "start"], capture_output=True,
                              text=True, timeout=120)
        if proc.returncode != 0:
            pytest.skip(f"no Docker engine answers and none starts: {proc.stderr.strip()}")
        os.environ["DOCKER_HOST"] = proc.stdout.strip().split("=", 1)[1]
        started = "started dockerd" in proc.stderr  # else it was running: leave it so
    try:
        env = {**os.environ, "PYTHON": sys.executable}
        build = subprocess.run([str(ROOT / "docker" / "build-local.sh"), IMAGE],
                               capture_output=True, text=True, env=env, timeout=3600)
        if build.returncode == PREREQUISITE_MISSING:
            pytest.skip(f"cannot build the worker image here: {build.stderr.strip()}")
        assert build.returncode == 0, build.stderr[-3000:]
        yield IMAGE
    finally:
        if started:
            subprocess.run([str(ROOT / "docker" / "engine.sh"), "stop"], check=False, timeout=120)
            if old_host is None:
                os.environ.pop("DOCKER_HOST", None)
            else:
                os.environ["DOCKER_HOST"] = old_host


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as url:
        yield url


def with_password(pg_url: str) -> str:
    return pg_url.replace("@", f":{DB_PASSWORD}@", 1)


def write_space(cwd: Path, name: str, *, n_trials: int, epochs: int, data: str | None = None,
                **study) -> Path:
    """space.yaml, and its data file: data/signal.h5 (read by the containers, which run as this
    user, through the mount), or the one `data` names, which the test writes."""
    if data is None:
        (cwd / "data").mkdir()
        write_h5(cwd / "data" / "signal.h5", make_signal_data(300))
    space = {
        "study": {"name": name, "n_trials": n_trials, "sampler": {"type": "random", "seed": 0},
                  "pruner": {"type": "none"}, **study},
        "data": {"path": data or "data/signal.h5"},
        "base": {**TINY, "train": {**TINY["train"], "epochs": epochs}},
        "params": {"model.dropout.rate": {"float": [0.0, 0.3], "step": 0.1}},
    }
    (cwd / "space.yaml").write_text(yaml.safe_dump(space))
    return cwd / "space.yaml"


def start_launch(cwd: Path, storage: str, tracking_uri: str, image: str,
                 workers: int) -> subprocess.Popen:
    """`hpo launch space.yaml --launcher docker` in the background, output in cwd/launch.log."""
    env = {**clean_env(), "MLFLOW_TRACKING_USERNAME": "hpo",
           "MLFLOW_TRACKING_PASSWORD": MLFLOW_PASSWORD}
    out = open(cwd / "launch.log", "w")  # noqa: SIM115  closed with the process
    return subprocess.Popen(
        [sys.executable, "-m", "hpo", "launch", "space.yaml", "--launcher", "docker",
         "--workers", str(workers), "--storage", storage, "--tracking-uri", tracking_uri,
         "--image", image],
        cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)


def assert_launched(launch: subprocess.Popen, log: Path) -> None:
    assert finish(launch, 600, log) == 0, log.read_text()[-5000:]


def containers(prefix: str, *, all_states: bool = False) -> list[str]:
    args = ["ps", "--filter", f"name={prefix}", "--format", "{{.Names}}"]
    return docker(*args, *(["--all"] if all_states else [])).stdout.split()


def running_trial_of(storage: optuna.storages.RDBStorage, study: str, key: str, *,
                     epochs: int = 0):
    """The RUNNING trial of the worker whose trials carry WORKER_KEY `key`, once its run exists
    (and it has reported `epochs` epochs).

    Polls through one storage: a storage per poll would keep a connection each until collected.
    """
    try:
        study_id = storage.get_study_id_from_name(study)
    except KeyError:  # the launcher has not created the study yet
        return None
    for t in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get("worker") == key and "mlflow_run_id" in t.user_attrs \
                and len(t.intermediate_values) >= epochs:
            return t
    return None


def assert_budget_spent(trials, budget: int) -> None:
    states = [t.state.name for t in trials]
    assert sum(states.count(s) for s in FINISHED) >= budget, states
    assert "RUNNING" not in states and "WAITING" not in states, states


def test_a_study_in_two_containers_spends_its_budget_and_promotes(tmp_path, pg_url, tracking,
                                                                  worker_image):
    # Rule: `hpo launch --launcher docker --workers 2` runs the study in two worker containers
    # against PostgreSQL and an MLflow server: the budget is spent by both, every trial is a
    # nested, ended run, and `hpo promote` registers the champion from the containers' runs. The
    # credentials reach the containers in a mounted file: neither `docker inspect` of a running
    # worker nor the image shows them.
    write_space(tmp_path, "boxed", n_trials=4, epochs=3)
    storage = with_password(pg_url)
    launch = start_launch(tmp_path, storage, tracking, worker_image, workers=2)
    prefix = f"hpo-boxed-{launch.pid}-"
    try:
        (name, *_) = wait_for(lambda: containers(prefix), 120, "a running worker container")
        inspect = docker("inspect", name, check=False).stdout
        assert_launched(launch, tmp_path / "launch.log")
    finally:
        for leftover in containers(prefix, all_states=True):
            docker("rm", "-f", leftover, check=False)
    assert inspect, f"{name} was gone before it could be inspected"
    config = json.loads(inspect)[0]["Config"]
    assert f"HPO_SECRETS_FILE={SECRETS_MOUNT}" in config["Env"]
    image = docker("image", "inspect", worker_image).stdout + docker(
        "history", "--no-trunc", worker_image).stdout
    for secret in (DB_PASSWORD, MLFLOW_PASSWORD):
        assert secret not in inspect and secret not in image

    trials = trials_of(pg_url, "boxed")
    assert_budget_spent(trials, 4)
    assert {t.user_attrs["worker"] for t in trials} == {f"{prefix}0:1", f"{prefix}1:1"}
    client = MlflowClient(tracking)
    runs = client.search_runs([client.get_experiment_by_name("boxed").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("hpo.kind") == "study"]
    trial_runs = {r.info.run_id: r for r in runs if r.data.tags.get("hpo.kind") == "trial"}
    assert parent.info.status == "FINISHED"
    assert {t.user_attrs["mlflow_run_id"] for t in trials} == set(trial_runs)
    for run in trial_runs.values():
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status in ("FINISHED", "FAILED", "KILLED") and run.info.end_time

    env = {**clean_env(), "MLFLOW_TRACKING_URI": tracking}
    promote = subprocess.run(
        [sys.executable, "-m", "hpo", "promote", "boxed", "--model", "boxed-mass",
         "--storage", pg_url, "--top-k", "2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert promote.returncode == 0, promote.stderr[-3000:]
    assert "champion -> version 1" in promote.stdout
    champion = client.get_model_version_by_alias("boxed-mass", "champion")
    assert champion.run_id in trial_runs or client.get_run(champion.run_id).data.tags.get(
        "mlflow.parentRunId") == parent.info.run_id


def test_a_stopped_and_a_killed_container_lose_no_trial(tmp_path, pg_url, tracking, worker_image):
    # Rule: of three worker containers, one gets `docker stop` (SIGTERM) and one `docker kill`
    # (SIGKILL) mid-trial. The stopped one fails its trial as interrupted and ends its run KILLED;
    # the killed one's trial is failed once its heartbeat stops, its run ended KILLED and its
    # parameters run again; each copy resumes its trial's checkpoint; the third container spends
    # the budget, and the launch succeeds.
    write_space(tmp_path, "faults", n_trials=3, epochs=30, heartbeat_s=1, grace_s=5)
    launch = start_launch(tmp_path, pg_url, tracking, worker_image, workers=3)
    prefix = f"hpo-faults-{launch.pid}-"
    storage = optuna.storages.RDBStorage(pg_url)
    try:
        stopped = wait_for(lambda: running_trial_of(storage, "faults", f"{prefix}0:1", epochs=1),
                           300, "an epoch of a trial in container 0", poll=0.5)
        killed = wait_for(lambda: running_trial_of(storage, "faults", f"{prefix}1:1", epochs=1),
                          300, "an epoch of a trial in container 1", poll=0.5)
        docker("stop", "--time", "60", f"{prefix}0")
        docker("kill", f"{prefix}1")
        assert_launched(launch, tmp_path / "launch.log")
        assert containers(prefix, all_states=True) == []  # --rm: none is left behind
    finally:
        storage.engine.dispose()
        if launch.poll() is None:
            launch.send_signal(signal.SIGKILL)
        for leftover in containers(prefix, all_states=True):
            docker("rm", "-f", leftover, check=False)

    trials = trials_of(pg_url, "faults")
    assert_budget_spent(trials, 3)
    by_number = {t.number: t for t in trials}
    client = MlflowClient(tracking)
    assert by_number[stopped.number].state == TrialState.FAIL
    assert "interrupted" in by_number[stopped.number].user_attrs["fail_reason"]
    assert client.get_run(stopped.user_attrs["mlflow_run_id"]).info.status == "KILLED"
    assert by_number[killed.number].state == TrialState.FAIL
    reruns = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(reruns) == 1 and reruns[0].state.name in FINISHED
    assert reruns[0].params == killed.params
    run = client.get_run(killed.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and "no heartbeat" in run.data.tags["hpo.fail_reason"]
    # Both copies resumed their trial's checkpoint (in the launch folder's checkpoints/, which
    # every container mounts read-write) instead of starting from epoch 0, and removed it.
    for lost in (by_number[stopped.number], by_number[killed.number]):
        (copy,) = [t for t in trials if t.system_attrs.get("failed_trial") == lost.number]
        assert copy.user_attrs["resumed"]["trial"] == lost.number, copy.user_attrs
        assert copy.user_attrs["resumed"]["epoch"] >= len(lost.intermediate_values) - 1 >= 0
    assert not list((tmp_path / "checkpoints").rglob("*.npz"))


def test_a_container_with_a_bad_storage_exits_with_one_line(tmp_path, worker_image):
    # Rule: a worker container whose storage cannot be opened exits non-zero, and `docker logs`
    # holds one line naming the storage (its password masked), no traceback.
    secrets = tmp_path / "secrets"
    secrets.mkdir(mode=0o700)
    url = f"postgresql+psycopg://hpo:{DB_PASSWORD}@127.0.0.1:1/optuna"
    (secrets / "worker.env").write_text(f"HPO_STORAGE={url}\n")
    name = f"hpo-bad-storage-{os.getpid()}"
    try:
        docker("run", "--detach", "--name", name, "--network", "host",
               "-e", "HPO_STUDY=nothing", "-e", f"HPO_SECRETS_FILE={SECRETS_MOUNT}",
               "-v", f"{secrets / 'worker.env'}:{SECRETS_MOUNT}:ro", worker_image)
        status = int(docker("wait", name, timeout=300).stdout.strip())
        logs = docker("logs", name)
    finally:
        docker("rm", "-f", name, check=False)
    lines = (logs.stdout + logs.stderr).splitlines()
    assert status != 0
    assert len(lines) == 1, lines
    assert lines[0].startswith("hpo: error: cannot open study storage postgresql+psycopg://")
    assert "127.0.0.1:1/optuna" in lines[0] and DB_PASSWORD not in lines[0]


def test_a_data_file_in_a_folder_only_its_user_can_enter_is_read_by_the_workers(
        tmp_path, pg_url, tracking, worker_image):
    # Rule: the worker containers run as the user who launches them, so a data file that user
    # can read is read by the workers too, even in a folder of mode 0700 (every `mktemp -d`):
    # the study spends its budget. Before, the image's own user (uid 1000) could not enter the
    # folder and every worker printed a PermissionError traceback.
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    write_h5(private / "signal.h5", make_signal_data(300))
    (private / "signal.h5").chmod(0o600)
    write_space(tmp_path, "private", n_trials=2, epochs=1, data=str(private / "signal.h5"))
    launch = start_launch(tmp_path, pg_url, tracking, worker_image, workers=2)
    try:
        assert_launched(launch, tmp_path / "launch.log")
    finally:
        for leftover in containers(f"hpo-private-{launch.pid}-", all_states=True):
            docker("rm", "-f", leftover, check=False)
    assert_budget_spent(trials_of(pg_url, "private"), 2)
    assert "Traceback" not in (tmp_path / "launch.log").read_text()


def test_a_data_file_the_workers_cannot_read_is_one_line_before_any_trial(
        tmp_path, pg_url, tracking, worker_image):
    # Rule: a data file that the workers still cannot read (here a symbolic link to a file of
    # another name, outside the folder containers mount) stops the launch before the study or
    # any worker exists: exit 1 and one line naming the file and the user, no traceback, no
    # container left.
    (tmp_path / "store").mkdir()
    write_h5(tmp_path / "store" / "real.h5", make_signal_data(300))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "signal.h5").symlink_to(tmp_path / "store" / "real.h5")
    write_space(tmp_path, "unread", n_trials=2, epochs=1, data="data/signal.h5")
    launch = start_launch(tmp_path, pg_url, tracking, worker_image, workers=2)
    assert finish(launch, 300, tmp_path / "launch.log") == 1
    lines = (tmp_path / "launch.log").read_text().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("hpo: error: worker containers cannot read the data file "
                               "data/signal.h5 (/app/data/signal.h5 in image ")
    assert f"(uid {os.getuid()}, gid {os.getgid()})" in lines[0]
    assert "symbolic link" in lines[0]
    assert containers(f"hpo-unread-{launch.pid}-", all_states=True) == []
    with pytest.raises(KeyError):
        trials_of(pg_url, "unread")  # no study was created
