"""Faults under workers sharing a study on the real PostgreSQL (127.0.0.1:5432), nothing lost.

    python -m pytest tests/store/test_reliability.py -m e2e -q -p no:cacheprovider

A worker SIGKILLed mid-trial, with a peer on the database and with workers behind the gRPC
storage proxy; a worker sent SIGTERM mid-trial; connections terminated mid-study; the server
restarted under two workers.
"""

from __future__ import annotations

import signal
import socket
import time

import pytest
from optuna.trial import TrialState

from hpo.keys import BEAT_KEY
from tests._postgres import ensure_postgres_running
from tests._postgres import restart_postgres
from tests._postgres import terminate_backends
from tests._workers import TINY
from tests._workers import assert_interrupted_and_requeued
from tests._workers import create_study
from tests._workers import finish
from tests._workers import mlflow_client
from tests._workers import running_trial_of
from tests._workers import start_hpo
from tests._workers import start_worker
from tests._workers import trials_of
from tests._workers import wait_for
from tests._workers import write_study_files

# Long fault runs (workers killed, connections cut, the database restarted): make test-e2e.
pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.e2e]

FINISHED = ("COMPLETE", "PRUNED")
# What `docker stop` (and docker compose) gives a container before SIGKILL; Kubernetes and Slurm
# (terminationGracePeriodSeconds, KillWait) give 30 s.
STOP_GRACE_S = 10


def _assert_budget_spent_nothing_left(trials, budget):
    states = [t.state.name for t in trials]
    assert sum(states.count(s) for s in FINISHED) >= budget, states
    assert "RUNNING" not in states and "WAITING" not in states, states


def _assert_lost_and_rerun(tmp_path, trials, lost):
    dead = next(t for t in trials if t.number == lost.number)
    assert dead.state == TrialState.FAIL
    reruns = [t for t in trials if t.system_attrs.get("failed_trial") == lost.number]
    assert (
        len(reruns) == 1 and reruns[0].state.name in FINISHED and reruns[0].params == lost.params
    )
    run = mlflow_client(tmp_path).get_run(lost.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and "no heartbeat" in run.data.tags["hpo.fail_reason"]


def test_killed_worker_trial_is_rerun_by_its_peer(tmp_path, pg_url):
    # Rule: two workers share a study; one is SIGKILLed mid-trial. Its trial is failed once its
    # heartbeat stops, its MLflow run ended KILLED, its parameters run again by the survivor, which
    # spends the budget; nothing stays RUNNING.
    write_study_files(tmp_path, "kill", n_trials=2, heartbeat_s=1, grace_s=4)
    create_study(tmp_path, pg_url)
    a = start_worker(tmp_path, "kill", pg_url, "a.log")
    b = start_worker(tmp_path, "kill", pg_url, "b.log")
    lost = wait_for(
        lambda: running_trial_of(pg_url, "kill", a.pid), 180, "a running trial of worker A"
    )
    a.send_signal(signal.SIGKILL)
    a.wait()
    assert finish(b, 240, tmp_path / "b.log") == 0
    trials = trials_of(pg_url, "kill")
    _assert_budget_spent_nothing_left(trials, 2)
    _assert_lost_and_rerun(tmp_path, trials, lost)


def test_killed_worker_behind_the_grpc_proxy_is_failed_by_the_proxy(tmp_path, pg_url):
    # Rule: behind `hpo storage-proxy`, a SIGKILLed worker's trial is failed by the proxy's own
    # timer
    # (no other worker running), its run KILLED and its parameters queued; a new worker reruns
    # them.
    write_study_files(tmp_path, "proxied", n_trials=2, heartbeat_s=1, grace_s=3)
    create_study(tmp_path, pg_url)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proxy = start_hpo(
        tmp_path,
        "storage-proxy",
        "--storage",
        pg_url,
        "--port",
        str(port),
        "--reap-every",
        "0.5",
        log="proxy.log",
    )
    grpc_url = f"grpc://127.0.0.1:{port}"
    try:
        a = start_worker(tmp_path, "proxied", grpc_url, "a.log")
        lost = wait_for(
            lambda: running_trial_of(pg_url, "proxied", a.pid), 180, "a running trial of worker A"
        )
        wait_for(
            lambda: BEAT_KEY in running_trial_of(pg_url, "proxied", a.pid).system_attrs,
            10,
            "a beat through the proxy",
        )
        a.send_signal(signal.SIGKILL)
        a.wait()

        def requeued():
            states = [t.state.name for t in trials_of(pg_url, "proxied")]
            return "WAITING" in states and "RUNNING" not in states

        wait_for(requeued, 30, "the proxy to fail the lost trial and queue its copy", poll=0.5)
        b = start_worker(tmp_path, "proxied", grpc_url, "b.log")
        assert finish(b, 240, tmp_path / "b.log") == 0
    finally:
        proxy.send_signal(signal.SIGINT)
        finish(proxy, 30, tmp_path / "proxy.log")
    trials = trials_of(pg_url, "proxied")
    _assert_budget_spent_nothing_left(trials, 2)
    _assert_lost_and_rerun(tmp_path, trials, lost)


def test_terminated_connections_lose_no_trial(tmp_path, pg_url):
    # Rule: a worker whose database connections are terminated again and again mid-study reconnects
    # and goes on: it exits 0, every trial completes, none fails or stays RUNNING.
    write_study_files(tmp_path, "terminate", n_trials=2, heartbeat_s=1, grace_s=30)
    create_study(tmp_path, pg_url)
    w = start_worker(tmp_path, "terminate", pg_url, "w.log")
    started = time.monotonic()
    wait_for(
        lambda: running_trial_of(pg_url, "terminate", w.pid, need_run=False),
        180,
        "the worker's first trial",
    )
    ended = 0
    while w.poll() is None and time.monotonic() - started < 240:
        ended += terminate_backends(pg_url)
        time.sleep(0.7)
    assert finish(w, 1, tmp_path / "w.log") == 0
    assert ended >= 2
    states = [t.state.name for t in trials_of(pg_url, "terminate")]
    assert states == ["COMPLETE"] * 2


def test_database_restart_loses_no_finished_trial(tmp_path, pg_url):
    # Rule: PostgreSQL restarting under two workers loses no finished trial; both go on and spend
    # the budget, no trial fails.
    write_study_files(tmp_path, "restart", n_trials=3, heartbeat_s=1, grace_s=60)
    create_study(tmp_path, pg_url)
    workers = [start_worker(tmp_path, "restart", pg_url, f"w{i}.log") for i in range(2)]
    try:
        before = wait_for(
            lambda: [
                (t.number, t.value)
                for t in trials_of(pg_url, "restart")
                if t.state == TrialState.COMPLETE
            ],
            180,
            "a finished trial",
        )
        restart_postgres()
    finally:
        ensure_postgres_running()
    for i, w in enumerate(workers):
        assert finish(w, 240, tmp_path / f"w{i}.log") == 0
    trials = trials_of(pg_url, "restart")
    after = {t.number: t.value for t in trials if t.state == TrialState.COMPLETE}
    assert all(after.get(number) == value for number, value in before)
    _assert_budget_spent_nothing_left(trials, 3)
    assert "FAIL" not in [t.state.name for t in trials]


def test_sigterm_mid_trial_ends_and_requeues_the_trial_within_the_stop_grace(tmp_path, pg_url):
    # Rule: SIGTERM to a worker mid-trial (docker stop, pod deletion, Slurm preemption) ends it
    # within the stop grace: its trial FAIL "interrupted", its MLflow run KILLED, a copy with the
    # same parameters queued (WAITING) for the next worker; the worker exits 130.
    long = {**TINY, "train": {**TINY["train"], "epochs": 1000}}
    write_study_files(tmp_path, "term", n_trials=2, base=long, heartbeat_s=1, grace_s=120)
    create_study(tmp_path, pg_url)
    w = start_worker(tmp_path, "term", pg_url, "w.log")
    lost = wait_for(
        lambda: running_trial_of(pg_url, "term", w.pid, need_epoch=True), 180, "a trial training"
    )
    sent = time.monotonic()
    w.send_signal(signal.SIGTERM)
    assert finish(w, STOP_GRACE_S, tmp_path / "w.log") == 130
    print(f"worker gone {time.monotonic() - sent:.1f} s after SIGTERM")
    assert_interrupted_and_requeued(tmp_path, pg_url, "term", [lost])
