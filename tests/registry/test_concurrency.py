"""Promotes at once, as separate processes, on SQLite and on a PostgreSQL-backed `mlflow server`:
one version per run, and the alias on the better model."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests._registry import BAD
from tests._registry import Registry
from tests._registry import run_study
from tests._servers import mlflow_server

pytestmark = pytest.mark.slow

LOCK_SCRIPT = textwrap.dedent("""
    import sys, time
    from mlflow import MlflowClient
    from hpo.registry.lock import registry_lock
    from hpo.tracking.retry import RetryingClient
    uri, log, me = sys.argv[1:]
    client = RetryingClient(MlflowClient(uri), uri, 60)
    with registry_lock(client, "locked"):
        with open(log, "a") as f:
            f.write(f"in {me}\\n")
        time.sleep(1.0)
        with open(log, "a") as f:
            f.write(f"out {me}\\n")
""")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "HPO_"))}
    return {**env, "HPO_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


def _at_once(cwd: Path, argvs: list[list[str]]) -> list[subprocess.CompletedProcess]:
    procs = [subprocess.Popen(a, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for a in argvs]
    done = []
    for p, a in zip(procs, argvs, strict=True):
        out, err = p.communicate(timeout=600)
        done.append(subprocess.CompletedProcess(a, p.returncode, out, err))
    return done


def _promote(reg: Registry, study: str, name: str) -> list[str]:
    return [sys.executable, "-m", "hpo", "promote", study, "--model", name, "--storage", reg.storage_url,
            "--tracking-uri", reg.tracking_uri]


def _lock_holders_never_overlap(tracking_uri: str, tmp_path: Path) -> None:
    log = tmp_path / "lock.log"
    runs = _at_once(tmp_path, [[sys.executable, "-c", LOCK_SCRIPT, tracking_uri, str(log), str(i)] for i in range(3)])
    assert all(r.returncode == 0 for r in runs), [r.stderr[-2000:] for r in runs]
    lines = log.read_text().split()
    events = list(zip(lines[::2], lines[1::2], strict=True))
    assert len(events) == 6
    for enter, leave in zip(events[::2], events[1::2], strict=True):  # in i, out i, in j, out j, ...
        assert enter[0] == "in" and leave == ("out", enter[1])
    assert "locked.promote-lock" not in [m.name for m in MlflowClient(tracking_uri).search_registered_models()]


def _race(reg: Registry, good: str, bad: str, name: str) -> None:
    """Two promotes of `good` and one of `bad` at once: one version per run, champion = good's."""
    runs = _at_once(reg.cwd, [_promote(reg, good, name), _promote(reg, bad, name), _promote(reg, good, name)])
    assert all(r.returncode == 0 for r in runs), [r.stderr[-2000:] for r in runs]
    client = MlflowClient(reg.tracking_uri)
    versions = client.search_model_versions(f"name='{name}'")
    by_study = sorted(v.tags["hpo.study"] for v in versions)
    assert by_study == sorted([good, bad])  # no duplicate of the study promoted twice
    champion = client.get_model_version_by_alias(name, "champion")
    assert champion.tags["hpo.study"] == good


@pytest.mark.e2e
def test_promotes_at_once_on_sqlite(registry, bad_study, tmp_path):
    # Rule: the lock admits one process at a time; three promotes at once (one study twice, a
    # worse study once) leave one version per run and the alias on the better one.
    _lock_holders_never_overlap(registry.tracking_uri, tmp_path)
    _race(registry, registry.study, bad_study, "race-sqlite")


@pytest.fixture()
def pg_tracking(tmp_path):
    """A throwaway PostgreSQL database behind a real `mlflow server`; yields the server's URL."""
    from tests._postgres import admin_conninfo_or_skip
    from tests._postgres import admin_execute

    info = admin_conninfo_or_skip()
    user = info.split("user=")[1].split()[0]
    db = f"hpo_promote_race_{os.getpid()}"
    admin_execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    admin_execute(f'CREATE DATABASE "{db}"')
    try:
        with mlflow_server(tmp_path / "server", backend_store_uri=f"postgresql+psycopg://{user}@127.0.0.1:5432/{db}") as url:
            yield url
    finally:
        admin_execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


@pytest.mark.postgres
@pytest.mark.e2e
def test_promotes_at_once_on_a_postgresql_backed_mlflow_server(pg_tracking, tmp_path):
    # Rule: as on SQLite, against `mlflow server` with a PostgreSQL store.
    from tests.conftest import make_signal_data
    from tests.conftest import write_h5

    write_h5(tmp_path / "signal.h5", make_signal_data(300))
    reg = Registry(tmp_path, f"sqlite:///{tmp_path / 'hpo.db'}", pg_tracking, "good", "")
    run_study(reg, "good")
    run_study(reg, "worse", base=BAD)
    _lock_holders_never_overlap(pg_tracking, tmp_path)
    _race(reg, "good", "worse", "race-pg")
