"""engine: keras_tuner: keras-tuner picks values, hpo's loop trains, one MLflow run per trial."""

from __future__ import annotations

import contextlib
import json

import pytest

from hpo.config.space import load_space
from hpo.config.space import parse_space
from hpo.errors import ConfigError
from tests._workers import TINY
from tests._workers import mlflow_client
from tests._workers import write_study_files

TWO_EPOCHS = {**TINY, "train": {**TINY["train"], "epochs": 2}}
RAW_INPUTS = {"input": {"transform": "none", "standardize": False}}  # lr 1e12 then diverges
NAN_PRONE = {**TWO_EPOCHS, "model": {**TINY["model"], **RAW_INPUTS}}


def trial_runs(client, name):
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], "tags.`hpo.kind` = 'trial'")
    return {int(r.data.tags["hpo.trial"]): r for r in runs}


@pytest.mark.slow
def test_hyperband_trials_are_nested_mlflow_runs_and_a_relaunch_resumes(tmp_path):
    # Rule: every keras-tuner trial is one nested MLflow run, ended FINISHED, with per-epoch
    # metrics and the tuner's values in its config; a promoted trial resumes its parent's weights
    # for the extra epochs only; launching again runs nothing new.
    from hpo.launch.launcher import launch

    write_study_files(
        tmp_path, "hb", n_trials=None, base=TWO_EPOCHS, engine="keras_tuner",
        tuner={"type": "hyperband", "factor": 2},
        params={"model.dropout.rate": {"float": [0.0, 0.3]}},
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with contextlib.chdir(tmp_path):
        first = launch("space.yaml", workers=1, tracking_uri=uri, echo=lambda line: None)
        again = launch("space.yaml", workers=1, tracking_uri=uri, echo=lambda line: None)

    project = tmp_path / "kt" / "hb"
    kt_trials = {int(p.parent.name.removeprefix("trial_")): json.loads(p.read_text())
                 for p in project.glob("trial_*/trial.json")}
    # max_epochs 2, factor 2: 2 one-epoch trials, the better one promoted, 2 two-epoch trials
    assert len(kt_trials) == 5 == load_space(tmp_path / "space.yaml").budget()
    assert first.created and not again.created
    assert first.progress.complete == again.progress.complete == 5
    assert first.progress.best is not None

    client = mlflow_client(tmp_path)
    runs = trial_runs(client, "hb")
    assert sorted(runs) == sorted(kt_trials)
    records = {n: json.loads((project / f"trial_{t['trial_id']}" / "hpo_record.json").read_text())
               for n, t in kt_trials.items()}
    for number, run in runs.items():
        values = kt_trials[number]["hyperparameters"]["values"]
        assert run.info.status == "FINISHED" and run.data.tags["hpo.state"] == "COMPLETE"
        rate = float(run.data.params["model.dropout.rate"])
        assert rate == pytest.approx(values["model.dropout.rate"])
        history = client.get_metric_history(run.info.run_id, "val_residual_std")
        record = records[number]
        assert len(history) == record["epochs_run"] >= 1
        first_epoch = record["epochs_total"] - record["epochs_run"]  # 1 for the resumed trial
        assert [m.step for m in history] == list(range(first_epoch, record["epochs_total"]))
        assert run.data.params["train.epochs"] == str(record["epochs_run"])
        assert run.data.tags["mlflow.parentRunId"]
    promoted = [r for r in records.values() if r["warm_from"] is not None]
    assert len(promoted) == 1
    assert (promoted[0]["epochs_run"], promoted[0]["epochs_total"]) == (1, 2)
    assert any(a.path == "plots" for a in client.list_artifacts(runs[0].info.run_id))
    parent = client.get_run(runs[0].data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["best_val_residual_std"] == pytest.approx(first.progress.best)


@pytest.mark.slow
def test_a_nan_trial_fails_alone_and_its_run_ends_failed(tmp_path, monkeypatch):
    # Rule: a trial whose loss turns NaN is FAIL with its reason, its MLflow run FAILED; the
    # search goes on and the other trial completes.
    from hpo.data.lazy import open_dataset
    from hpo.launch.keras_tuner import run_search
    from hpo.tracking.runs import Tracker

    # Two trials over two choices: keras-tuner never repeats a point, so each lr runs once.
    path = write_study_files(
        tmp_path, "nan", n_trials=None, base=NAN_PRONE, engine="keras_tuner",
        tuner={"type": "random", "max_trials": 2},
        params={"train.optimizer.learning_rate": {"categorical": [1e-3, 1e12]}},
    )
    monkeypatch.chdir(tmp_path)
    logged = []  # artifacts (plots, model) only for a trial that completes; stubbed here for time
    monkeypatch.setattr("hpo.tracking.recorder.log_trial_artifacts",
                        lambda tracker, run_id, result, ds, log_model: logged.append(run_id) or "")
    space = load_space(path)
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    records = run_search(space, open_dataset(tmp_path / "signal.h5"), tracker,
                         directory=tmp_path / "kt", data_info={"path": "signal.h5"})

    by_lr = {r.params["train.optimizer.learning_rate"]: r for r in records}
    assert sorted(by_lr) == [1e-3, 1e12]
    bad, good = by_lr[1e12], by_lr[1e-3]
    assert bad.state == "FAIL" and "epoch" in bad.reason and bad.value is None
    assert good.state == "COMPLETE" and good.value > 0 and good.epochs_run == 2
    runs = trial_runs(mlflow_client(tmp_path), "nan")
    assert len(runs) == 2
    failed, complete = runs[bad.number], runs[good.number]
    assert failed.info.status == "FAILED" and "epoch" in failed.data.tags["hpo.fail_reason"]
    assert complete.info.status == "FINISHED" and logged == [complete.info.run_id]
    history = mlflow_client(tmp_path).get_metric_history(complete.info.run_id, "val_residual_std")
    assert len(history) == 2


@pytest.mark.parametrize(
    ("tuner", "fragment"),
    [
        ({"type": "hyperband", "factr": 3}, "key 'study.tuner.factr'"),
        ({"type": "grid"}, "key 'study.tuner.type'"),
        ({"type": "random", "factor": 2}, "factor: only for type hyperband"),
        ({"type": "hyperband", "max_trials": 9}, "max_trials"),
    ],
)
def test_a_bad_tuner_key_names_the_file_and_the_key(tuner, fragment):
    # Rule: a malformed tuner block is one ConfigError naming the file and the key.
    raw = {"study": {"name": "x", "engine": "keras_tuner", "tuner": tuner}}
    with pytest.raises(ConfigError) as err:
        parse_space(raw, source="spaces/bad.yaml")
    assert "spaces/bad.yaml" in str(err.value) and fragment in str(err.value)


def test_tuner_needs_the_keras_tuner_engine_and_random_needs_a_trial_count():
    # Rule: a tuner block under engine optuna, or a random search without a trial count, fails.
    with pytest.raises(ConfigError, match="key 'study'.*engine: keras_tuner"):
        parse_space({"study": {"name": "x", "n_trials": 2, "tuner": {}}}, source="s.yaml")
    raw = {"study": {"name": "x", "engine": "keras_tuner", "tuner": {"type": "random"}}}
    space = parse_space(raw, source="s.yaml")
    with pytest.raises(ConfigError, match="s.yaml: study.tuner.max_trials"):
        space.budget()


def test_more_than_one_worker_is_refused_clearly(tmp_path):
    # Rule: keras_tuner runs in the launching process; --workers 2 is a ConfigError, first thing.
    from hpo.launch.launcher import launch

    write_study_files(tmp_path, "w", n_trials=None, engine="keras_tuner")
    with contextlib.chdir(tmp_path), pytest.raises(ConfigError) as err:
        launch("space.yaml", workers=2, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert "space.yaml" in str(err.value) and "--workers 1" in str(err.value)
    assert not (tmp_path / "kt").exists() and not (tmp_path / "mlflow.db").exists()


def test_dry_run_describes_engine_and_tuner():
    # Rule: --dry-run shows the engine, the tuner and Hyperband's trial and epoch budget.
    raw = {"study": {"name": "x", "engine": "keras_tuner", "tuner": {"factor": 3}},
           "base": {"train": {"epochs": 9}},
           "params": {"model.dropout.rate": {"float": [0.0, 0.5]}}}
    space = parse_space(raw, source="s.yaml")
    text = space.describe()
    assert "engine: keras_tuner" in text and "tuner: hyperband (max_epochs 9, factor 3" in text
    assert "budget: 23 trials, 75 epochs" in text
