"""The MLflow UI shows a study: a real server, a real `hpo launch` over HTTP, headless Chromium.

The screenshot is kept as test-artifacts/mlflow-ui-experiment.png (git-ignored).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from tests.cli.test_end_to_end import TINY
from tests.conftest import make_signal_data
from tests.conftest import write_h5
from tests.tracking._browser import Browser
from tests.tracking._browser import chromium_path

pytestmark = pytest.mark.slow

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
EXPAND_PARENT = """(() => {
  const link = [...document.querySelectorAll('a')].find(a => a.textContent.trim() === %r);
  const button = link && link.closest('.ag-cell') && link.closest('.ag-cell').querySelector('button');
  if (!button) return false;
  button.click();
  return true;
})()"""


def test_the_experiment_page_lists_the_study_run_and_its_nested_trials(tracking_server, tmp_path):
    # Rule: after `hpo launch --tracking-uri http://...`, the experiment page lists the parent run
    # study-<name>, and expanding it shows the trial runs nested under it.
    chromium = chromium_path()
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does it)")
    write_h5(tmp_path / "signal.h5", make_signal_data(300))
    (tmp_path / "space.yaml").write_text(yaml.safe_dump({
        "study": {"name": "ui", "n_trials": 2, "sampler": {"type": "random", "seed": 0}, "pruner": {"type": "none"}},
        "data": {"path": "signal.h5"}, "base": TINY,
        "params": {"train.optimizer.learning_rate": {"float": [1e-3, 1e-2], "log": True}}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "HPO_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "hpo", "launch", "space.yaml", "--workers", "1", "--tracking-uri", tracking_server,
         "--storage", f"sqlite:///{tmp_path / 'hpo.db'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    experiment = MlflowClient(tracking_server).get_experiment_by_name("ui")

    browser = Browser(chromium, tmp_path / "chromium-profile")
    try:
        browser.page("Page.navigate", {"url": f"{tracking_server}/#/experiments/{experiment.experiment_id}/runs"})
        collapsed = browser.wait_for_text("study-ui")
        assert "trial-0" not in collapsed  # nested: hidden until the parent is expanded
        assert browser.evaluate(EXPAND_PARENT % "study-ui"), "no expander next to study-ui"
        browser.wait_for_text("trial-0", "trial-1")
        browser.evaluate("document.querySelector('[aria-label=\"Close\"]')?.click()")  # the assistant panel
        shot = browser.screenshot(ARTIFACTS / "mlflow-ui-experiment.png")
    finally:
        browser.close()
    assert shot.stat().st_size > 10_000
