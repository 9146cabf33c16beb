"""Runs record their data as MLflow dataset inputs; experiments are marked as model training."""

from __future__ import annotations

import json

import pytest

from hpo.config.tree import RunConfig
from hpo.data.contract import load_dataset
from hpo.tracking import Tracker
from hpo.tracking.datasets import log_data_inputs
from hpo.tracking.runs import EXPERIMENT_KIND
from hpo.training.loop import prepare


@pytest.fixture()
def tracker(tmp_path, monkeypatch) -> Tracker:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
    return Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", retry_window_s=0)


def test_experiments_are_tagged_as_model_training(tracker):
    # Rule: a new experiment carries mlflow.experimentKind=custom_model_development (the UI then
    # opens on its runs); one made without it gets the tag when a study or run uses it.
    new = tracker.experiment_id("fresh")
    assert tracker.client.get_experiment(new).tags[EXPERIMENT_KIND[0]] == "custom_model_development"
    old = tracker.client.create_experiment("old")
    assert EXPERIMENT_KIND[0] not in tracker.client.get_experiment(old).tags
    assert tracker.experiment_id("old") == old
    assert tracker.client.get_experiment(old).tags[EXPERIMENT_KIND[0]] == "custom_model_development"


def test_a_run_records_its_train_and_validation_splits(tracker, signal_h5):
    # Rule: a run's dataset inputs name the file, point at it, carry a digest per split, the split
    # as context and the split's cluster count; the same file and config give the same digests.
    cfg = RunConfig.model_validate({"data": {"path": str(signal_h5)}})
    ds = load_dataset(signal_h5)
    run = tracker.start_single_run("t", cfg, "r")
    log_data_inputs(tracker, run, cfg, ds)
    inputs = tracker.client.get_run(run).inputs.dataset_inputs
    _, split = prepare(cfg, ds)
    by_context = {i.tags[0].value: i.dataset for i in inputs}
    assert set(by_context) == {"train", "validation"} and [t.key for t in inputs[0].tags] == ["mlflow.data.context"]
    for context, n in (("train", len(split.train)), ("validation", len(split.val))):
        dataset = by_context[context]
        assert dataset.name == "signal" and json.loads(dataset.source)["uri"] == str(signal_h5.resolve())
        profile = json.loads(dataset.profile)
        assert profile["clusters"] == n and profile["split"] == context and profile["file_clusters"] == 300
    assert by_context["train"].digest != by_context["validation"].digest
    again = log_data_inputs(tracker, tracker.start_single_run("t", cfg, "r2"), cfg, ds)
    assert {d.digest for d in again} == {d.digest for d in by_context.values()}
