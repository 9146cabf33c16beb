"""deploy/slurm/worker.sbatch for real: array jobs on a private single-node Slurm cluster.

    python -m pytest tests/deploy/test_slurm.py -m e2e -q -p no:cacheprovider

The `slurm` fixture starts the cluster with deploy/slurm/cluster.sh (root, Debian's slurm-wlm
and munge: `.ci/run` installs them) and stops it after; where it cannot start, these tests skip
with its one-line reason. Each test gets a fresh PostgreSQL database (127.0.0.1:5432) and a real
`mlflow server`, creates its study with `hpo launch SPACE --workers 0`, and submits the script
unchanged, its #SBATCH lines overridden on the command line as a user of a CPU-only partition
would: `sbatch --array=0-1 --gres=none --mem=2G --cpus-per-task=1 ...` (`--gres=none` drops
the script's `--gres=gpu:1`; Slurm 22.05 accepts it). The jobs run `hpo worker` from this
checkout's virtual environment (HPO_RUNTIME=venv, HPO_VENV = the venv running the tests).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from tests._postgres import fresh_database
from tests._servers import mlflow_server
from tests._slurm import Slurm
from tests._slurm import array_task_of
from tests._workers import TINY
from tests._workers import clean_env
from tests._workers import trials_of
from tests._workers import wait_for
from tests.conftest import make_signal_data
from tests.conftest import write_h5

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
SBATCH = ROOT / "deploy" / "slurm" / "worker.sbatch"
VENV = Path(sys.executable).parent.parent  # the checkout's .venv in CI
FINISHED = ("COMPLETE", "PRUNED")


# ---- fixtures and helpers


@pytest.fixture()
def storage(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh PostgreSQL database for this test, dropped afterwards."""
    name = f"hpo_slurm_{request.node.name.removeprefix('test_')[:30]}_{os.getpid()}".lower()
    with fresh_database(name) as url:
        yield url


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as url:
        yield url


def create_study(workdir: Path, name: str, storage: str, tracking: str, *, n_trials: int,
                 epochs: int, **study) -> None:
    """data/signal.h5 (300 clusters) and space.yaml in `workdir`, then `hpo launch space.yaml
    --workers 0`: the study exists, no worker runs."""
    (workdir / "data").mkdir()
    write_h5(workdir / "data" / "signal.h5", make_signal_data(300))
    space = {
        "study": {"name": name, "n_trials": n_trials, "sampler": {"type": "random", "seed": 0},
                  "pruner": {"type": "none"}, "heartbeat_s": 1, "grace_s": 5, **study},
        "data": {"path": "data/signal.h5"},
        "base": {**TINY, "train": {**TINY["train"], "epochs": epochs}},
        "params": {"model.dropout.rate": {"float": [0.0, 0.3], "step": 0.1}},
    }
    (workdir / "space.yaml").write_text(yaml.safe_dump(space))
    launch = subprocess.run(
        [sys.executable, "-m", "hpo", "launch", "space.yaml", "--workers", "0",
         "--storage", storage, "--tracking-uri", tracking],
        cwd=workdir, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert launch.returncode == 0, launch.stdout[-3000:] + launch.stderr[-3000:]


def env_file(path: Path, *, study: str, storage: str, tracking: str, mode: int = 0o600) -> Path:
    """The worker.env the script sources, with `mode`."""
    path.write_text(f"HPO_STUDY={study}\nHPO_STORAGE={storage}\nMLFLOW_TRACKING_URI={tracking}\n")
    path.chmod(mode)
    return path


def submit(slurm: Slurm, workdir: Path, secrets: Path, *, array: str = "0-1") -> str:
    """`sbatch` of the unchanged script, its resources overridden for this CPU-only node, from
    `workdir` (which holds data/); the array job id."""
    env = {k: v for k, v in clean_env().items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as a user's
    env.update(HPO_RUNTIME="venv", HPO_VENV=str(VENV), HPO_WORKDIR=str(workdir),
               HPO_ENV_FILE=str(secrets))
    return slurm.sbatch(
        f"--array={array}", "--gres=none", "--mem=2G", "--cpus-per-task=1", "--time=10",
        f"--output={workdir}/hpo-worker-%A_%a.out", str(SBATCH), env=env, cwd=workdir)


def output(workdir: Path, job_id: str, task_id: int) -> str:
    return (workdir / f"hpo-worker-{job_id}_{task_id}.out").read_text()


def outputs(workdir: Path, job_id: str) -> str:
    """Every task's output file, for assertion messages."""
    files = sorted(workdir.glob(f"hpo-worker-{job_id}_*.out"))
    return "\n".join(f"==> {f.name}\n{f.read_text()[-3000:]}" for f in files)


def assert_budget_spent(trials: list[FrozenTrial], budget: int) -> None:
    states = [t.state.name for t in trials]
    assert sum(states.count(s) for s in FINISHED) >= budget, states
    assert "RUNNING" not in states and "WAITING" not in states, states


def assert_runs_ended(tracking: str, study: str, trials: list[FrozenTrial]) -> dict:
    """Every MLflow run of the study has ended (none RUNNING), each trial's is among them;
    {run id: run}."""
    client = MlflowClient(tracking)
    runs = client.search_runs([client.get_experiment_by_name(study).experiment_id])
    assert [r.info.status for r in runs if r.info.status == "RUNNING"] == []
    assert all(r.info.end_time for r in runs)
    by_id = {r.info.run_id: r for r in runs}
    assert {t.user_attrs["mlflow_run_id"] for t in trials} <= set(by_id)
    return by_id


def training_trial(storage: str, study: str, job_id: str) -> tuple[int, FrozenTrial] | None:
    """(array task id, trial) of a RUNNING trial of `job_id` that has trained an epoch (its
    MLflow run started), else None. A trial's worker attribute is host:pid of the `hpo worker`
    process, which the script exec's: that process is the task's batch script, and its
    environment says which task it is."""
    for t in trials_of(storage, study):
        if t.state != TrialState.RUNNING or "mlflow_run_id" not in t.user_attrs:
            continue
        pid = int(str(t.user_attrs.get("worker", ":0")).rsplit(":", 1)[1])
        task = array_task_of(pid)
        if t.intermediate_values and task is not None and task[0] == job_id:
            return task[1], t
    return None


def requeued_copy(trials: list[FrozenTrial], interrupted: FrozenTrial) -> FrozenTrial:
    """The one trial that re-ran `interrupted`'s parameters (system attr failed_trial)."""
    (copy,) = [t for t in trials if t.system_attrs.get("failed_trial") == interrupted.number]
    return copy


# ---- the tests


def test_an_array_of_two_workers_spends_the_budget(tmp_path, slurm, storage, tracking):
    # Rule: `sbatch --array=0-1 worker.sbatch` on a study created with `hpo launch --workers 0`
    # runs one `hpo worker` per array task, side by side (one CPU each) against PostgreSQL and an
    # MLflow server: both tasks run trials and end COMPLETED, the budget is spent, every trial is
    # COMPLETE or PRUNED and every MLflow run of the study has ended.
    create_study(tmp_path, "array", storage, tracking, n_trials=4, epochs=2)
    secrets = env_file(tmp_path / "worker.env", study="array", storage=storage, tracking=tracking)
    job = submit(slurm, tmp_path, secrets)
    try:
        tasks = slurm.wait_finished(job, timeout=300)
    finally:
        slurm.cancel_all(job)
    logs = outputs(tmp_path, job)
    assert [(t.state, t.exit_code) for t in tasks.values()] == [("COMPLETED", "0:0")] * 2, logs
    assert "Traceback" not in logs, logs

    trials = trials_of(storage, "array")
    assert_budget_spent(trials, 4)
    assert {t.state.name for t in trials} <= set(FINISHED), [t.state.name for t in trials]
    assert_runs_ended(tracking, "array", trials)
    # Both tasks ran trials: two worker processes, and each task's last line says how many.
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    for task_id in (0, 1):
        lines = output(tmp_path, job, task_id).strip().splitlines()
        assert lines[0].startswith(f"worker {task_id} of study 'array' on "), lines
        ran = lines[-1].removeprefix(f"worker {task_id}: ran ").split()[0]
        assert int(ran) >= 1 and lines[-1].endswith(" trials of study 'array'"), lines


def test_a_cancelled_array_task_loses_no_trial(tmp_path, slurm, storage, tracking):
    # Rule: `scancel JOB_K` while task K trains a trial (Slurm: SIGTERM, SIGKILL KillWait later)
    # fails that trial as interrupted, ends its MLflow run KILLED and queues its parameters
    # again; the other task runs the copy, which resumes from the trial's checkpoint, and
    # spends the budget: no trial is lost, none stays RUNNING.
    create_study(tmp_path, "cancel", storage, tracking, n_trials=2, epochs=20)
    secrets = env_file(tmp_path / "worker.env", study="cancel", storage=storage, tracking=tracking)
    job = submit(slurm, tmp_path, secrets)
    try:
        cancelled, interrupted = wait_for(lambda: training_trial(storage, "cancel", job), 240,
                                          "a trial training in an array task", poll=0.5)
        slurm.scancel(job, cancelled)
        tasks = slurm.wait_finished(job, timeout=300)
    finally:
        slurm.cancel_all(job)
    other = 1 - cancelled
    logs = outputs(tmp_path, job)
    assert tasks[cancelled].state == "CANCELLED", (tasks, logs)
    assert (tasks[other].state, tasks[other].exit_code) == ("COMPLETED", "0:0"), (tasks, logs)
    assert "Traceback" not in logs, logs
    assert "CANCELLED AT" in output(tmp_path, job, cancelled)

    trials = trials_of(storage, "cancel")
    assert_budget_spent(trials, 2)
    runs = assert_runs_ended(tracking, "cancel", trials)
    # The interrupted trial, as it ended, and the copy that re-ran its parameters on the other
    # task (where a resumed copy's checkpoint is to be looked for).
    interrupted = next(t for t in trials if t.number == interrupted.number)
    copy = requeued_copy(trials, interrupted)
    assert interrupted.state == TrialState.FAIL, interrupted
    assert interrupted.user_attrs["fail_reason"] == "interrupted", interrupted.user_attrs
    lost = runs[interrupted.user_attrs["mlflow_run_id"]]
    assert lost.info.status == "KILLED" and lost.data.tags["hpo.fail_reason"] == "interrupted"
    assert copy.state.name in FINISHED and copy.params == interrupted.params, copy
    assert copy.user_attrs["worker"] != interrupted.user_attrs["worker"]  # the other task ran it
    copy_run = runs[copy.user_attrs["mlflow_run_id"]]
    assert copy_run.info.status == "FINISHED"
    # The copy resumed the interrupted trial's checkpoint (in HPO_WORKDIR/checkpoints, which both
    # tasks share) at the epoch it stopped at, rather than from epoch 0; the checkpoint is gone.
    resumed = copy.user_attrs["resumed"]
    assert resumed == {"trial": interrupted.number, "run": interrupted.user_attrs["mlflow_run_id"],
                       "epoch": len(interrupted.intermediate_values)}, (resumed, interrupted)
    assert copy_run.data.tags["hpo.resumes_run"] == interrupted.user_attrs["mlflow_run_id"]
    assert sorted(copy.intermediate_values) == list(range(20))
    assert not list((tmp_path / "checkpoints").rglob("*.npz"))


@pytest.mark.parametrize("case", ["no env file", "readable env file", "no such study"])
def test_a_job_that_cannot_start_fails_with_one_line(case, tmp_path, slurm, storage, tracking):
    # Rule: a job whose env file is missing or readable by others, or whose study does not exist,
    # ends FAILED with one line in its output file saying why (after the script's banner line
    # for the study), no traceback.
    secrets = tmp_path / "worker.env"
    if case == "no env file":
        expected = [f"worker.sbatch: env file {secrets} not found; create it (see the header of "
                    "this script) or set HPO_ENV_FILE"]
    elif case == "readable env file":
        env_file(secrets, study="array", storage=storage, tracking=tracking, mode=0o644)
        expected = [f"worker.sbatch: env file {secrets} has mode 644; it holds passwords: "
                    f"chmod 600 {secrets}"]
    else:
        optuna.create_study(study_name="other", storage=storage)  # the storage holds a study
        env_file(secrets, study="nothing", storage=storage, tracking=tracking)
        expected = ["worker 0 of study 'nothing' on ",
                    "hpo: error: no study 'nothing' in"]
    job = submit(slurm, tmp_path, secrets, array="0")
    try:
        (task,) = slurm.wait_finished(job, timeout=180).values()
    finally:
        slurm.cancel_all(job)
    lines = output(tmp_path, job, 0).strip().splitlines()
    assert (task.state, task.exit_code) == ("FAILED", "1:0"), (task, lines)
    assert len(lines) == len(expected) and all(
        line.startswith(want) for line, want in zip(lines, expected, strict=True)), lines
