"""The champion serves with stock MLflow: `mlflow models serve` answers POST /invocations."""

from __future__ import annotations

import json
import os
import urllib.request

import numpy as np
import pytest

from hpo.registry import models
from tests._registry import MODEL
from tests._servers import BIN
from tests._servers import free_port
from tests._servers import start_process
from tests._servers import stop
from tests._servers import wait_http
from tests.conftest import make_signal_data

pytestmark = pytest.mark.slow


def test_mlflow_models_serve_predicts_with_the_champion(registry, tmp_path):
    # Rule: `mlflow models serve -m models:/NAME@champion --env-manager local` needs nothing but
    # MLflow and this package, and returns one log_mass per cluster posted as {"inputs": {...}}.
    arrays = make_signal_data(6, seed=11)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "HPO_"))}
    env["MLFLOW_TRACKING_URI"] = registry.tracking_uri
    env["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # as in an activated venv: serve runs uvicorn
    log = tmp_path / "serve.log"
    proc = start_process([str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{MODEL}@champion",
                          "--env-manager", "local", "-p", str(port), "-h", "127.0.0.1"], log, env=env,
                         cwd=registry.cwd)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/ping", proc, log=log)
        body = {"inputs": {"images": arrays["images"].astype("float32").tolist(),
                           "redshift": arrays["redshift"].tolist()}}
        request = urllib.request.Request(url + "/invocations", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            predictions = json.load(response)["predictions"]
    finally:
        stop(proc)
    served = np.array([p["log_mass"] for p in predictions])
    assert served.shape == (6,)
    local, _ = models.predict_arrays(models.load(f"{MODEL}@champion", registry.tracking_uri),
                                     arrays["images"].astype("float32"), arrays["redshift"])
    np.testing.assert_allclose(served, local, rtol=1e-5)
