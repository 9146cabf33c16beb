"""The local PostgreSQL server of the tests (127.0.0.1:5432, trust auth): its maintenance
database, fresh databases, terminated connections, a restart. The `pg_url` fixture (tests/conftest.py)
gives a test module a database of its own; without a server, the tests that need one skip."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

PG_HOST, PG_PORT = "127.0.0.1", 5432
PG_USERS = ("postgres", "root")
PG_RESTART = "pg_ctlcluster --skip-systemctl-redirect {version} main restart"


def admin_conninfo() -> str | None:
    """A libpq conninfo for the maintenance database, or None when no server answers."""
    import psycopg

    for user in PG_USERS:
        info = f"host={PG_HOST} port={PG_PORT} user={user} dbname=postgres connect_timeout=3"
        try:
            with psycopg.connect(info):
                return info
        except psycopg.Error:
            continue
    return None


def admin_execute(sql: str, params: tuple = (), *, wait_s: float = 60.0) -> list[tuple]:
    """Runs `sql` on the maintenance database, retrying while the server (re)starts."""
    import psycopg

    info = admin_conninfo_or_skip()
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with psycopg.connect(info, autocommit=True) as conn:
                cur = conn.execute(sql, params)
                return cur.fetchall() if cur.description else []
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def admin_conninfo_or_skip() -> str:
    info = admin_conninfo()
    if info is None:
        pytest.skip(
            f"no PostgreSQL server answers on {PG_HOST}:{PG_PORT} "
            "(trust auth, user postgres or root)"
        )
    return info


@contextmanager
def fresh_database(name: str) -> Iterator[str]:
    """A new, empty PostgreSQL database `name` (lower case), dropped afterwards; yields its URL.
    Skips where no server answers."""
    from tests._workers import close_polling_storage

    info = admin_conninfo_or_skip()
    user = info.split("user=")[1].split()[0]
    admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin_execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://{user}@{PG_HOST}:{PG_PORT}/{name}"
    try:
        yield url
    finally:
        close_polling_storage(url)
        admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def db_name(url: str) -> str:
    return url.rsplit("/", 1)[-1]


def terminate_backends(url: str) -> int:
    """Ends every connection to the database of `url`; returns how many were ended."""
    rows = admin_execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid()",
        (db_name(url),),
    )
    return sum(1 for (ok,) in rows if ok)


def restart_postgres() -> None:
    """Restarts the local cluster (every connection drops) and waits until it answers again."""
    (version,) = os.listdir("/etc/postgresql")
    cmd = PG_RESTART.format(version=version).split()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed: {proc.stderr.strip()}"
    admin_execute("SELECT 1", wait_s=60)


def ensure_postgres_running() -> None:
    """Starts the local cluster if a test left it stopped."""
    if admin_conninfo() is None and os.path.isdir("/etc/postgresql"):
        (version,) = os.listdir("/etc/postgresql")
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],
            check=False,
            capture_output=True,
            timeout=120,
        )
