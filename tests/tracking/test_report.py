"""`hpo report`: study plots, the scan plot and the trials table land in the study's parent run."""

from __future__ import annotations

import subprocess
import sys

import pytest
from optuna.distributions import CategoricalDistribution
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState
from optuna.trial import create_trial

from hpo.config.space import parse_space
from hpo.keys import MLFLOW_PARENT_RUN_KEY
from hpo.keys import TRACKING_URI_KEY
from hpo.store.storage import make_storage
from hpo.study.create import create_or_join
from hpo.tracking import Tracker
from hpo.tracking.report import report

ALL_PLOTS = {"optimization_history", "param_importances", "parallel_coordinate", "slice", "scan"}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Optuna and MLflow SQLite stores shared by the module's studies."""
    path = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(path)
        mp.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
        tracker = Tracker(f"sqlite:///{path / 'mlflow.db'}", retry_window_s=0)
        tracker.experiment_id("warm-up")
    return path, f"sqlite:///{path / 'hpo.db'}", tracker


@pytest.fixture(autouse=True)
def in_store_dir(stores, monkeypatch):
    """New experiments put their local artifacts under ./mlartifacts: keep them in the temp dir."""
    monkeypatch.chdir(stores[0])
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")


def _study(stores, raw_space: dict, trials: list) -> tuple[str, str]:
    """A study as `hpo launch` leaves it (space, parent run with floors), holding `trials`."""
    path, storage_url, tracker = stores
    space = parse_space(raw_space, source="test")
    study, _ = create_or_join(make_storage(storage_url), space)
    exp = tracker.experiment_id(space.study.name)
    parent = tracker.start_study_run(exp, space.study.name, space.to_yaml(), {
        "fingerprint": {"sha256": "ab"}, "floors": {"oracle_floor": 0.08, "counts_baseline": 0.22}})
    study.set_user_attr(MLFLOW_PARENT_RUN_KEY, parent)
    study.set_user_attr(TRACKING_URI_KEY, tracker.uri)
    for t in trials:
        study.add_trial(t)
    return space.study.name, parent


def _grid_study(stores) -> tuple[str, str]:
    raw = {"study": {"name": "scan", "sampler": {"type": "grid"}, "pruner": {"type": "none"}, "repeats": 2},
           "data": {"path": "signal.h5"},
           "params": {"model.filters": {"int": [4, 12], "step": 4},
                      "model.dropout.rate": {"categorical": [0.0, 0.2]}}}
    dists = {"model.filters": CategoricalDistribution([4, 8, 12]),
             "model.dropout.rate": CategoricalDistribution([0.0, 0.2]),
             "train.seed": CategoricalDistribution([0, 1])}
    trials = [
        create_trial(value=0.3 - 0.01 * f + 0.05 * rate + 0.01 * seed, distributions=dists,
                     params={"model.filters": f, "model.dropout.rate": rate, "train.seed": seed},
                     user_attrs={"mlflow_run_id": f"r{f}{seed}", "epochs_run": 3})
        for f in (4, 8, 12) for rate in (0.0, 0.2) for seed in (0, 1)
    ]
    trials.append(create_trial(state=TrialState.FAIL, distributions=dists,
                               params={"model.filters": 4, "model.dropout.rate": 0.0, "train.seed": 0},
                               user_attrs={"fail_reason": "NaN loss"}))
    return _study(stores, raw, trials)


def test_grid_report_logs_every_plot_and_the_table_to_the_parent_run(stores):
    # Rule: a grid study's report has the four Optuna plots, the scan plot and trials.csv/.md.
    _, storage_url, tracker = stores
    name, parent = _grid_study(stores)
    result = report(name, storage_url=storage_url)
    assert result.run_id == parent and result.skipped == {}
    logged = {a.path for a in tracker.client.list_artifacts(parent, "report")}
    assert logged == {f"report/{p}.png" for p in ALL_PLOTS} | {"report/trials.csv", "report/trials.md"}
    table = tracker.client.download_artifacts(parent, "report/trials.csv")
    lines = open(table).read().splitlines()
    assert len(lines) == 1 + 13 and lines[1].split(",")[1] == "COMPLETE"
    assert "NaN loss" in lines[-1]
    # Running it again replaces the same artifacts.
    assert sorted(report(name, storage_url=storage_url).artifacts) == sorted(result.artifacts)


def test_plots_a_young_study_cannot_support_are_skipped_with_a_reason(stores):
    # Rule: importances need 2 COMPLETE trials and 2 parameters; a non-grid study has no scan.
    _, storage_url, _ = stores
    raw = {"study": {"name": "young", "n_trials": 5, "sampler": {"type": "tpe"}}, "data": {"path": "signal.h5"},
           "params": {"model.dropout.rate": {"float": [0.0, 0.5]}}}
    dist = {"model.dropout.rate": FloatDistribution(0.0, 0.5)}
    name, _ = _study(stores, raw, [create_trial(value=0.3, params={"model.dropout.rate": 0.1}, distributions=dist)])
    result = report(name, storage_url=storage_url)
    assert set(result.skipped) == {"param_importances"}
    assert "fewer than 2 COMPLETE trials" in result.skipped["param_importances"]
    assert "report/optimization_history.png" in result.artifacts
    assert "report/scan.png" not in result.artifacts


def test_report_command_prints_what_it_logged(stores):
    # Rule: `hpo report NAME` names the parent run and the artifacts it logged there.
    path, storage_url, _ = stores
    name, parent = _grid_study_once(stores)
    run = [sys.executable, "-m", "hpo", "report", name, "--storage", storage_url]
    out = subprocess.run(run, cwd=path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert parent in out.stdout and "report/scan.png" in out.stdout


def _grid_study_once(stores) -> tuple[str, str]:
    from optuna import load_study

    _, storage_url, _ = stores
    try:
        study = load_study(study_name="scan", storage=storage_url)
    except KeyError:
        return _grid_study(stores)
    return "scan", study.user_attrs[MLFLOW_PARENT_RUN_KEY]
