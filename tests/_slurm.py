"""A private single-node Slurm cluster for the tests (deploy/slurm/cluster.sh): submitting,
watching and cancelling array jobs. The `slurm` fixture (tests/conftest.py) starts the cluster
once a session and stops it after; where it cannot start (not root, slurm-wlm or munge missing),
the tests that need it skip with the script's one-line reason."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "deploy" / "slurm" / "cluster.sh"
FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
         "PREEMPTED", "BOOT_FAIL", "DEADLINE")


@dataclass(frozen=True)
class Task:
    """One array task as `scontrol show job` tells it."""

    job_id: str  # its own job id (SLURM_JOB_ID)
    task_id: str  # SLURM_ARRAY_TASK_ID, or a range (0-1) while tasks are pending together
    state: str
    exit_code: str  # "STATUS:SIGNAL"


@dataclass(frozen=True)
class Slurm:
    """The cluster's client environment (SLURM_CONF) and the commands the tests use."""

    env: dict[str, str]

    def run(self, *argv: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(argv), env={**(env or os.environ), **self.env}, cwd=cwd,
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr}")
        return proc

    def sbatch(self, *args: str, env: dict[str, str], cwd: Path) -> str:
        """`sbatch ARGS` with `env` as the job's environment (sbatch passes its own on); the
        job id."""
        return self.run("sbatch", "--parsable", *args, env=env, cwd=cwd).stdout.strip()

    def tasks(self, job_id: str) -> list[Task]:
        """The array tasks of `job_id`; finished ones stay listed for MinJobAge (10 minutes)."""
        out = self.run("scontrol", "show", "job", "-o", job_id).stdout
        fields = [dict(re.findall(r"(\w+)=(\S*)", line)) for line in out.splitlines() if line]
        return [Task(f["JobId"], f.get("ArrayTaskId", ""), f["JobState"], f["ExitCode"])
                for f in fields]

    def task(self, job_id: str, task_id: int) -> Task:
        (task,) = [t for t in self.tasks(job_id) if t.task_id == str(task_id)]
        return task

    def wait_finished(self, job_id: str, timeout: float) -> dict[int, Task]:
        """Waits until every task of `job_id` has ended; {task id: Task}."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            tasks = self.tasks(job_id)
            if tasks and all(t.state in FINAL for t in tasks):
                return {int(t.task_id): t for t in tasks}
            time.sleep(1)
        raise AssertionError(f"job {job_id} did not finish in {timeout:.0f} s: {tasks}")

    def scancel(self, job_id: str, task_id: int) -> None:
        """Cancels one array task: SIGTERM to its processes, SIGKILL KillWait (10 s) later."""
        self.run("scancel", f"{job_id}_{task_id}")

    def cancel_all(self, job_id: str) -> None:
        subprocess.run(["scancel", job_id], env={**os.environ, **self.env}, check=False,
                       capture_output=True, timeout=60)


def array_task_of(pid: int) -> tuple[str, int] | None:
    """(array job id, task id) of the local process `pid` (from its environment), or None when it
    is gone or not a Slurm array task. Root reads every process's environment."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    items = raw.decode(errors="replace").split("\0")
    env = dict(item.split("=", 1) for item in items if "=" in item)
    if "SLURM_ARRAY_JOB_ID" not in env:
        return None
    return env["SLURM_ARRAY_JOB_ID"], int(env["SLURM_ARRAY_TASK_ID"])


def start_cluster() -> Iterator[Slurm]:
    """The `slurm` fixture: starts the cluster (or uses the one answering), stops it after if it
    started it; skips with the script's reason where none can start."""
    try:
        proc = subprocess.run([str(CLUSTER), "start"], capture_output=True, text=True, timeout=180)
    except OSError as exc:
        pytest.skip(f"cannot run {CLUSTER.name}: {exc}")
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        pytest.skip(f"no Slurm cluster: {reason}")
    env = dict(re.findall(r"^export (\w+)=(.*)$", proc.stdout, re.MULTILINE))
    started = "started slurm" in proc.stderr  # else it was running: leave it so
    try:
        yield Slurm(env)
    finally:
        if started:
            subprocess.run([str(CLUSTER), "stop"], check=False, capture_output=True, timeout=180)
