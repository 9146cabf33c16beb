"""A per-study lock held from a worker's budget check until its new trial is RUNNING.

    hpo launch search_spaces/quickstart.yaml --workers 6      # never more than n_trials finish

Without it, workers that look at the budget at the same moment all see room for one more trial
and all start one, overshooting n_trials by up to workers - 1. Under the lock the check and the
start are one step: the next worker's check counts the trial just started. PostgreSQL: a
transaction-scoped advisory lock on a connection of the storage's own pool (the server releases
it if the worker dies); SQLite: flock on the file `<database>-start.lock` beside it (the kernel
releases it if the worker dies). A holder that hangs (a frozen process) is waited for at most
`wait_s` (the study's grace period), then the worker goes on without the lock. Other storages
(the gRPC proxy, MySQL) take no lock: there the budget can still overshoot by up to
workers - 1 (docs/reliability.md).
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Callable
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import optuna
import sqlalchemy

from hpo.store.retry import retrying

_logger = logging.getLogger(__name__)

# pg_advisory_xact_lock(LOCK_CLASS, study id); 0x68706F is "hpo"
LOCK_CLASS = 0x68706F
SQLITE_SUFFIX = "-start.lock"
_LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL's SQLSTATE when lock_timeout passes
_FLOCK_POLL_S = 0.05

Release = Callable[[], None]


@contextmanager
def trial_start_lock(study: optuna.Study, wait_s: float) -> Iterator[Release]:
    """Holds the study's start lock inside the block; yields `release`, which frees it early
    (call it once the new trial is RUNNING) and may be called more than once.

    Args:
        study: the study whose trials start under the lock.
        wait_s: how long to wait for another holder before going on without the lock.

    Raises:
        sqlalchemy.exc.OperationalError: the database did not answer within the storage's retry
            window (transient: the worker reports it as a lost storage).
    """
    storage = getattr(study._storage, "_backend", study._storage)  # under Optuna's cache
    engine = getattr(storage, "engine", None)
    dialect = engine.dialect.name if engine is not None else None
    release: Release | None = _nothing
    if dialect == "postgresql":
        conn = _pg_lock(storage, study._study_id, wait_s)
        release = None if conn is None else lambda: _pg_release(conn)
    elif dialect == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        fd = _flock(engine.url.database + SQLITE_SUFFIX, wait_s)
        release = None if fd is None else lambda: os.close(fd)  # its only descriptor: unlocks
    if release is None:
        _logger.warning("study %s: another worker held the start lock for %.0f s (frozen?); "
                        "starting a trial without it", study.study_name, wait_s)
        release = _nothing
    done = False

    def release_once() -> None:
        nonlocal done
        if not done:
            done = True
            release()

    try:
        yield release_once
    finally:
        release_once()


def _nothing() -> None:
    pass


def _pg_lock_once(storage: Any, study_id: int, wait_s: float) -> sqlalchemy.Connection | None:
    conn = storage.engine.connect()
    try:
        conn.execute(sqlalchemy.text("SELECT set_config('lock_timeout', :t, true)"),
                     {"t": f"{max(1, int(wait_s * 1000))}ms"})
        conn.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:c, :s)"),
                     {"c": LOCK_CLASS, "s": study_id})
    except sqlalchemy.exc.OperationalError as exc:
        if getattr(exc.orig, "sqlstate", None) != _LOCK_NOT_AVAILABLE:
            conn.invalidate()
            conn.close()
            raise
        conn.close()  # rolls the failed transaction back
        return None
    except BaseException:
        conn.invalidate()
        conn.close()
        raise
    return conn


# A connection lost while waiting (a restart, pg_terminate_backend) is retried like storage calls.
_pg_lock = retrying(_pg_lock_once, lambda storage: float(getattr(storage, "retry_window_s", 0)))


def _pg_release(conn: sqlalchemy.Connection) -> None:
    try:
        conn.rollback()  # ends the transaction, and with it the lock
    except sqlalchemy.exc.SQLAlchemyError:
        conn.invalidate()  # its session is gone, and the lock with it
    finally:
        conn.close()


def _flock(path: str, wait_s: float) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    deadline = time.monotonic() + wait_s
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() > deadline:
                    break
                time.sleep(_FLOCK_POLL_S)
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return None
