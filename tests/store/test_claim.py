"""Workers racing for the last trials of a budget, on SQLite and PostgreSQL, finish exactly it;
the start lock that makes it so never holds workers up for longer than a grace period."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator

import optuna
import pytest

from hpo.config.space import parse_space
from hpo.store.claim import trial_start_lock
from hpo.store.storage import make_storage
from hpo.study.create import create_or_join
from tests._postgres import admin_conninfo_or_skip
from tests._postgres import db_name
from tests._workers import TINY
from tests._workers import create_study
from tests._workers import finish
from tests._workers import start_worker
from tests._workers import trials_of
from tests._workers import write_study_files

STORES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
WORKERS, BUDGET = 4, 2
QUICK = {**TINY, "train": {**TINY["train"], "epochs": 1}}


def _cpu_ticks(pid: int) -> tuple[str, int]:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return fields[0], int(fields[11]) + int(fields[12])  # state, utime + stime


def _wait_until_blocked(pids: list[int], quiet_s: float = 3.0, timeout: float = 300) -> None:
    """Until every process in `pids` has slept without using CPU for `quiet_s` (each waits on a
    lock the test holds, or on another worker that does)."""
    deadline = time.monotonic() + timeout
    seen = {pid: (_cpu_ticks(pid)[1], time.monotonic()) for pid in pids}
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = time.monotonic()
        for pid in pids:
            state, ticks = _cpu_ticks(pid)
            assert state != "Z", f"worker {pid} exited before the race"
            if ticks != seen[pid][0] or state not in ("S", "T"):
                seen[pid] = (ticks, now)
        if all(now - since >= quiet_s for _, since in seen.values()):
            return
    raise AssertionError(f"workers {pids} did not all block within {timeout:.0f} s")


@contextlib.contextmanager
def _new_trials_held(url: str, pids: list[int]) -> Iterator[None]:
    """Holds back every new trial of the study's database while the block runs, then waits for
    the workers `pids` to be blocked before letting them all go at once."""
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")  # readers go on, the first writer waits
        try:
            yield
            _wait_until_blocked(pids)
        finally:
            conn.rollback()
            conn.close()
        return
    import psycopg

    info = admin_conninfo_or_skip().replace("dbname=postgres", f"dbname={db_name(url)}")
    with psycopg.connect(info) as conn:
        # Optuna creates a trial with its study's row locked FOR UPDATE: that waits on this lock.
        conn.execute("SELECT study_id FROM studies FOR UPDATE")
        try:
            yield
            _wait_until_blocked(pids)
        finally:
            conn.rollback()


def _url(store, tmp_path, request):
    if store == "sqlite":
        return f"sqlite:///{tmp_path / 'hpo.db'}"
    return request.getfixturevalue("pg_url")


@pytest.mark.slow
@pytest.mark.e2e  # four workers racing on each store: minutes; in `make test-e2e`
@pytest.mark.parametrize("store", STORES)
def test_racing_workers_finish_exactly_the_budget(tmp_path, store, request):
    # Rule: four workers that all reach a budget of 2 at the same moment (held back by a lock on
    # the database, then let go at once) finish exactly 2 trials: the check of the budget and the
    # start of a trial are one step, so none starts a trial the budget has no room for.
    url = _url(store, tmp_path, request)
    # The database stays held until all four workers have started and wait on it, which takes
    # over a minute on a loaded machine; a grace shorter than that lets the workers waiting on the
    # start lock take the holder for frozen and go on without it (that case is the next test's).
    write_study_files(tmp_path, f"race_{store}", n_trials=BUDGET, base=QUICK, n_data=100,
                      heartbeat_s=1, grace_s=600)
    create_study(tmp_path, url)
    workers = []
    pids: list[int] = []
    started = time.monotonic()
    with _new_trials_held(url, pids):
        workers = [start_worker(tmp_path, f"race_{store}", url, f"w{i}.log")
                   for i in range(WORKERS)]
        pids += [w.pid for w in workers]
    print(f"{WORKERS} workers held at the start line after {time.monotonic() - started:.0f} s")
    for i, w in enumerate(workers):
        assert finish(w, 300, tmp_path / f"w{i}.log") == 0
    print(f"all done after {time.monotonic() - started:.0f} s")
    states = [t.state.name for t in trials_of(url, f"race_{store}")]
    assert states == ["COMPLETE"] * BUDGET, states


@pytest.mark.parametrize("store", STORES)
def test_a_start_lock_held_by_a_frozen_worker_delays_others_by_the_wait_only(
    tmp_path, store, request, caplog
):
    # Rule: while one worker holds the study's start lock, another waits for it; if the holder
    # never lets go (a frozen process), the other starts its trial without it after `wait_s`
    # (the study's grace period) and says so; once it is free, it is taken at once.
    url = _url(store, tmp_path, request)
    space = parse_space({"study": {"name": f"lock_{store}", "n_trials": 2},
                         "params": {"model.dropout.rate": {"float": [0.0, 0.2]}}}, source="x.yaml")
    create_or_join(make_storage(url), space)
    holder, waiter = (optuna.load_study(study_name=f"lock_{store}", storage=make_storage(url))
                      for _ in range(2))
    with trial_start_lock(holder, 60):
        started = time.monotonic()
        with trial_start_lock(waiter, 1.5):
            waited = time.monotonic() - started
    assert 1.5 <= waited < 5, waited
    assert "held the start lock for 2 s (frozen?)" in caplog.text
    caplog.clear()
    started = time.monotonic()
    with trial_start_lock(waiter, 30):
        assert time.monotonic() - started < 1
    assert "held the start lock" not in caplog.text
