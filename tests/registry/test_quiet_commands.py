"""Registry commands print their result and nothing else: no download bar, no native or MLflow noise."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests._registry import MODEL
from tests.conftest import make_signal_data
from tests.conftest import write_h5

pytestmark = pytest.mark.slow


def _hpo(registry, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "HPO_", "TF_CPP_"))}
    proc = subprocess.run([sys.executable, "-m", "hpo", *args, "--tracking-uri", registry.tracking_uri], check=False,
                          cwd=registry.cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_pull_shows_no_download_bar(registry, tmp_path):
    # Rule: `hpo pull` prints where the model is, and its stderr stays empty (MLflow's bar is off).
    proc = _hpo(registry, "pull", f"{MODEL}@champion", "-o", str(tmp_path / "m"))
    assert proc.stdout.strip() == f"model in {tmp_path / 'm'}"
    assert proc.stderr == ""


def test_predict_loads_tensorflow_and_the_model_quietly(registry, tmp_path):
    # Rule: `hpo predict` (TensorFlow, Keras and our pyfunc class load) writes only its own two lines: what it
    # wrote, then the JSON summary; stderr stays empty.
    write_h5(tmp_path / "d.h5", make_signal_data(10, seed=4))
    proc = _hpo(registry, "predict", f"{MODEL}@champion", str(tmp_path / "d.h5"), "-o", str(tmp_path / "p.csv"))
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"wrote 10 clusters to {tmp_path / 'p.fits'} and {tmp_path / 'p.csv'}")
    assert json.loads(lines[1])["n"] == 10 and len(lines) == 2
    assert proc.stderr == ""
