"""Faults of the MLflow tracking server under real workers: no trial run is left RUNNING, and an
outage longer than the retry window is waited out. A real `mlflow server`, stopped and started
again on its port; a TCP proxy in front of it holds back one answer so that a fault lands
between the server creating a trial's run and the worker learning its id.

    python -m pytest tests/tracking/test_tracking_faults.py -m e2e -q -p no:cacheprovider
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests._servers import MlflowServer
from tests._servers import TcpProxy
from tests._workers import clean_env
from tests._workers import finish
from tests._workers import hpo_cmd
from tests._workers import running_trial_of
from tests._workers import trials_of
from tests._workers import wait_for
from tests._workers import write_study_files

# Long fault runs (a real mlflow server stopped and restarted): in `make test-e2e`.
pytestmark = [pytest.mark.slow, pytest.mark.e2e]

CREATE_RUN = b"/api/2.0/mlflow/runs/create"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """One `mlflow server` for the module; a test that stops it starts it again."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def proxy(server: MlflowServer) -> Iterator[TcpProxy]:
    if server.proc is None or server.proc.poll() is not None:
        server.start()
    proxy = TcpProxy(server.port)
    try:
        yield proxy
    finally:
        proxy.down()


def _create_study(cwd: Path, storage: str, tracking_uri: str, monkeypatch) -> None:
    """`hpo launch space.yaml --workers 0` in this process, against the tracking server."""
    from hpo.launch.launcher import launch

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # what Tracker sets; restored after
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with contextlib.chdir(cwd):
        launch("space.yaml", workers=0, storage_url=storage, tracking_uri=tracking_uri,
               echo=lambda line: None)


def _worker(cwd: Path, study: str, storage: str, tracking_uri: str, log: str,
            **env: str) -> subprocess.Popen:
    out = open(cwd / log, "w")  # noqa: SIM115  closed with the process
    return subprocess.Popen(
        [sys.executable, "-m", "hpo", "worker", "--study", study, "--storage", storage,
         "--tracking-uri", tracking_uri],
        cwd=cwd, env={**clean_env(), **env}, stdout=out, stderr=subprocess.STDOUT,
    )


def _trial_runs(url: str, study: str) -> list:
    client = MlflowClient(url)
    experiment = client.get_experiment_by_name(study)
    return client.search_runs([experiment.experiment_id],
                              f"tags.`hpo.study` = '{study}' AND tags.`hpo.kind` = 'trial'")


def _runs_of_trial(url: str, study: str, number: int) -> list:
    return [r for r in _trial_runs(url, study) if r.data.tags["hpo.trial"] == str(number)]


def _stop(*procs: subprocess.Popen | None) -> None:
    for p in procs:
        if p is not None and p.poll() is None:
            p.kill()
            p.wait()


def test_a_worker_killed_between_creating_its_run_and_recording_it_leaves_no_run_running(
    tmp_path, server, proxy, monkeypatch
):
    # Rule: a worker SIGKILLed after the server created its trial's run but before the run id
    # reached the trial leaves a RUNNING run that only its tags tie to the trial; whoever fails
    # the lost trial (here `hpo status --repair`, as a peer worker would) finds the run by those
    # tags and ends it KILLED, and queues the trial again.
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    write_study_files(tmp_path, "orphan", n_trials=1, heartbeat_s=1, grace_s=2)
    _create_study(tmp_path, storage, server.url, monkeypatch)
    proxy.hold_response_to(CREATE_RUN)
    a = _worker(tmp_path, "orphan", storage, proxy.url, "a.log")
    try:
        assert proxy.held.wait(240), (tmp_path / "a.log").read_text()[-3000:]
        a.kill()
        a.wait()
    finally:
        _stop(a)
    lost = running_trial_of(storage, "orphan", a.pid, need_run=False)
    assert lost is not None and "mlflow_run_id" not in lost.user_attrs
    (orphan,) = _runs_of_trial(server.url, "orphan", lost.number)
    assert orphan.info.status == "RUNNING"
    time.sleep(3)  # the lost trial's last beat is older than grace_s
    repaired = hpo_cmd(tmp_path, "status", "orphan", "--storage", storage, "--repair",
                       "--tracking-uri", server.url)
    assert repaired.returncode == 0, repaired.stderr
    said = f"trial {lost.number}: no heartbeat for 2 s; failed, its MLflow runs ended KILLED"
    assert said in repaired.stdout
    run = MlflowClient(server.url).get_run(orphan.info.run_id)
    assert run.info.status == "KILLED" and "no heartbeat" in run.data.tags["hpo.fail_reason"]
    trials = trials_of(storage, "orphan")
    assert [t.state.name for t in trials] == ["FAIL", "WAITING"]
    assert trials[1].system_attrs.get("failed_trial") == lost.number


def test_a_tracking_outage_longer_than_the_retry_window_is_waited_out(
    tmp_path, server, proxy, monkeypatch
):
    # Rule: the server stops right after creating a trial's run and stays away past the retry
    # window (2 s): that trial fails (logging its config cannot finish), and the worker waits for
    # the server, saying how long at most, instead of failing trial after trial; once the server
    # is back on its port, the failed trial's run is ended FAILED and the study finishes.
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    write_study_files(tmp_path, "outage", n_trials=1, heartbeat_s=1, grace_s=30)
    _create_study(tmp_path, storage, proxy.url, monkeypatch)
    proxy.hold_response_to(CREATE_RUN)
    log = tmp_path / "w.log"
    w = _worker(tmp_path, "outage", storage, proxy.url, "w.log",
                HPO_TRACKING_RETRY_S="2", HPO_TRACKING_WAIT_S="300")
    try:
        assert proxy.held.wait(240), log.read_text()[-3000:]
        server.stop()
        proxy.release()
        wait_for(lambda: w.poll() is not None or "HPO_TRACKING_WAIT_S" in log.read_text(),
                 120, "the worker to wait for the server")
        assert w.poll() is None, log.read_text()[-3000:]
        assert "waiting for it up to 300 s (HPO_TRACKING_WAIT_S)" in log.read_text()
        server.start()
        assert finish(w, 300, log) == 0
    finally:
        _stop(w)
    text = log.read_text()
    assert "answers again" in text and "in a row" not in text
    trials = trials_of(storage, "outage")
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert "did not answer" in trials[0].user_attrs["fail_reason"]
    runs = _trial_runs(server.url, "outage")
    (first,) = [r for r in runs if r.data.tags["hpo.trial"] == "0"]
    assert first.info.run_id == trials[0].user_attrs["mlflow_run_id"]
    assert first.info.status == "FAILED" and "did not answer" in first.data.tags["hpo.fail_reason"]
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED"]


def test_past_the_wait_limit_the_worker_stops_and_status_repair_ends_the_run(
    tmp_path, server, proxy, monkeypatch
):
    # Rule: a server away (here: the proxy in front of it down) longer than HPO_TRACKING_WAIT_S
    # stops the worker with one line naming the limit; the failed trial's run is left RUNNING
    # (nobody could end it), and `hpo status --repair` ends it FAILED with the trial's reason
    # once the server is back.
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    write_study_files(tmp_path, "gone", n_trials=1, heartbeat_s=1, grace_s=30)
    _create_study(tmp_path, storage, proxy.url, monkeypatch)
    proxy.hold_response_to(CREATE_RUN)
    log = tmp_path / "w.log"
    w = _worker(tmp_path, "gone", storage, proxy.url, "w.log",
                HPO_TRACKING_RETRY_S="1", HPO_TRACKING_WAIT_S="2")
    try:
        assert proxy.held.wait(240), log.read_text()[-3000:]
        proxy.down()
        assert finish(w, 120, log) == 1
    finally:
        _stop(w)
    lines = log.read_text().splitlines()
    errors = [line for line in lines if line.startswith("hpo: error:")]
    assert errors == lines[-1:] and "did not answer for 2 s (HPO_TRACKING_WAIT_S)" in errors[0]
    (run,) = _runs_of_trial(server.url, "gone", 0)
    assert run.info.status == "RUNNING"
    repaired = hpo_cmd(tmp_path, "status", "gone", "--storage", storage, "--repair",
                       "--tracking-uri", server.url)
    assert repaired.returncode == 0, repaired.stderr
    said = f"trial 0: MLflow run {run.info.run_id} was left RUNNING; ended FAILED"
    assert said in repaired.stdout
    run = MlflowClient(server.url).get_run(run.info.run_id)
    reason = trials_of(storage, "gone")[0].user_attrs["fail_reason"]
    assert run.info.status == "FAILED" and run.data.tags["hpo.fail_reason"] == reason
