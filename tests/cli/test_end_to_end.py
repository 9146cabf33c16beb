"""The command line end to end on real SQLite stores: launch, worker, status, promote, pull, predict.

Minutes of subprocesses that each load TensorFlow: make test-e2e (CI) runs them; each command's
own behaviour is tested in make test by the tests of its module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import make_signal_data
from tests.conftest import write_h5

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

TINY = {
    "model": {"conv_blocks": [[8], [8]], "pool": {"size": 2}, "dense": [32, 16]},
    "train": {"epochs": 3, "batch_size": 32, "optimizer": {"learning_rate": 3e-3}},
}


def hpo(cwd: Path, *args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "HPO_"))}, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "hpo", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"hpo {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def write_space(path: Path, name: str, n_trials: int = 4, **study) -> Path:
    space = {
        "study": {"name": name, "n_trials": n_trials, "sampler": {"type": "tpe", "seed": 0},
                  "pruner": {"type": "median", "n_startup_trials": 2, "n_warmup_steps": 1}, **study},
        "data": {"path": "signal.h5"},
        "base": TINY,
        "params": {"train.optimizer.learning_rate": {"float": [1e-3, 1e-2], "log": True},
                   "model.dropout.rate": {"float": [0.0, 0.2], "step": 0.1}},
    }
    path.write_text(yaml.safe_dump(space))
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A directory where a 4-trial study ran with 2 local workers on the embedded defaults."""
    cwd = tmp_path_factory.mktemp("e2e")
    write_h5(cwd / "signal.h5", make_signal_data(300))
    write_space(cwd / "space.yaml", "e2e")
    hpo(cwd, "launch", "space.yaml", "--workers", "2")
    return cwd


def _client(cwd: Path):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")


def test_two_workers_spend_the_budget_and_leave_nothing_running(workdir):
    # Rule: n_trials counts COMPLETE + PRUNED across workers; every trial ends in a final state.
    import optuna

    study = optuna.load_study(study_name="e2e", storage=f"sqlite:///{workdir / 'hpo.db'}")
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") + states.count("PRUNED") >= 4
    assert "RUNNING" not in states and "WAITING" not in states
    assert (workdir / "mlartifacts").is_dir()


def test_trials_are_nested_runs_with_epoch_metrics_plots_and_model(workdir):
    # Rule: one parent run per study; each trial a nested run named trial-<n> with per-epoch metrics.
    client = _client(workdir)
    exp = client.get_experiment_by_name("e2e")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("hpo.kind") == "study"]
    trials = [r for r in runs if r.data.tags.get("hpo.kind") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(trials) >= 4
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in trials)
    assert all(r.info.status in ("FINISHED", "FAILED", "KILLED") for r in trials)
    complete = [r for r in trials if r.data.tags.get("hpo.state") == "COMPLETE"]
    assert complete
    run = complete[0]
    assert run.info.run_name == f"trial-{run.data.tags['hpo.trial']}"
    assert run.data.params["model.dense"] == "[32, 16]"
    history = client.get_metric_history(run.info.run_id, "val_residual_std")
    assert [m.step for m in history] == [0, 1, 2]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert artifacts == {"plots/loss_curves.png", "plots/predicted_vs_true.png", "plots/residuals_vs_mass.png",
                         "plots/residuals_vs_redshift.png"}  # and sigma_calibration.png for likelihood models
    assert "search_space.yaml" in {a.path for a in client.list_artifacts(parents[0].info.run_id)}


def test_status_lists_studies_and_trials(workdir):
    # Rule: `status` alone lists every study; with a name, its trials with state and MLflow run.
    assert "e2e" in hpo(workdir, "status").stdout
    out = hpo(workdir, "status", "e2e").stdout
    assert "COMPLETE" in out and "mlflow_run" in out


def test_promote_pull_predict_and_plain_mlflow_round_trip(workdir):
    # Rule: promote registers the best trial as champion; plain MLflow loads and predicts with it.
    out = hpo(workdir, "promote", "e2e", "--model", "xray-cluster-mass").stdout
    assert "champion -> version 1" in out
    again = hpo(workdir, "promote", "e2e", "--model", "xray-cluster-mass").stdout
    assert "already the champion" in again  # running it twice changes nothing
    assert len(_client(workdir).search_model_versions("name='xray-cluster-mass'")) == 1

    hpo(workdir, "pull", "xray-cluster-mass@champion", "-o", "pulled")
    assert (workdir / "pulled" / "MLmodel").exists()

    # A file without labels, as users predict on.
    arrays = make_signal_data(20, seed=5)
    truth = arrays.pop("log_mass")
    write_h5(workdir / "unlabelled.h5", arrays)
    hpo(workdir, "predict", "xray-cluster-mass@champion", "unlabelled.h5", "-o", "pred.csv")
    lines = (workdir / "pred.csv").read_text().splitlines()
    assert lines[0] == "index,cluster_id,log_mass,sigma,flags,flag_names" and len(lines) == 21
    assert (workdir / "pred.fits").exists()  # the same table as FITS, beside the CSV

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model("models:/xray-cluster-mass@champion")
    # The signature declares float32 images, as the network takes them (counts cast once).
    frame = model.predict({"images": arrays["images"].astype("float32"), "redshift": arrays["redshift"]})
    assert list(frame.columns) == ["log_mass"] and len(frame) == 20
    assert abs(frame["log_mass"].mean() - truth.mean()) < 0.5


@pytest.mark.e2e
def test_relaunch_joins_and_changed_space_is_refused(workdir):
    # Rule: launching the same space again joins it; a changed space under the same name says what changed.
    out = hpo(workdir, "launch", "space.yaml", "--workers", "1").stdout
    assert "joined" in out
    write_space(workdir / "changed.yaml", "e2e", n_trials=9)
    proc = hpo(workdir, "launch", "changed.yaml", "--workers", "0", check=False)
    assert proc.returncode == 1 and "study.n_trials: 4 -> 9" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.e2e
def test_workers_zero_then_external_worker(workdir):
    # Rule: --workers 0 creates the study only; `hpo worker` then runs it to its budget.
    write_space(workdir / "ext.yaml", "ext", n_trials=2)
    hpo(workdir, "launch", "ext.yaml", "--workers", "0")
    assert "ext" in hpo(workdir, "status").stdout
    out = hpo(workdir, "worker", "--study", "ext", "--storage", "sqlite:///hpo.db").stdout
    assert "ran 2 trials" in out


def test_train_json_last_line(workdir):
    # Rule: `train --json` ends with one JSON object holding val_residual_std and mlflow_run_id.
    (workdir / "run.yaml").write_text(yaml.safe_dump({**TINY, "data": {"path": "signal.h5"}}))
    out = hpo(workdir, "train", "run.yaml", "--json").stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["val_residual_std"] < 0.58 and len(result["mlflow_run_id"]) == 32
    assert _client(workdir).get_run(result["mlflow_run_id"]).info.status == "FINISHED"


def test_train_calibrated_on_a_file_of_its_own_says_so_and_logs_it(workdir):
    # Rule: `hpo train` with both calibrations and data.calibration_path prints what it set and
    # logs the shift (calibration/bias_shift.json) and the sigma scale on its run.
    write_h5(workdir / "calibration.h5", make_signal_data(450, seed=7))
    (workdir / "cal.yaml").write_text(yaml.safe_dump({
        **TINY, "data": {"path": "signal.h5", "calibration_path": "calibration.h5"},
        "train": {**TINY["train"], "loss": {"type": "gaussian_nll"}, "calibrate_sigma": True,
                  "calibrate_bias": True}}))
    out = hpo(workdir, "train", "cal.yaml").stdout
    assert "calibrated on calibration.h5: log mass shifted by" in out and "(1 bin(s) of exposure)" in out
    assert "calibrated on calibration.h5: sigma scaled by" in out
    run_id = out.split("MLflow run ")[1].split()[0]
    client = _client(workdir)
    shift = json.loads(Path(client.download_artifacts(run_id, "calibration/bias_shift.json",
                                                      str(workdir))).read_text())
    assert len(shift["shift_dex"]) == 1 and shift["shift_dex"][0] != 0
    assert client.get_run(run_id).data.metrics["sigma_scale"] > 0


def test_a_quoted_model_name_and_a_file_as_pull_target_are_one_line_each(workdir):
    # Rule: bad input to promote and pull is one `hpo: error:` line on stderr, exit 1, nothing written.
    (workdir / "keep.txt").write_text("mine\n")
    for args in (("promote", "e2e", "--model", "o'brien"), ("pull", "xray-cluster-mass/1", "-o", "keep.txt")):
        proc = hpo(workdir, *args, check=False)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("hpo: error: ")]
        assert proc.returncode == 1 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert (workdir / "keep.txt").read_text() == "mine\n"
    names = [m.name for m in _client(workdir).search_registered_models()]
    assert "o'brien" not in names
