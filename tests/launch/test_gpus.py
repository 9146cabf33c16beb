"""GPUs of the local launcher: visible devices, round robin, a CUDA_VISIBLE_DEVICES per worker."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hpo.launch.gpus import gpu_env
from hpo.launch.gpus import round_robin
from hpo.launch.gpus import visible_gpus
from hpo.launch.worker_processes import local_workers
from hpo.launch.worker_processes import Plan


def _no_smi() -> list[str]:
    raise AssertionError("nvidia-smi must not be asked when CUDA_VISIBLE_DEVICES is set")


def test_cuda_visible_devices_decides_when_set():
    # Rule: CUDA_VISIBLE_DEVICES lists the usable GPUs, indices or UUIDs, read as CUDA reads it.
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2,3"}, _no_smi) == ["2", "3"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "GPU-1a2b, MIG-3c4d"}, _no_smi) == [
        "GPU-1a2b",
        "MIG-3c4d",
    ]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "0,-1,1"}, _no_smi) == ["0"]  # CUDA stops at -1
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}, _no_smi) == []


def test_without_cuda_visible_devices_every_listed_gpu():
    # Rule: with no CUDA_VISIBLE_DEVICES, every GPU nvidia-smi lists is used.
    assert visible_gpus({}, lambda: ["0", "1", "2"]) == ["0", "1", "2"]
    assert visible_gpus({}, lambda: []) == []


def test_round_robin_over_gpus():
    # Rule: worker i gets GPU i mod n; with no GPU, no worker gets one.
    assert round_robin(5, ["0", "1"]) == ["0", "1", "0", "1", "0"]
    assert round_robin(2, ["3", "5", "7"]) == ["3", "5"]
    assert round_robin(3, []) == [None, None, None]


def _plan(workers, gpus, env=None, per_gpu=1):
    return Plan(
        "s",
        "sqlite:///hpo.db",
        "sqlite:///mlflow.db",
        "data/x.h5",
        workers,
        gpus,
        Path("/w"),
        env=env if env is not None else {"PATH": "/bin"},
        workers_per_gpu=per_gpu,
    )


def test_local_workers_each_get_their_own_gpu_and_index():
    # Rule: `hpo launch --workers N` starts N `hpo worker` processes, each with one GPU and its own
    # index.
    procs = local_workers(_plan(3, ["0", "1"]))
    assert [p.env["CUDA_VISIBLE_DEVICES"] for p in procs] == ["0", "1", "0"]
    assert [p.argv[p.argv.index("--worker-index") + 1] for p in procs] == ["0", "1", "2"]
    assert all(p.argv[2:5] == ["hpo", "worker", "--study"] for p in procs)
    assert all(p.env["PATH"] == "/bin" for p in procs)


def test_local_workers_get_the_urls_in_their_environment_not_their_argv():
    # Rule: the storage URL and tracking URI, which may hold passwords, reach a local worker in
    # HPO_STORAGE and MLFLOW_TRACKING_URI; its command line (readable by every user) has neither.
    plan = Plan("s", "postgresql://u:pw@db/o", "http://u:pw@ml:5000", "d.h5", 2, [], Path("/w"),
                env={"PATH": "/bin", "HPO_STORAGE": "sqlite:///other.db"})
    for proc in local_workers(plan):
        assert not any("pw" in a or a in ("--storage", "--tracking-uri") for a in proc.argv)
        assert proc.env["HPO_STORAGE"] == "postgresql://u:pw@db/o"
        assert proc.env["MLFLOW_TRACKING_URI"] == "http://u:pw@ml:5000"


def test_local_workers_without_gpu_keep_the_environment():
    # Rule: with no GPU the workers' CUDA_VISIBLE_DEVICES is left as it was; one worker by default.
    (proc,) = local_workers(_plan(None, [], env={"CUDA_VISIBLE_DEVICES": ""}))
    assert proc.env["CUDA_VISIBLE_DEVICES"] == ""


def test_workers_per_gpu_share_each_gpu_with_a_bounded_memory_share(monkeypatch):
    # Rule: --workers-per-gpu K starts K workers on every visible GPU (round robin); workers that
    # share a GPU each get 0.9/K of its memory through JAX's and TensorFlow's own settings.
    monkeypatch.setattr("hpo.launch.worker_processes.gpu_memory_mb", lambda: {"0": 80000, "1": 40000})
    procs = local_workers(_plan(None, ["0", "1"], per_gpu=4))
    assert [p.env["CUDA_VISIBLE_DEVICES"] for p in procs] == ["0", "1"] * 4
    assert {p.env["XLA_PYTHON_CLIENT_MEM_FRACTION"] for p in procs} == {"0.225"}
    assert all(p.env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false" for p in procs)
    assert [p.env["HPO_GPU_MEMORY_MB"] for p in procs[:2]] == ["18000", "9000"]
    assert len({p.argv[p.argv.index("--worker-index") + 1] for p in procs}) == 8


def test_a_worker_alone_on_its_gpu_gets_all_of_it():
    # Rule: one worker per GPU (the default) gets no memory limit; without GPUs K changes nothing.
    procs = local_workers(_plan(None, ["0", "1"]))
    assert len(procs) == 2
    assert not any("XLA_PYTHON_CLIENT_MEM_FRACTION" in p.env or "HPO_GPU_MEMORY_MB" in p.env
                   for p in procs)
    assert len(local_workers(_plan(None, [], per_gpu=4))) == 1


def test_gpu_env_shares():
    # Rule: the share is the headroom split evenly; the TensorFlow limit follows the GPU's memory.
    env = gpu_env("3", 8, memory_mb=143771)
    assert env["CUDA_VISIBLE_DEVICES"] == "3"
    assert float(env["XLA_PYTHON_CLIENT_MEM_FRACTION"]) * 8 <= 0.9
    assert int(env["HPO_GPU_MEMORY_MB"]) == int(143771 * float(env["XLA_PYTHON_CLIENT_MEM_FRACTION"]))
    assert env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    # A lone worker may take the whole card, as its trials need it, not 75% of it at start.
    assert gpu_env("3", 1) == {"CUDA_VISIBLE_DEVICES": "3", "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
                               "TF_FORCE_GPU_ALLOW_GROWTH": "true"}


@pytest.mark.slow
@pytest.mark.e2e
def test_one_worker_command_runs_k_worker_processes(tmp_path):
    # Rule: `hpo worker --workers-per-gpu 2` (HPO_WORKERS_PER_GPU in compose, k8s and Slurm) runs
    # 2 worker processes of the study as one command: both take trials, the budget is spent, and
    # their sampler indexes follow from the command's own (--worker-index 3 -> 6 and 7).
    from optuna.trial import TrialState

    from tests._workers import create_study
    from tests._workers import hpo_cmd
    from tests._workers import trials_of
    from tests._workers import write_study_files

    write_study_files(tmp_path, "group", n_trials=4,
                      params={"model.dropout.rate": {"float": [0.0, 0.3]}})
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    create_study(tmp_path, storage)
    out = hpo_cmd(tmp_path, "worker", "--study", "group", "--storage", storage,
                  "--workers-per-gpu", "2", "--worker-index", "3", timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "2 workers of study 'group': 4/4 trials done" in out.stdout
    trials = trials_of(storage, "group")
    assert sum(t.state == TrialState.COMPLETE for t in trials) >= 4
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    assert "worker 6: ran" in out.stdout and "worker 7: ran" in out.stdout


FAKE_CONTROL = """#!/bin/sh
# Stands in for NVIDIA's MPS control program (no GPU here): records each call, its pipe folder
# and its standard input; `HPO_FAKE_MPS_FAIL` makes the start fail as a daemon would.
echo "$* pipe=$CUDA_MPS_PIPE_DIRECTORY stdin=$(cat)" >> "$HPO_FAKE_MPS_LOG"
if [ -n "$HPO_FAKE_MPS_FAIL" ] && [ "$1" = "-d" ]; then echo "$HPO_FAKE_MPS_FAIL" >&2; exit 1; fi
"""


@pytest.fixture
def fake_control(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    control = bin_dir / "nvidia-cuda-mps-control"
    control.write_text(FAKE_CONTROL)
    control.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("HPO_FAKE_MPS_LOG", str(tmp_path / "calls.log"))
    monkeypatch.delenv("CUDA_MPS_PIPE_DIRECTORY", raising=False)
    monkeypatch.delenv("HPO_MPS", raising=False)
    # No GPU here for the real client probe: a stand-in records it, and starts unless told not to.
    clients = tmp_path / "clients.log"

    def client_starts(gpu, env):
        with clients.open("a") as log:
            log.write(f"{gpu} pipe={env['CUDA_MPS_PIPE_DIRECTORY']}\n")
        return os.environ.get("HPO_FAKE_MPS_CLIENT_FAIL", "")

    monkeypatch.setattr("hpo.launch.mps.client_starts", client_starts)
    return tmp_path / "calls.log"


def test_workers_sharing_a_gpu_get_a_private_mps_daemon_stopped_after_them(fake_control):
    # Rule: when a GPU gets more than one worker, a private MPS daemon is started (its pipe in a
    # folder of its own), the workers are given its pipe, and it is told to quit afterwards; one
    # line says so. A GPU per worker, or CPU workers, start nothing.
    from hpo.launch.mps import mps_for

    said: list[str] = []
    with mps_for(["0", "0", "1"], said.append) as env:
        pipe = env["CUDA_MPS_PIPE_DIRECTORY"]
        assert Path(pipe).is_dir() and Path(env["CUDA_MPS_LOG_DIRECTORY"]).is_dir()
        assert fake_control.read_text().splitlines() == [f"-d pipe={pipe} stdin="]
    assert fake_control.read_text().splitlines()[1] == f" pipe={pipe} stdin=quit"
    assert not Path(pipe).exists()  # the private folder goes with the daemon
    assert len(said) == 1 and said[0].startswith("MPS: daemon started for the workers sharing GPU 0")
    # one client was started under the daemon on the shared GPU before any worker
    assert (fake_control.parent / "clients.log").read_text() == f"0 pipe={pipe}\n"
    for gpus in (["0", "1"], [None, None], []):
        with mps_for(gpus, said.append) as env:
            assert env == {}
    assert len(said) == 1 and len(fake_control.read_text().splitlines()) == 2


def test_mps_that_cannot_start_is_said_and_the_workers_run_without_it(fake_control, monkeypatch):
    # Rule: no control program, a daemon that refuses to start, HPO_MPS=off, or a daemon of the
    # user's own: the workers run as they are, and one line says which.
    from hpo.launch.mps import mps_for

    said: list[str] = []
    monkeypatch.setenv("HPO_FAKE_MPS_FAIL", "An MPS control daemon is already running")
    with mps_for(["0", "0"], said.append) as env:
        assert env == {}
    assert "not started (exit 1: An MPS control daemon is already running)" in said[-1]
    monkeypatch.setenv("HPO_MPS", "off")
    with mps_for(["0", "0"], said.append) as env:
        assert env == {}
    assert said[-1].startswith("MPS: off (HPO_MPS)")
    monkeypatch.delenv("HPO_MPS")
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", "/run/mps")
    with mps_for(["0", "0"], said.append) as env:
        assert env == {}
    assert said[-1] == "MPS: using the daemon of CUDA_MPS_PIPE_DIRECTORY=/run/mps"
    monkeypatch.delenv("CUDA_MPS_PIPE_DIRECTORY")
    monkeypatch.setenv("PATH", "/nonexistent")
    with mps_for(["0", "0"], said.append) as env:
        assert env == {}
    assert said[-1].startswith("MPS: not started (no nvidia-cuda-mps-control on PATH)")


def test_a_daemon_that_cannot_serve_a_client_is_stopped_and_workers_run_without_it(
        fake_control, monkeypatch):
    # Rule: a daemon that starts but under which no CUDA client can start (a GPU in a compute mode
    # MPS refuses, a container without its devices) would fail every worker: it is told to quit
    # before any worker starts, its folder goes with it, and one line says why.
    from hpo.launch.mps import mps_for

    why = "exit 1: cuDevicePrimaryCtxRetain: CUDA_ERROR_MPS_SERVER_NOT_READY (805)"
    monkeypatch.setenv("HPO_FAKE_MPS_CLIENT_FAIL", why)
    said: list[str] = []
    with mps_for(["0", "0"], said.append) as env:
        assert env == {}
    calls = fake_control.read_text().splitlines()
    assert calls[0].startswith("-d pipe=") and calls[1].endswith("stdin=quit") and len(calls) == 2
    assert not Path(calls[0].split("pipe=")[1].split()[0]).exists()
    assert said == [(f"MPS: not used (a CUDA client could not start under it, GPU 0: {why}); "
                     "the workers sharing a GPU take turns on it")]


def test_the_client_probe_says_why_in_one_line_where_there_is_no_cuda_driver(monkeypatch):
    # Rule: the real probe (a CUDA context through the driver, no JAX) answers '' only where a
    # client started; on this GPU-less machine it names the missing driver in one line.
    import ctypes.util

    from hpo.launch.mps import client_starts

    if ctypes.util.find_library("cuda"):
        pytest.skip("a CUDA driver is here: the probe's failure path needs a machine without one")
    why = client_starts("0", {})
    assert why.startswith("exit 1: no CUDA driver (") and "\n" not in why
