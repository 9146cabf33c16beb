"""Bounded retries of MLflow calls: a tracking server away for seconds costs no trial.

    HPO_TRACKING_RETRY_S=120 hpo worker --study dropout --storage ... --tracking-uri http://mlflow:5000

Every call a Tracker makes goes through a RetryingClient: a call that fails because the server
cannot be reached (connection refused or reset, timeout, HTTP 429/5xx, a dropped database
connection) is retried with exponential backoff (0.5 s doubling to 15 s) for up to
`window_s` seconds. When the window runs out the call raises TrackingUnavailable, a TrialFailed:
the running trial fails with that reason and the worker goes on. Until a call succeeds again,
later calls try once without waiting, so that a trial's clean-up does not wait a second window.
A refused login (HTTP 401/403) is never retried: it raises TrackingError naming the user and
the environment variables to fix.

A worker whose trial failed that way waits for the server before its next trial
(`RetryingClient.wait_until_up`), with backoff, for at most HPO_TRACKING_WAIT_S seconds (default
1800), saying so in its log; a server away for longer stops the worker with one line.

MLflow's own HTTP client retries for minutes (MLFLOW_HTTP_REQUEST_MAX_RETRIES, default 7 with
backoff); a Tracker for an http(s) server sets it to 0 unless the user set it, so that this
module alone decides how long a call may take.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.exceptions import RestException

from hpo.backoff import Backoff
from hpo.errors import first_line
from hpo.errors import TrackingError
from hpo.errors import TrialFailed
from hpo.redact import redact

_logger = logging.getLogger(__name__)

RETRY_WINDOW_S = 120.0  # default seconds a call keeps retrying; HPO_TRACKING_RETRY_S overrides
WAIT_LIMIT_S = 1800.0  # default seconds a worker waits for a server gone away; HPO_TRACKING_WAIT_S
FIRST_DELAY_S = 0.5
MAX_DELAY_S = 15.0
WAIT_FIRST_DELAY_S, WAIT_MAX_DELAY_S = 1.0, 15.0  # polls of a worker waiting for the server
_TRANSIENT_CODES = {"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED"}
_TRANSIENT_HTTP = {408, 429, 500, 502, 503, 504}
_AUTH_CODES = {"UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403}


class TrackingUnavailable(TrackingError, TrialFailed):
    """The tracking server did not answer within the retry window; fails the running trial."""


def default_window_s() -> float:
    """HPO_TRACKING_RETRY_S if set (seconds, >= 0), else RETRY_WINDOW_S.

    Raises:
        TrackingError: HPO_TRACKING_RETRY_S is not a number >= 0.
    """
    return _seconds_from_env("HPO_TRACKING_RETRY_S", RETRY_WINDOW_S)


def default_wait_s() -> float:
    """HPO_TRACKING_WAIT_S if set (seconds, >= 0), else WAIT_LIMIT_S.

    Raises:
        TrackingError: HPO_TRACKING_WAIT_S is not a number >= 0.
    """
    return _seconds_from_env("HPO_TRACKING_WAIT_S", WAIT_LIMIT_S)


def _seconds_from_env(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value < 0:
        raise TrackingError(f"{name} must be a number of seconds >= 0, got {raw!r}")
    return value


def is_transient(exc: BaseException) -> bool:
    """True for errors a later attempt may cure: no connection, timeout, 429/5xx, lost database."""
    import requests
    import sqlalchemy.exc

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:  # MLflow wraps the cause, or chains it
        seen.add(id(current))
        if isinstance(current, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                                ConnectionError, TimeoutError, sqlalchemy.exc.OperationalError)):
            return True
        current = current.__cause__ or current.__context__
    if not isinstance(exc, MlflowException) or exc.error_code in _AUTH_CODES:
        return False
    if exc.error_code in _TRANSIENT_CODES:
        return True
    if isinstance(exc, RestException):  # the server answered: only its overload statuses
        return exc.get_http_status_code() in _TRANSIENT_HTTP
    text = str(exc)
    status = re.search(r"failed with error code (\d{3})", text)  # a proxy's non-JSON answer
    if status:
        return int(status.group(1)) in _TRANSIENT_HTTP
    # MLflow's HTTP client turns any requests error, its own retries used up included, into this.
    return text.startswith("API request to ") and "failed with exception" in text


def auth_error(exc: BaseException, uri: str) -> TrackingError | None:
    """A one-line TrackingError for a refused login (401) or permission (403), else None."""
    if not isinstance(exc, MlflowException) or exc.error_code not in _AUTH_CODES:
        return None
    user, uri = os.environ.get("MLFLOW_TRACKING_USERNAME"), redact(uri)
    if _AUTH_CODES[exc.error_code] == 401:
        who = f"the credentials of user {user!r}" if user else "requests without credentials"
        return TrackingError(
            f"MLflow tracking at {uri} refused {who} (HTTP 401): set MLFLOW_TRACKING_USERNAME "
            "and MLFLOW_TRACKING_PASSWORD to a user and password of that server"
        )
    return TrackingError(
        f"MLflow tracking at {uri}: user {user!r} lacks a permission (HTTP 403): "
        f"{first_line(exc)}; ask the server's admin for EDIT on the experiment, or use another user"
    )


class RetryingClient:
    """An MlflowClient whose every method is retried on transient errors for `window_s` seconds.

    Args:
        client: the MlflowClient to wrap.
        uri: its tracking URI, for messages.
        window_s: seconds a call keeps retrying (0: one attempt).
        clock, sleep: time.monotonic and time.sleep, replaced by a test's fake clock.
    """

    def __init__(
        self,
        client: Any,
        uri: str,
        window_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client, self._uri, self.window_s = client, redact(uri), window_s
        self._clock, self._sleep = clock, sleep
        self._down: str | None = None  # why the last window ran out; cleared by any success

    @property
    def raw(self) -> Any:
        """The wrapped MlflowClient, for calls that must not wait (a health check)."""
        return self._client

    @property
    def down(self) -> str | None:
        """Why the last window ran out (the server is away); None once a call succeeded."""
        return self._down

    def wait_until_up(
        self,
        limit_s: float,
        *,
        check: Callable[[], None] = lambda: None,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> float:
        """Blocks until the server answers a one-experiment search, trying with backoff (1 s
        doubling to 15 s) for at most `limit_s` seconds; says so in the log.

        Args:
            limit_s: the longest wait (HPO_TRACKING_WAIT_S for a worker); 0: one attempt.
            check: called before each attempt (a worker's stop check, which may raise).
            clock, sleep: the client's (time.monotonic and time.sleep unless it was given others).

        Returns:
            The seconds waited.

        Raises:
            TrackingError: the server did not answer within `limit_s`.
        """
        backoff = Backoff(limit_s, WAIT_FIRST_DELAY_S, WAIT_MAX_DELAY_S, clip=True,
                          clock=clock or self._clock, sleep=sleep or self._sleep)
        told = False
        while True:
            check()
            try:
                self._client.search_experiments(max_results=1)
            except Exception as exc:
                self._unless_transient(exc)
                self._down = first_line(exc)
            else:
                waited = backoff.elapsed()
                if told:
                    _logger.warning("MLflow tracking at %s answers again after %.0f s; going on",
                                    self._uri, waited)
                self._down = None
                return waited
            delay = backoff.next_delay()
            if delay is None:
                raise TrackingError(
                    f"MLflow tracking at {self._uri} did not answer for {limit_s:.0f} s "
                    f"(HPO_TRACKING_WAIT_S): {self._down}; this worker stops; bring the server "
                    "back and start the worker again"
                )
            if not told:
                _logger.warning(
                    "MLflow tracking at %s is away (%s); waiting for it up to %.0f s "
                    "(HPO_TRACKING_WAIT_S) before the next trial", self._uri, self._down, limit_s)
                told = True
            backoff.sleep(delay)

    def _unless_transient(self, exc: Exception) -> None:
        """Re-raises `exc` unless it is worth retrying: a refused login as TrackingError."""
        refused = auth_error(exc, self._uri)
        if refused is not None:
            raise refused from None
        if not is_transient(exc):
            raise exc

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """fn(*args, **kwargs), retried on transient errors.

        Raises:
            TrackingUnavailable: the server stayed unreachable for the whole window.
            TrackingError: the server refused the login or a permission.
        """
        window = 0.0 if self._down else self.window_s
        backoff = Backoff(window, FIRST_DELAY_S, MAX_DELAY_S, clock=self._clock, sleep=self._sleep)
        attempt = 0
        while True:
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                self._unless_transient(exc)
                attempt += 1
                delay = backoff.next_delay()
                if delay is None:
                    self._down = first_line(exc)
                    raise TrackingUnavailable(
                        f"MLflow tracking at {self._uri} did not answer {what} for "
                        f"{window:.0f} s ({attempt} attempts): {self._down}; bring the server back "
                        "or point --tracking-uri / MLFLOW_TRACKING_URI at a running one "
                        "(HPO_TRACKING_RETRY_S sets how long to wait)"
                    ) from exc
                _logger.warning("MLflow %s failed (%s); retry %d in %.1f s",
                                what, first_line(exc), attempt, delay)
                backoff.sleep(delay)
            else:
                if self._down:
                    _logger.warning("MLflow tracking at %s answers again", self._uri)
                self._down = None
                return result

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def retried(*args: Any, **kwargs: Any) -> Any:
            return self.call(name, attr, *args, **kwargs)

        retried.__name__ = name
        return retried


__all__ = [
    "RetryingClient", "TrackingUnavailable", "auth_error", "default_wait_s", "default_window_s",
    "is_transient",
]
