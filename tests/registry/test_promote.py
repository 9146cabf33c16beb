"""`hpo promote`: test metrics on the version, TTA, and an alias that only moves for a better model."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from mlflow import MlflowClient

from hpo.objective.keys import MODEL_URI_KEY
from hpo.registry import models
from hpo.registry.promote import promote
from hpo.training.evaluate import dihedral_views
from tests.conftest import make_signal_data
from tests.registry.conftest import MODEL

pytestmark = pytest.mark.slow


def _promote(registry, name: str, **kwargs):
    return promote(registry.study, name, storage_url=registry.storage_url, tracking_uri=registry.tracking_uri,
                   **kwargs)


def test_tta_averages_the_predictions_of_the_8_views(registry):
    # Rule: with tta, log_mass is the mean of the pyfunc model's predictions over the 8 flips/rotations.
    arrays = make_signal_data(10, seed=7)
    model = models.load(f"{MODEL}@champion", registry.tracking_uri)
    mu, sigma = models.predict_arrays(model, arrays["images"].astype("float32"), arrays["redshift"], tta=True)
    views = [model.predict({"images": v.astype("float32"), "redshift": arrays["redshift"]})["log_mass"]
             for v in dihedral_views(arrays["images"])]
    np.testing.assert_allclose(mu, np.mean(views, axis=0), rtol=1e-6)
    assert sigma is None  # an MSE model has no sigma head
    assert not np.allclose(views[0], views[3])  # the views differ, so averaging is not a no-op


def test_promote_with_tta_records_test_metrics_and_twice_changes_nothing(registry):
    # Rule: the version carries test_tta_* metrics and lineage tags; a second run finds the same
    # version, leaves tags and alias as they were.
    first = _promote(registry, "tta-model", tta=True)
    client = MlflowClient(registry.tracking_uri)
    version = client.get_model_version("tta-model", first.version)
    assert first.champion_moved and first.version == "1"
    assert version.tags["test_tta_residual_std"] == f"{first.test_metrics['residual_std']:.6f}"
    assert {"hpo.study", "hpo.trial", "hpo.data_sha256", "hpo.test_clusters"} <= set(version.tags)
    assert "test-time averaging" in version.description
    second = _promote(registry, "tta-model", tta=True)
    assert (second.version, second.champion_moved) == ("1", False) and "already the champion" in second.message
    assert len(client.search_model_versions("name='tta-model'")) == 1
    assert client.get_model_version("tta-model", "1").tags == version.tags


def test_the_alias_moves_only_for_a_better_model(registry):
    # Rule: a champion that scores worse on the same test split is replaced; one that is not worse
    # stays, with the reason, and the winner is still registered.
    client = MlflowClient(registry.tracking_uri)
    name = "alias-model"
    first = _promote(registry, name, top_k=2)  # no champion yet: the winner is crowned
    assert first.champion_moved and first.version == "1"
    study = optuna.load_study(study_name=registry.study, storage=registry.storage_url)
    loser = next(t for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)) if t.number != first.trial)

    worse = client.create_model_version(name, source=loser.user_attrs[MODEL_URI_KEY])
    client.set_registered_model_alias(name, "champion", worse.version)
    beaten = _promote(registry, name, top_k=2)
    assert beaten.champion_moved and "champion -> version 1" in beaten.message
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"

    # The winner's files as a version of no run (models:/m-... sources carry their run along):
    # the same score, from what promote sees as another model.
    model_id = client.get_model_version(name, "1").source.removeprefix("models:/")
    equal = client.create_model_version(name, source=client.get_logged_model(model_id).artifact_location)
    assert equal.run_id in (None, "")
    client.set_registered_model_alias(name, "champion", equal.version)
    kept = _promote(registry, name, top_k=2)
    assert not kept.champion_moved and f"stays at version {equal.version}" in kept.message
    assert "is not worse than" in kept.message
    assert str(client.get_model_version_by_alias(name, "champion").version) == str(equal.version)
    assert len(client.search_model_versions(f"name='{name}'")) == 3  # nothing new registered
