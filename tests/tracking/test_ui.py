"""The MLflow UI shows a study: a real server, a real `hpo launch` and `hpo promote` over HTTP, headless Chromium.

Screenshots are kept in test-artifacts/ (git-ignored); with UPDATE_DOCS_FIGURES=1 they also
replace the README tour's figures in docs/figures/.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from hpo.tracking.runs import EXPERIMENT_KIND
from tests.cli.test_end_to_end import TINY
from tests.conftest import make_signal_data
from tests.conftest import write_h5
from tests.tracking._browser import Browser
from tests.tracking._browser import chromium_path

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
FIGURES = ROOT / "docs" / "figures"
EXPAND_PARENT = """(() => {
  const link = [...document.querySelectorAll('a')].find(a => a.textContent.trim() === %r);
  const button = link && link.closest('.ag-cell') && link.closest('.ag-cell').querySelector('button');
  if (!button) return false;
  button.click();
  return true;
})()"""
CLOSE_ASSISTANT = "document.querySelector('[aria-label=\"Close\"]')?.click()"
# Cells of the runs table's Dataset column that name a data set ("signal (digest)").
DATASET_CELLS = """[...document.querySelectorAll('.ag-row')].filter(
  row => /signal \\([0-9a-f]{16}\\)/.test(row.innerText)).length"""
# The tags table scrolls inside the page: bring its last rows (the test metrics) into view.
SHOW_TEST_TAGS = """(() => {
  let el = [...document.querySelectorAll('*')].find(e => e.childElementCount === 0 && e.textContent === 'test_bias');
  while (el && !(el.scrollHeight > el.clientHeight + 5 && getComputedStyle(el).overflowY !== 'visible')) {
    el = el.parentElement;
  }
  if (el) el.scrollTop = el.scrollHeight;
  return Boolean(el);
})()"""
ML = "workflowType=machine_learning"  # the UI's Model training view (its default is GenAI)
IMAGE_SHOWN = "[...document.images].some(i => i.complete && i.naturalWidth > 300)"


def _hpo(cwd: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "HPO_"))}
    proc = subprocess.run([sys.executable, "-m", "hpo", *args], check=False, cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _shot(browser: Browser, name: str) -> Path:
    shot = browser.screenshot(ARTIFACTS / name)
    if os.environ.get("UPDATE_DOCS_FIGURES") == "1":
        (FIGURES / name).write_bytes(shot.read_bytes())
    return shot


def test_the_ui_opens_on_the_study_runs_with_their_data_plots_and_champion(tracking_server, tmp_path):
    # Rule: the link `hpo launch` prints opens the experiment on its runs (not the GenAI overview):
    # the parent run study-<name>, its trials nested under it, every row's Dataset cell filled; a
    # trial's plots show; the champion's version page shows its alias and test-metric tags.
    chromium = chromium_path()
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does it)")
    write_h5(tmp_path / "signal.h5", make_signal_data(300))
    (tmp_path / "space.yaml").write_text(yaml.safe_dump({
        "study": {"name": "ui", "n_trials": 2, "sampler": {"type": "random", "seed": 0}, "pruner": {"type": "none"}},
        "data": {"path": "signal.h5"}, "base": TINY,
        "params": {"train.optimizer.learning_rate": {"float": [1e-3, 1e-2], "log": True}}}))
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    out = _hpo(tmp_path, "launch", "space.yaml", "--workers", "1", "--tracking-uri", tracking_server,
               "--storage", storage)
    _hpo(tmp_path, "promote", "ui", "--model", "ui-mass", "--storage", storage)
    client = MlflowClient(tracking_server)
    experiment = client.get_experiment_by_name("ui")
    assert experiment.tags[EXPERIMENT_KIND[0]] == EXPERIMENT_KIND[1]
    link = f"{tracking_server}/#/experiments/{experiment.experiment_id}/runs?{ML}"
    assert f"runs: {link}" in out.splitlines()
    champion = client.get_model_version_by_alias("ui-mass", "champion")

    browser = Browser(chromium, tmp_path / "chromium-profile")
    try:
        browser.page("Page.navigate", {"url": link})
        collapsed = browser.wait_for_text("study-ui", "Dataset")
        assert "Token Usage" not in collapsed and "trial-0" not in collapsed  # runs, trials nested
        assert browser.evaluate(EXPAND_PARENT % "study-ui"), "no expander next to study-ui"
        browser.wait_for_text("trial-0", "trial-1")
        assert browser.wait_for(f"{DATASET_CELLS} >= 3"), "a run row without its data set"
        browser.evaluate(CLOSE_ASSISTANT)
        shots = [_shot(browser, "ui-runs.png")]

        browser.page("Page.navigate", {"url": f"{tracking_server}/#/experiments/{experiment.experiment_id}/runs/"
                                              f"{champion.run_id}/artifacts/plots/predicted_vs_true.png?{ML}"})
        browser.wait_for_text("loss_curves.png", "residuals_vs_mass.png")
        browser.wait_for(IMAGE_SHOWN)
        browser.evaluate(CLOSE_ASSISTANT)
        shots.append(_shot(browser, "ui-trial-plots.png"))

        browser.page("Page.navigate", {"url": f"{tracking_server}/#/models/ui-mass/versions/{champion.version}?{ML}"})
        browser.wait_for_text("champion", "test_residual_std", "hpo.data.test_digest")
        assert browser.evaluate(SHOW_TEST_TAGS), "no scrollable tags table"
        browser.evaluate(CLOSE_ASSISTANT)
        shots.append(_shot(browser, "ui-champion.png"))
    finally:
        browser.close()
    assert all(shot.stat().st_size > 10_000 for shot in shots)
