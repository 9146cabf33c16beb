"""Checks before any trial starts: the MLflow tracking server answers, within seconds.

    hpo launch search_spaces/dropout.yaml --tracking-uri http://127.0.0.1:5000

MLflow's HTTP client retries a dead server with backoff for minutes; a launch should say at
once that the server is down, so the probe is one plain HTTP request with a short timeout, and
the client's own check then runs with its retries bounded.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from hpo.errors import TrackingError
from hpo.redact import redact
from hpo.tracking.runs import Tracker

PROBE_TIMEOUT_S = 5.0
_BOUNDED_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def probe_tracking(uri: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raises TrackingError unless an http(s) tracking server answers GET /health in `timeout_s`.

    Any HTTP answer counts (a 401 or 404 behind a proxy is the client check's business), so a
    user:password in the URI is left out of the probe (urllib would take it for the host); other
    URIs (sqlite:, file:, postgresql:) are left to that check.
    """
    if not uri.startswith(("http://", "https://")):
        return
    scheme, _, rest = uri.partition("://")
    health = f"{scheme}://{rest.rpartition('@')[2].rstrip('/')}/health"
    try:
        with urllib.request.urlopen(health, timeout=timeout_s):
            pass
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingError(
            f"MLflow tracking server {redact(uri)} is unreachable ({reason}); start it, or point "
            "--tracking-uri / MLFLOW_TRACKING_URI at a running one"
        ) from None


@contextmanager
def bounded_http_retries() -> Iterator[None]:
    """MLflow HTTP calls inside retry once and time out after 10 s (the defaults wait minutes)."""
    saved = {k: os.environ.get(k) for k in _BOUNDED_ENV}
    os.environ.update({k: v for k, v in _BOUNDED_ENV.items() if saved[k] is None})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)


def checked_tracker(uri: str | None) -> Tracker:
    """A Tracker for `uri` whose store answered: probed at once, then checked with bounded retries.

    Raises:
        TrackingError: the tracking server or store cannot be used.
    """
    tracker = Tracker(uri)
    probe_tracking(tracker.uri)
    with bounded_http_retries():
        tracker.check()
    return tracker
