"""Retries of storage calls on transient database errors (a dropped connection, a restart).

    hpo worker --study dropout --storage postgresql+psycopg://USER:PASSWORD@HOST/DB

A worker's connection can be terminated (pg_terminate_backend, a failover, a restart) between
or during its storage calls. The engine's pre-ping replaces dead pooled connections; a call
that fails anyway with a connection-level error is retried with backoff for up to
`retry_window_s` seconds, so that the worker and its running trial carry on once the
database answers again.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any
from typing import TypeVar

import optuna
import sqlalchemy.exc

from hpo.backoff import Backoff
from hpo.errors import first_line

_logger = logging.getLogger(__name__)

RETRY_WINDOW_S = 120.0  # how long a call keeps retrying before the error reaches the worker
_FIRST_DELAY_S = 0.25
_MAX_DELAY_S = 8.0

F = TypeVar("F", bound=Callable[..., Any])


def is_transient(exc: BaseException) -> bool:
    """True for errors that a new connection may cure: lost connection, server restarting, lock.

    Optuna wraps SQLAlchemy errors raised inside a session in StorageInternalError; the cause
    decides.
    """
    if isinstance(exc, optuna.exceptions.StorageInternalError) and exc.__cause__ is not None:
        exc = exc.__cause__
    if isinstance(exc, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
        return True
    # A connection lost inside a session that Optuna then reused ("falling back to a slower
    # alternative") leaves the session needing a rollback: a fresh session cures it.
    if isinstance(exc, sqlalchemy.exc.PendingRollbackError):
        return True
    return isinstance(exc, sqlalchemy.exc.DBAPIError) and bool(exc.connection_invalidated)


def retrying(
    method: F,
    window_s: Callable[[Any], float],
    settle: Callable[..., Any] | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> F:
    """`method` retried with exponential backoff while it raises transient errors.

    Args:
        method: an unbound storage method.
        window_s: gives, from the storage instance, the seconds to keep retrying.
        settle: called as settle(storage, exc, *args, **kwargs) when a retry (not the first
            attempt) raises a non-transient error, which may mean the first attempt's commit
            landed before its connection dropped; returns the call's result or re-raises.
        clock, sleep: time.monotonic and time.sleep, replaced by a test's fake clock.
    """

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        backoff = Backoff(window_s(self), _FIRST_DELAY_S, _MAX_DELAY_S, clock=clock, sleep=sleep)
        attempt = 0
        while True:
            try:
                return method(self, *args, **kwargs)
            except Exception as exc:
                if not is_transient(exc):
                    if attempt and settle is not None:
                        return settle(self, exc, *args, **kwargs)
                    raise
                delay = backoff.next_delay()
                if delay is None:
                    raise
                attempt += 1
                cause = exc.__cause__ or exc
                _logger.warning(
                    "storage call %s failed (%s); retry %d in %.1f s",
                    method.__name__,
                    first_line(cause, 200),
                    attempt,
                    delay,
                )
                _discard_session(self)
                backoff.sleep(delay)

    return wrapper  # type: ignore[return-value]


def _discard_session(storage: Any) -> None:
    """Drops the thread's SQLAlchemy session of an RDB storage, so the retry starts clean."""
    scoped = getattr(storage, "scoped_session", None)
    if scoped is not None:
        try:
            scoped.remove()
        except sqlalchemy.exc.SQLAlchemyError:  # the broken session may refuse a clean close
            pass
