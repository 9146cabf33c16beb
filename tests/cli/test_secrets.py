"""Passwords in the storage and tracking URLs stay off command lines, terminals and stores."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from hpo.errors import HpoError
from hpo.keys import TRACKING_URI_KEY
from hpo.redact import redact
from hpo.study.create import store_tracking_uri
from hpo.study.create import stored_tracking_uri
from tests._postgres import PG_HOST
from tests._postgres import PG_PORT
from tests._postgres import admin_conninfo_or_skip
from tests._postgres import admin_execute
from tests._workers import clean_env
from tests._workers import hpo_cmd
from tests._workers import write_study_files

SECRET = "s3cret-4b7e"  # no other text holds it; PostgreSQL's trust auth ignores it


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------- error lines
@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+psycopg://root@127.0.0.1:{{port}}/db?password={SECRET}",
        f"postgresql+psycopg://me@lab:{SECRET}@127.0.0.1:{{port}}/db",  # an '@' in the user
        f"postgresql+psycopg://root:{SECRET}@127.0.0.1:{{port}}/db?sslmode=disable",
        f"root:{SECRET}@127.0.0.1:{{port}}/db",  # no scheme: SQLAlchemy cannot parse it
    ],
)
def test_a_storage_that_fails_is_named_without_its_password(tmp_path, url):
    # Rule: `hpo status` on a storage it cannot open prints one line naming the storage, with
    # the password masked wherever the URL holds it.
    proc = hpo_cmd(tmp_path, "status", "--storage", url.format(port=_closed_port()), timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "hpo: error: cannot open study storage " in proc.stderr
    assert SECRET not in proc.stdout + proc.stderr and "***" in proc.stderr


@pytest.mark.slow
def test_a_tracking_server_that_fails_is_named_without_its_password(tmp_path):
    # Rule: an unreachable MLflow server is named in the launch's one error line, password masked.
    write_study_files(tmp_path, "deadml", n_trials=1)
    uri = f"http://ann:{SECRET}@127.0.0.1:{_closed_port()}"
    proc = hpo_cmd(tmp_path, "launch", "space.yaml", "--workers", "0", "--storage",
                   "sqlite:///hpo.db", "--tracking-uri", uri, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "is unreachable" in proc.stderr and redact(uri) in proc.stderr
    assert SECRET not in proc.stdout + proc.stderr


def test_the_probe_reaches_a_server_whose_uri_holds_credentials():
    # Rule: a user:password in an http tracking URI (MLflow's client sends it as basic auth) does
    # not stop the preflight probe: it asks the server, not a host named `user:password@...`.
    import http.server
    import threading

    from hpo.tracking.preflight import probe_tracking

    seen = []

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            seen.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        probe_tracking(f"http://ann:{SECRET}@127.0.0.1:{server.server_address[1]}/")
    finally:
        server.shutdown()
    assert seen == ["/health"]


# ---------------------------------------------------------------------------- the stored URI
def test_a_stored_tracking_uri_with_a_secret_is_kept_redacted_and_never_used(tmp_path):
    # Rule: the study keeps its tracking URI redacted; a redacted one is never used to connect:
    # whoever would fall back on it is told to give the URI instead. One without a secret is
    # kept whole and used.
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    study = optuna.create_study(study_name="s", storage=storage)
    uri = f"postgresql+psycopg://root:{SECRET}@db:5432/mlflow"
    store_tracking_uri(study, uri)
    assert study.user_attrs[TRACKING_URI_KEY] == "postgresql+psycopg://root:***@db:5432/mlflow"
    assert SECRET.encode() not in (tmp_path / "hpo.db").read_bytes()
    with pytest.raises(HpoError, match=r"root:\*\*\*@db.*give --tracking-uri or set MLFLOW_TR"):
        stored_tracking_uri(study)
    assert stored_tracking_uri(study, instead="http://other:5000") == "http://other:5000"
    store_tracking_uri(study, "http://mlflow:5000")
    assert stored_tracking_uri(study) == "http://mlflow:5000"


# ---------------------------------------------------------------------------- a real launch
@pytest.fixture
def pg_dbs():
    """Two fresh PostgreSQL databases (Optuna, MLflow), as (user, optuna db, mlflow db)."""
    info = admin_conninfo_or_skip()
    user = info.split("user=")[1].split()[0]
    names = [f"hpo_secrets_{kind}_{os.getpid()}" for kind in ("optuna", "mlflow")]
    for name in names:
        admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin_execute(f'CREATE DATABASE "{name}"')
    try:
        yield user, *names
    finally:
        for name in names:
            admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _descendants(root: int) -> list[int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [root]
    while frontier:
        children = [p for p, pp in parents.items() if pp in frontier]
        found += children
        frontier = children
    return found


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError:  # the process exited meanwhile
        return b""


def _shown(cmdline: bytes) -> str:
    return cmdline.replace(b"\0", b" ").decode(errors="replace")[:100]


def _database_text(db: str) -> str:
    """Every row of every table of `db`, as text."""
    import psycopg

    info = admin_conninfo_or_skip().replace("dbname=postgres", f"dbname={db}")
    with psycopg.connect(info) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT quote_ident(table_name) FROM information_schema.tables "
            "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'")]
        return "\n".join(
            str(row[0]) for t in tables for row in conn.execute(f"SELECT t::text FROM {t} t")
        )


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.e2e  # a whole launch on two PostgreSQL stores: in `make test-e2e`
def test_a_launch_keeps_its_passwords_off_argv_output_and_stores(tmp_path, pg_dbs):
    # Rule: `hpo launch` with passwords in --storage and --tracking-uri hands them to its
    # workers in their environment, never on their command lines (/proc/PID/cmdline is readable
    # by every user); nothing it prints, and nothing stored in the study or the MLflow store
    # (study attributes, the parent run's params and tags, artifacts), holds them.
    user, optuna_db, mlflow_db = pg_dbs
    storage = f"postgresql+psycopg://{user}:{SECRET}@{PG_HOST}:{PG_PORT}/{optuna_db}"
    tracking = f"postgresql+psycopg://{user}@{PG_HOST}:{PG_PORT}/{mlflow_db}?password={SECRET}"
    write_study_files(tmp_path, "secrets", n_trials=2)
    log = tmp_path / "launch.log"
    with log.open("w") as out:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "hpo", "launch", "space.yaml", "--workers", "2",
             "--storage", storage, "--tracking-uri", tracking],
            cwd=tmp_path, env=clean_env(), stdout=out, stderr=subprocess.STDOUT,
        )
        own = _read(f"/proc/{launcher.pid}/cmdline")
        cmdlines: dict[int, bytes] = {}
        environ: dict[int, bytes] = {}
        parents: dict[int, int] = {}
        deadline = time.monotonic() + 600
        while launcher.poll() is None and time.monotonic() < deadline:
            for pid in _descendants(launcher.pid):
                cmdline = _read(f"/proc/{pid}/cmdline")
                if cmdline and cmdline != own and pid not in cmdlines:  # own: forked, not exec'd
                    cmdlines[pid], environ[pid] = cmdline, _read(f"/proc/{pid}/environ")
                    stat = _read(f"/proc/{pid}/stat")
                    parents[pid] = int(stat.rsplit(b")", 1)[1].split()[1]) if stat else 0
            time.sleep(0.1)
        if launcher.poll() is None:
            launcher.kill()
        assert launcher.wait() == 0, log.read_text()[-3000:]

    # The launcher's own children; a worker's child caught between fork and exec shows the
    # worker's command line too.
    workers = [pid for pid, c in cmdlines.items()
               if b"\0worker\0" in c and parents.get(pid) == launcher.pid]
    assert len(workers) == 2, cmdlines
    printed = log.read_text()
    assert "2/2 trials done" in printed
    status = hpo_cmd(tmp_path, "status", "secrets", "--storage", storage)
    assert status.returncode == 0 and "COMPLETE" in status.stdout
    study = optuna.load_study(study_name="secrets", storage=storage)
    assert all(t.state.name == "COMPLETE" for t in study.trials)
    optuna_rows, mlflow_rows = _database_text(optuna_db), _database_text(mlflow_db)
    assert "mlflow_tracking_uri" in optuna_rows and "study-secrets" in mlflow_rows
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "search_space.yaml" for p in files)

    # Where the secret shows, all at once.
    places = {
        **{f"argv of {pid}: {_shown(c)}": c for pid, c in cmdlines.items()},
        "launch output": printed.encode(),
        "hpo status output": (status.stdout + status.stderr).encode(),
        "study and trial attributes": optuna_rows.encode(),
        "MLflow store (runs, params, tags)": mlflow_rows.encode(),
        **{f"file {p.relative_to(tmp_path)}": p.read_bytes() for p in files},
    }
    leaks = [where for where, text in places.items() if SECRET.encode() in text]
    assert not leaks, "\n".join(leaks)
    assert f"in {redact(storage)};" in printed and f"MLflow: {redact(tracking)}," in printed
    assert study.user_attrs[TRACKING_URI_KEY] == redact(tracking)
    # The launcher's environment (clean_env) has neither: it put them in its workers'.
    for pid in workers:
        assert f"HPO_STORAGE={storage}\0".encode() in environ[pid]
        assert f"MLFLOW_TRACKING_URI={tracking}\0".encode() in environ[pid]
