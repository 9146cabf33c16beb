"""Studies run as a user runs them, shared by the launch, store, tracking, study and cli tests:
tiny spaces, `hpo` and `hpo worker` subprocesses, and looks at their trials and runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import make_signal_data
from tests.conftest import write_h5

TINY = {
    "model": {"conv_blocks": [[4], [4]], "pool": {"size": 2}, "dense": [16]},
    "train": {"epochs": 3, "batch_size": 32, "optimizer": {"learning_rate": 3e-3}},
}


_POLLING: dict[str, Any] = {}


def polling_storage(url: Any) -> Any:
    """The tests' one storage per URL for looking at trials. Without a pool: each look opens and
    closes its own connection, so polling holds no connection between looks (a storage per look
    left one open until garbage collection, and a long wait ran the server out of its 100) and
    survives terminated backends and a restarted server."""
    import optuna
    from sqlalchemy.pool import NullPool

    if not isinstance(url, str):  # a storage the test opened itself
        return url
    if url not in _POLLING:
        _POLLING[url] = optuna.storages.RDBStorage(url, engine_kwargs={"poolclass": NullPool})
    return _POLLING[url]


def close_polling_storage(url: str) -> None:
    """Lets go of the polling storage of `url` (before its database is dropped)."""
    if url in _POLLING:
        _POLLING.pop(url).engine.dispose()


# ---------------------------------------------------------------------------- spaces and workers
def write_study_files(
    cwd: Path,
    name: str,
    *,
    n_trials: int | None,
    n_data: int = 200,
    base: dict | None = None,
    params: dict | None = None,
    **study: Any,
) -> Path:
    """signal.h5 and space.yaml in `cwd`: a tiny study; `study` adds StudySpec fields."""
    write_h5(cwd / "signal.h5", make_signal_data(n_data))
    budget = {} if n_trials is None else {"n_trials": n_trials}
    space = {
        "study": {
            "name": name,
            **budget,
            "sampler": {"type": "random", "seed": 0},
            "pruner": {"type": "none"},
            **study,
        },
        "data": {"path": "signal.h5"},
        "base": base or TINY,
        "params": params or {"model.dropout.rate": {"float": [0.0, 0.2], "step": 0.1}},
    }
    path = cwd / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "HPO_", "CUDA_"))}
    return {**env, "HPO_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}


def hpo_cmd(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hpo", *args],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_hpo(
    cwd: Path, *args: str, log: str, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """`hpo ARGS` in the background, output in cwd/log; `env` adds variables."""
    out = open(cwd / log, "w")  # noqa: SIM115  closed with the process
    return subprocess.Popen(
        [sys.executable, "-m", "hpo", *args],
        cwd=cwd,
        env={**clean_env(), **(env or {})},
        stdout=out,
        stderr=subprocess.STDOUT,
    )


def start_worker(
    cwd: Path, study: str, storage: str, log: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """`hpo worker` of `study` (ARGS added), logging to cwd/mlflow.db."""
    return start_hpo(
        cwd,
        "worker",
        "--study",
        study,
        "--storage",
        storage,
        "--tracking-uri",
        f"sqlite:///{cwd / 'mlflow.db'}",
        *args,
        log=log,
        env=env,
    )


def wait_for(predicate: Any, timeout: float, what: str, poll: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def running_trial_of(
    storage_url: str, study: str, pid: int, need_run: bool = True, need_epoch: bool = False
) -> Any:
    """The RUNNING trial of worker `pid` once it has started its MLflow run (and with
    `need_epoch`, finished an epoch: it is training), else None."""
    import optuna

    s = optuna.load_study(study_name=study, storage=polling_storage(storage_url))
    for t in s.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if (
            str(t.user_attrs.get("worker", "")).endswith(f":{pid}")
            and (not need_run or "mlflow_run_id" in t.user_attrs)
            and (not need_epoch or t.intermediate_values)
        ):
            return t
    return None


def finish(proc: subprocess.Popen, timeout: float, log: Path) -> int:
    """Waits for `proc`; on timeout kills it; the assertion message carries its log."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        raise AssertionError(
            f"{log.name} did not finish in {timeout:.0f} s:\n{log.read_text()[-3000:]}"
        ) from None


def trials_of(storage_url: str, study: str) -> list:
    import optuna

    return optuna.load_study(study_name=study, storage=polling_storage(storage_url)).get_trials()


def mlflow_client(cwd: Path) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")


def create_study(cwd: Path, storage_url: str) -> None:
    """`hpo launch space.yaml --workers 0` in this process (TensorFlow imported once a session)."""
    import contextlib

    from hpo.launch.launcher import launch

    with contextlib.chdir(cwd):
        launch(
            "space.yaml",
            workers=0,
            storage_url=storage_url,
            tracking_uri=f"sqlite:///{cwd / 'mlflow.db'}",
            echo=lambda line: None,
        )


def store_space(cwd: Path, storage_url: str, study: str, **changes: Any) -> None:
    """Stores cwd/space.yaml with `changes` (top-level sections) as the space of `study`, past
    `hpo launch`'s checks: a study created by a version that did not refuse such a space."""
    import optuna

    from hpo.config.space import parse_space
    from hpo.keys import SPACE_KEY
    from hpo.study.create import stored_space

    raw = {**yaml.safe_load((cwd / "space.yaml").read_text()), **changes}
    space = parse_space(raw, source="space.yaml")
    stored = optuna.load_study(study_name=study, storage=storage_url)
    stored.set_user_attr(SPACE_KEY, stored_space(space))


def assert_interrupted_and_requeued(
    cwd: Path, storage: str, study: str, stopped: list, reason: str = "interrupted",
    *, others_running: bool = False,
) -> None:
    """Each trial in `stopped` ended FAIL with `reason`, its MLflow run (cwd/mlflow.db) KILLED,
    and one WAITING copy with its parameters is queued; unless `others_running`, no trial is
    RUNNING."""
    from optuna.trial import TrialState

    trials = trials_of(storage, study)
    client = mlflow_client(cwd)
    for lost in stopped:
        t = next(t for t in trials if t.number == lost.number)
        assert t.state == TrialState.FAIL and t.user_attrs["fail_reason"] == reason, t
        copies = [c for c in trials if c.system_attrs.get("failed_trial") == lost.number]
        assert [(c.state, c.params) for c in copies] == [(TrialState.WAITING, lost.params)]
        run = client.get_run(lost.user_attrs["mlflow_run_id"])
        assert run.info.status == "KILLED" and run.data.tags["hpo.fail_reason"] == reason
    assert others_running or "RUNNING" not in [t.state.name for t in trials]
