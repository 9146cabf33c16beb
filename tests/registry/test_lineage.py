"""A registered version leads back to its data: the run's dataset inputs and the version's tags agree."""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient

from tests._registry import MODEL

pytestmark = pytest.mark.slow


def test_the_champion_names_the_data_splits_its_run_read(registry):
    # Rule: promote adds the test split to the winner's dataset inputs, and the version's tags name
    # the file and the digest of each split, the same digests the run shows in the UI.
    client = MlflowClient(registry.tracking_uri)
    version = client.get_model_version(MODEL, "1")
    inputs = client.get_run(version.run_id).inputs.dataset_inputs
    digests = {i.tags[0].value: i.dataset.digest for i in inputs}
    assert set(digests) == {"train", "validation", "test"}
    for split, digest in digests.items():
        assert version.tags[f"hpo.data.{split}_digest"] == digest
    test = next(i.dataset for i in inputs if i.tags[0].value == "test")
    assert json.loads(test.profile)["clusters"] == int(version.tags["hpo.test_clusters"])
    assert version.tags["hpo.data.name"] == "signal"
    assert version.tags["hpo.data.source"] == str(registry.cwd / "signal.h5")
