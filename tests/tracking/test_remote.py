"""Remote tracking over HTTP: outages of seconds cost nothing, a lost server fails the trial, a
wrong password is one clear message. Real `mlflow server` processes; outages come from a TCP
proxy in front of the server that stops listening and cuts its connections.
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
import threading
import time

import keras
import optuna
import pytest
import yaml
from mlflow import MlflowClient

from hpo.config.overrides import apply_overrides
from hpo.config.space import parse_space
from hpo.data.contract import load_dataset
from hpo.engines.objective import Objective
from hpo.errors import TrialFailed
from hpo.tracking import Tracker
from hpo.tracking.recorder import MlflowRecorder
from hpo.tracking.recorder import trial_recorders
from hpo.trial.runner import run_trial
from tests._servers import TcpProxy
from tests._servers import mlflow_server
from tests.cli.test_end_to_end import TINY
from tests.conftest import make_signal_data
from tests.conftest import write_h5

pytestmark = pytest.mark.slow

EPOCHS = 4


@pytest.fixture()
def data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # what Tracker sets; restored after
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")  # its thread would log too
    return write_h5(tmp_path / "signal.h5", make_signal_data(300))


class OutageAt(keras.callbacks.Callback):
    """Takes the proxy down for `seconds` at the end of epoch `epoch`, before the epoch is logged."""

    def __init__(self, proxy: TcpProxy, epoch: int, seconds: float) -> None:
        super().__init__()
        self.proxy, self.epoch, self.seconds = proxy, epoch, seconds

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if epoch == self.epoch:
            self.proxy.down_for(self.seconds)


def test_a_server_away_for_seconds_mid_trial_costs_the_trial_nothing(tracking_server, data, caplog):
    # Rule: tracking calls retry with backoff while the server is away; the run ends complete,
    # with every epoch's metrics, its plots and its model.
    proxy = TcpProxy(int(tracking_server.rsplit(":", 1)[1]))
    try:
        tracker = Tracker(proxy.url, retry_window_s=60)
        cfg = apply_overrides({**TINY, "data": {"path": str(data)}, "train.epochs": EPOCHS}, where="test")
        recorder = MlflowRecorder(tracker, experiment_id=tracker.experiment_id("outage"), study="outage",
                                  trial=0)
        with caplog.at_level(logging.WARNING, logger="hpo.tracking.retry"):
            run_trial(cfg, load_dataset(data), recorder, callbacks=[OutageAt(proxy, 1, 3.0)])
        run_id = recorder.run_id
    finally:
        proxy.down()
    assert any("retry" in r.getMessage() for r in caplog.records), "the outage hit no call"
    direct = MlflowClient(tracking_server)
    run = direct.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["hpo.state"] == "COMPLETE"
    steps = sorted({m.step for m in direct.get_metric_history(run_id, "val_residual_std")})
    assert steps == list(range(EPOCHS))
    assert "plots/residuals_vs_redshift.png" in {a.path for a in direct.list_artifacts(run_id, "plots")}


def test_a_server_gone_for_good_fails_the_trial_with_the_reason(tracking_server, data):
    # Rule: when the server stays away past the retry window, the trial fails (TrialFailed, so the
    # worker goes on) with a reason of kind "tracking:" naming the server, within about one window.
    proxy = TcpProxy(int(tracking_server.rsplit(":", 1)[1]))
    space = parse_space({"study": {"name": "gone", "n_trials": 1, "pruner": {"type": "none"},
                                   "checkpoint_dir": str(data.parent / "checkpoints")},
                         "data": {"path": str(data)}, "base": {**TINY, "train": {**TINY["train"], "epochs": 30}},
                         "params": {"model.dropout.rate": {"float": [0.0, 0.2]}}}, source="test")
    tracker = Tracker(proxy.url, retry_window_s=2)
    exp = tracker.experiment_id("gone")
    parent = tracker.start_study_run(exp, "gone", space.to_yaml(), {"path": str(data)})
    study = optuna.create_study()
    objective = Objective(space, load_dataset(data),
                          trial_recorders(tracker, experiment_id=exp, parent_run_id=parent, study="gone"))
    cut = threading.Thread(target=_down_when_a_trial_run_exists, args=(proxy, tracking_server, exp), daemon=True)
    cut.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(TrialFailed) as info:
            objective(study.ask())
    finally:
        proxy.down()
        cut.join(timeout=60)
    assert time.monotonic() - t0 < 60
    message = str(info.value)
    assert proxy.url in message and "did not answer" in message and "\n" not in message
    # What failed is in the trial's reason (`hpo status` shows it): tracking, not the training.
    (trial,) = study.trials
    assert trial.user_attrs["fail_reason"] == f"tracking: {message}"


def _down_when_a_trial_run_exists(proxy: TcpProxy, server: str, experiment_id: str) -> None:
    direct = MlflowClient(server)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if direct.search_runs([experiment_id], "tags.`hpo.kind` = 'trial'"):
            proxy.down()
            return
        time.sleep(0.2)


@pytest.mark.e2e
def test_a_wrong_password_is_one_clear_message(tmp_path, monkeypatch):
    # Rule: against `mlflow server --app-name basic-auth`, bad credentials end `hpo launch` with one
    # line naming the user and the variables to fix; the right ones work.
    pytest.importorskip("flask_wtf", reason="the basic-auth app needs mlflow[auth] (the test extra)")
    password = secrets.token_urlsafe(12)
    (tmp_path / "auth.ini").write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{tmp_path / 'auth.db'}\nadmin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    env = {"MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "auth.ini"), "MLFLOW_AUTH_ADMIN_PASSWORD": password,
           "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}
    with mlflow_server(tmp_path / "server", app_name="basic-auth", env=env) as url:
        write_h5(tmp_path / "signal.h5", make_signal_data(20))
        (tmp_path / "space.yaml").write_text(yaml.safe_dump({
            "study": {"name": "auth", "n_trials": 1}, "data": {"path": "signal.h5"}, "base": TINY,
            "params": {"model.dropout.rate": {"float": [0.0, 0.2]}}}))
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "HPO_"))}
        proc = subprocess.run(
            [sys.executable, "-m", "hpo", "launch", "space.yaml", "--workers", "0", "--tracking-uri", url],
            cwd=tmp_path, capture_output=True, text=True, timeout=300,
            env={**clean, "MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "wrong"})
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.startswith("hpo: error:")]
        assert len(lines) == 1, proc.stderr
        assert "'admin'" in lines[0] and "HTTP 401" in lines[0] and "MLFLOW_TRACKING_PASSWORD" in lines[0]
        assert "wrong" not in lines[0]

        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        tracker = Tracker(url, retry_window_s=5)
        tracker.check()
        assert tracker.experiment_id("auth-ok")
