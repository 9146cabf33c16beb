"""Optuna storages from a URL: embedded SQLite, shared PostgreSQL, or a gRPC storage proxy.

hpo status --storage postgresql+psycopg://USER:PASSWORD@HOST:5432/DB
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from hpo.errors import first_line
from hpo.errors import HpoError
from hpo.keys import BEAT_KEY
from hpo.keys import WORKER_KEY
from hpo.outputs import one_sqlite_creator
from hpo.redact import redact
from hpo.store.heartbeat import SilenceWatch
from hpo.store.retry import RETRY_WINDOW_S
from hpo.store.retry import retrying

DEFAULT_STORAGE = "sqlite:///hpo.db"
DEFAULT_PROXY_PORT = 13000

__all__ = ["DEFAULT_STORAGE", "default_storage_url", "make_storage", "redact"]

StaleCallback = Callable[["optuna.Study", FrozenTrial], None]


def default_storage_url() -> str:
    """HPO_STORAGE if set, else the embedded SQLite file."""
    return os.environ.get("HPO_STORAGE") or DEFAULT_STORAGE


def make_storage(
    url: str | None = None, *, retry_window_s: float = RETRY_WINDOW_S
) -> optuna.storages.BaseStorage:
    """The storage behind `url`; heartbeats are off until `enable_heartbeat` (see heartbeat.py).

    sqlite:/// and postgresql:// give an RDB storage whose calls retry on transient errors for
    `retry_window_s` seconds, with pooled connections pre-pinged (PostgreSQL: a small pool per
    worker, connect timeout, TCP keepalives and user timeout); grpc://host:port talks to
    `hpo storage-proxy`.

    Raises:
        HpoError: the database cannot be reached, with the URL (password hidden).
    """
    url = url or default_storage_url()
    if url.startswith("grpc://"):
        host, _, port = url.removeprefix("grpc://").partition(":")
        with warnings.catch_warnings():  # experimental since Optuna 4.2, and the documented way
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            proxy = HeartbeatGrpcStorageProxy(host=host, port=int(port or DEFAULT_PROXY_PORT))
        try:
            proxy.wait_server_ready(timeout=30)
        except ConnectionError:
            raise HpoError(
                f"no storage proxy answers at {url} within 30 s: start `hpo storage-proxy` "
                "there or fix --storage/HPO_STORAGE"
            ) from None
        return proxy
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 60}
    elif url.startswith("postgresql"):
        engine_kwargs.update(
            pool_size=2,
            max_overflow=4,
            pool_recycle=300,
            connect_args={
                "connect_timeout": 10,
                "keepalives": 1,
                "keepalives_idle": 30,
                "keepalives_interval": 10,
                "keepalives_count": 3,
                # A call sent over a dead network (a partition, not a reset) fails after 60 s
                # without an answer, not after the kernel's ~15 minutes of retransmissions.
                "tcp_user_timeout": 60_000,
            },
        )
    try:
        with one_sqlite_creator(url):
            storage = ResilientRDBStorage(url, engine_kwargs=engine_kwargs)
    except (
        sqlalchemy.exc.SQLAlchemyError,
        optuna.exceptions.StorageInternalError,
        ImportError,
        ValueError,
    ) as exc:
        cause = exc.__cause__ or exc
        raise HpoError(
            f"cannot open study storage {redact(url)}: {first_line(cause, None)}"
        ) from None
    storage.retry_window_s = retry_window_s
    return storage


# ---------------------------------------------------------------- RDB (SQLite, PostgreSQL)
class ResilientRDBStorage(optuna.storages.RDBStorage):
    """RDBStorage whose calls retry on transient database errors, with heartbeats set per study.

    Stale trials are Optuna's (last heartbeat older than the grace period, on the database's
    clock) plus orphans: RUNNING trials that no worker claimed (no `worker` user attr) for a
    grace period as this process saw it, i.e. whose worker died between creating the trial
    and starting it, before any heartbeat.
    """

    retry_window_s: float = RETRY_WINDOW_S
    _watch: SilenceWatch | None = None

    def enable_heartbeat(self, interval_s: int, grace_s: int, callback: StaleCallback) -> None:
        """Beats every `interval_s` under study.optimize; `callback` handles each stale trial."""
        self.heartbeat_interval = interval_s
        self.grace_period = grace_s
        self.heartbeat_stale_trial_callback = callback
        self.failed_trial_callback = callback
        self._watch = SilenceWatch()

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        stale = super()._get_stale_trial_ids(study_id)
        return stale + [t for t in _orphans(self, study_id) if t not in stale]


def _orphans(storage: ResilientRDBStorage, study_id: int) -> list[int]:
    assert storage._watch is not None and storage.grace_period is not None
    running = storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
    unclaimed = {t._trial_id: None for t in running if WORKER_KEY not in t.user_attrs}
    return storage._watch.silent(study_id, unclaimed, storage.grace_period)


def _settle_state_change(
    storage: ResilientRDBStorage,
    exc: Exception,
    trial_id: int,
    state: TrialState,
    values: Any = None,
) -> bool:
    # The retry found the trial finished: if in the state we asked for, our first commit landed.
    finished = isinstance(exc, optuna.exceptions.UpdateFinishedTrialError)
    if finished and storage.get_trial(trial_id).state == state:
        return True
    raise exc


def _window(storage: Any) -> float:
    return float(storage.retry_window_s)


_RETRIED = sorted(
    {n for n in dir(optuna.storages.BaseStorage) if not n.startswith("_")}
    - {"remove_session", "check_trial_is_updatable", "is_heartbeat_enabled"}
) + ["record_heartbeat", "_get_stale_trial_ids"]
for _name in _RETRIED:
    _method = getattr(ResilientRDBStorage, _name)
    _settle = _settle_state_change if _name == "set_trial_state_values" else None
    setattr(ResilientRDBStorage, _name, retrying(_method, _window, _settle))


# ---------------------------------------------------------------- gRPC proxy client
class HeartbeatGrpcStorageProxy(optuna.storages.GrpcStorageProxy, BaseHeartbeat):
    """The gRPC proxy client, with heartbeats: Optuna's do not pass through the proxy.

    A beat is the trial system attr `hpo:heartbeat` (this worker's wall time); a RUNNING trial
    whose beat has not changed for a grace period, timed by this process's own clock (no clock
    skew between machines matters), is stale. `hpo storage-proxy` applies the same rule on a timer.
    """

    heartbeat_interval: int | None = None
    grace_period: int | None = None
    stale_callback: StaleCallback | None = None
    _watch: SilenceWatch | None = None

    def enable_heartbeat(self, interval_s: int, grace_s: int, callback: StaleCallback) -> None:
        """Beats every `interval_s` under study.optimize; `callback` handles each stale trial."""
        self.heartbeat_interval = interval_s
        self.grace_period = grace_s
        self.stale_callback = callback
        self._watch = SilenceWatch()

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.set_trial_system_attr(trial_id, BEAT_KEY, time.time())
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # a peer failed this trial as stale; its tell will say so

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        assert self._watch is not None and self.grace_period is not None
        running = self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
        # Trials with a claim but no beat belong to workers on the database itself (Optuna's
        # heartbeats); trials with neither are orphans, stale after a grace period too.
        beats = {
            t._trial_id: t.system_attrs.get(BEAT_KEY)
            for t in running
            if BEAT_KEY in t.system_attrs or WORKER_KEY not in t.user_attrs
        }
        return self._watch.silent(study_id, beats, self.grace_period)

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> StaleCallback | None:
        return self.stale_callback
