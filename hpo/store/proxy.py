"""`hpo storage-proxy`: Optuna's gRPC storage proxy, which also fails lost trials on a timer.

    hpo storage-proxy --storage postgresql+psycopg://USER:PASSWORD@HOST/DB --host 0.0.0.0

Workers given grpc://host:port share the proxy's one connection pool. Optuna's heartbeats do
not pass through the proxy, so those workers beat by writing the trial system attr
`hpo:heartbeat` (see storage.py); every `reap_every_s` the proxy fails each RUNNING trial whose
beat has not changed for its study's grace period, then ends its MLflow run and re-queues its
parameters (StaleTrialHandler), even when no other worker is left to notice.
"""

from __future__ import annotations

import json
import logging
import threading
import warnings
from collections.abc import Callable

import optuna
from optuna.trial import TrialState

from hpo.config.space import parse_space
from hpo.errors import HpoError
from hpo.keys import BEAT_KEY
from hpo.keys import SPACE_KEY
from hpo.store.heartbeat import EndRuns
from hpo.store.heartbeat import grace_s
from hpo.store.heartbeat import SilenceWatch
from hpo.store.heartbeat import StaleTrialHandler
from hpo.store.storage import make_storage
from hpo.store.storage import redact

_logger = logging.getLogger(__name__)

REAP_EVERY_S = 10.0


def serve(
    storage_url: str,
    host: str,
    port: int,
    *,
    reap_every_s: float = REAP_EVERY_S,
    echo: Callable[[str], None] = print,
    end_runs_for: Callable[[], EndRuns] | None = None,
) -> None:
    """Runs the proxy until interrupted, with a ProxyReaper thread beside it.

    `end_runs_for` makes, per study, what ends a lost trial's runs (the CLI gives
    tracking.reconcile.KillLostRuns; None leaves the runs for the workers to end).

    Raises:
        HpoError: the storage is a proxy itself, or cannot be opened.
    """
    if storage_url.startswith("grpc://"):
        raise HpoError(
            f"--storage must be a database URL for the proxy to serve, got {redact(storage_url)}"
        )
    # Cached, as optuna.storages.get_storage wraps an RDB storage for the proxy.
    storage = optuna.storages._CachedStorage(make_storage(storage_url))
    reaper = ProxyReaper(storage, reap_every_s, end_runs_for)
    reaper.start()
    echo(
        f"storage proxy for {redact(storage_url)} on grpc://{host}:{port}; "
        f"failing lost trials every {reap_every_s:g} s"
    )
    try:
        with warnings.catch_warnings():  # experimental since Optuna 4.2, and the documented way
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.run_grpc_proxy_server(storage, host=host, port=port)
    finally:
        reaper.stop()


class ProxyReaper:
    """Fails the RUNNING trials of every study whose gRPC workers stopped beating.

    Args:
        storage: the storage the proxy serves.
        every_s: seconds between passes.
        end_runs_for: makes the `end_runs` of each study's StaleTrialHandler.
        clock: times the silence of beats (None: time.monotonic), replaced by a test's fake clock.
    """

    def __init__(
        self, storage: optuna.storages.BaseStorage, every_s: float = REAP_EVERY_S,
        end_runs_for: Callable[[], EndRuns] | None = None,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.storage, self.every_s, self.end_runs_for = storage, every_s, end_runs_for
        self._watch = SilenceWatch() if clock is None else SilenceWatch(clock)
        self._handlers: dict[tuple[int, str], StaleTrialHandler] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="hpo-proxy-reaper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.every_s + 5)

    def reap_once(self) -> list[tuple[str, int]]:
        """One pass over all studies; returns (study name, trial number) of each trial failed."""
        failed = []
        for summary in self.storage.get_all_studies():
            handler = self._handler(summary._study_id, summary.user_attrs)
            if handler is None:
                continue  # not created by `hpo launch`: its heartbeats are not ours to judge
            running = self.storage.get_all_trials(
                summary._study_id, deepcopy=False, states=(TrialState.RUNNING,)
            )
            # Trials without a beat belong to workers on the database itself (Optuna's heartbeats).
            beats = {
                t._trial_id: t.system_attrs[BEAT_KEY]
                for t in running
                if BEAT_KEY in t.system_attrs
            }
            for trial_id in self._watch.silent(summary._study_id, beats, grace_s(handler.space)):
                try:
                    if not self.storage.set_trial_state_values(trial_id, TrialState.FAIL):
                        continue
                except optuna.exceptions.UpdateFinishedTrialError:
                    continue  # a worker failed it first
                study = optuna.load_study(study_name=summary.study_name, storage=self.storage)
                trial = self.storage.get_trial(trial_id)
                handler(study, trial)
                failed.append((summary.study_name, trial.number))
        return failed

    def _handler(self, study_id: int, attrs: dict) -> StaleTrialHandler | None:
        if SPACE_KEY not in attrs:
            return None
        key = (study_id, json.dumps(attrs[SPACE_KEY], sort_keys=True))
        if key not in self._handlers:
            self._handlers[key] = StaleTrialHandler(
                parse_space(attrs[SPACE_KEY], source=f"study {study_id}"),
                None if self.end_runs_for is None else self.end_runs_for(),
            )
        return self._handlers[key]

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.reap_once()
            except Exception:  # noqa: BLE001  the timer must outlive a database outage; it says so
                _logger.exception(
                    "storage proxy: failing lost trials failed; next try in %g s", self.every_s
                )
