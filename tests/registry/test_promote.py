"""`hpo promote`: chosen on validation, scored once on test, a gate that compares like with like."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from mlflow import MlflowClient

from hpo.config.tree import RunConfig
from hpo.errors import HpoError
from hpo.keys import CONFIG_KEY
from hpo.keys import MODEL_URI_KEY
from hpo.model.metrics import residual_metrics
from hpo.registry import models
from hpo.registry.promote import promote
from hpo.training.evaluate import dihedral_views
from hpo.training.loop import prepare
from tests._registry import BAD
from tests._registry import MODEL
from tests._registry import run_study
from tests.conftest import make_signal_data
from tests.conftest import write_h5

pytestmark = pytest.mark.slow


def _promote(registry, name: str, study: str | None = None, **kwargs):
    return promote(study or registry.study, name, storage_url=registry.storage_url,
                   tracking_uri=registry.tracking_uri, **kwargs)


def _scores(registry, trial, which: str) -> dict[str, float]:
    """The trial's model scored here, independently of promote, on its validation or test split."""
    from hpo.data.contract import load_dataset

    cfg = RunConfig.model_validate(trial.user_attrs[CONFIG_KEY])
    ds, split = prepare(cfg, load_dataset(registry.cwd / "signal.h5"))
    part = ds.subset(getattr(split, which))
    model = models.load(trial.user_attrs[MODEL_URI_KEY], registry.tracking_uri)
    mu, sigma = models.predict_arrays(model, part.images, part.redshift)
    return residual_metrics(mu, part.log_mass, sigma)


def _alias(client, name: str) -> str:
    return str(client.get_model_version_by_alias(name, "champion").version)


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


@pytest.mark.parametrize("select_by", ["val_residual_std", "val_rmse"])
def test_the_winner_is_chosen_on_validation_and_its_test_report_recorded(registry, select_by):
    # Rule: the version is the trial with the lowest validation metric (here scored independently);
    # its test_* tags are that trial's own test scores, beside the selection and the split.
    study = optuna.load_study(study_name=registry.study, storage=registry.storage_url)
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    key = select_by.removeprefix("val_")
    val = {t.number: _scores(registry, t, "val")[key] for t in trials}
    result = _promote(registry, f"sel-{key}", top_k=2, select_by=select_by)
    assert result.trial == min(val, key=val.get)
    assert result.val_value == pytest.approx(val[result.trial], rel=1e-5)
    winner = next(t for t in trials if t.number == result.trial)
    test = _scores(registry, winner, "test")
    tags = MlflowClient(registry.tracking_uri).get_model_version(f"sel-{key}", result.version).tags
    assert float(tags["test_residual_std"]) == pytest.approx(test["residual_std"], rel=1e-5)
    assert tags["hpo.selected_by"] == select_by and tags["hpo.test_clusters"] == "30"
    assert tags["hpo.split.split_seed"] == "0" and tags["hpo.split.test_fraction"] == "0.1"
    assert "hpo.floor.counts_baseline" in tags and result.test_clusters == 30


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


def test_the_alias_moves_only_for_a_model_better_by_the_margin(registry, bad_study):
    # Rule: a champion that loses the paired comparison on the same test clusters is replaced, with
    # the comparison recorded on the new version; the worse model promoted later does not move it
    # back; a margin larger than the gain keeps the champion.
    client = MlflowClient(registry.tracking_uri)
    name = "gate-model"
    assert _promote(registry, name, study=bad_study).champion_moved  # the first champion
    assert client.get_model_version(name, "1").tags["hpo.gate.verdict"].startswith("first champion")
    better = _promote(registry, name)
    assert better.champion_moved and _alias(client, name) == better.version == "2"
    gate = client.get_model_version(name, "2").tags
    assert gate["hpo.gate.verdict"] == "challenger better" and gate["hpo.gate.champion_version"] == "1"
    assert gate["hpo.gate.clusters"] == "30" and gate["hpo.gate.metric"] == "residual_std"
    low = float(gate["hpo.gate.interval95"].strip("[]").split(",")[0])
    assert float(gate["hpo.gate.gain"]) > 0.005 and low > 0
    assert float(gate["hpo.gate.champion"]) - float(gate["hpo.gate.challenger"]) == pytest.approx(
        float(gate["hpo.gate.gain"]), abs=2e-6)

    back = _promote(registry, name, study=bad_study)  # version 1 again, against champion 2
    assert not back.champion_moved and back.version == "1" and _alias(client, name) == "2"
    assert client.get_model_version(name, "1").tags["hpo.gate.verdict"] == "champion kept"
    assert len(client.search_model_versions(f"name='{name}'")) == 2

    _promote(registry, "margin-model", study=bad_study)
    kept = _promote(registry, "margin-model", min_gain=10.0)
    assert not kept.champion_moved and "stays at version 1" in kept.message and _alias(client, "margin-model") == "1"


def test_a_champion_of_another_split_or_file_is_not_compared_on_this_test_split(registry, tmp_path):
    # Rule: a champion trained with another split seed (its training clusters overlap this test
    # split) or on another file is refused, naming what differs, before anything is written;
    # --compare-on scores both on a file neither trained on, and records where.
    client = MlflowClient(registry.tracking_uri)
    write_h5(registry.cwd / "other.h5", make_signal_data(300, seed=9))
    cases = {"seed-model": ({"split_seed": 1}, "split.split_seed 1 vs 0"),
             "file-model": ({"path": str(registry.cwd / "other.h5")}, "data_sha256")}
    for name, (data, fragment) in cases.items():
        _promote(registry, name, study=run_study(registry, name.replace("-model", "-study"), data=data))
        with pytest.raises(HpoError) as info:
            _promote(registry, name)
        assert fragment in str(info.value) and "--compare-on" in str(info.value) and "\n" not in str(info.value)
        assert len(client.search_model_versions(f"name='{name}'")) == 1 and _alias(client, name) == "1"

    with pytest.raises(HpoError, match="trained on that file"):  # the champion's own file
        _promote(registry, "file-model", compare_on=registry.cwd / "other.h5")
    fresh = write_h5(tmp_path / "fresh.h5", make_signal_data(200, seed=21))
    result = _promote(registry, "seed-model", compare_on=fresh, min_gain=0.0)
    assert result.comparison is not None and result.comparison.clusters == 200
    assert str(fresh) in client.get_model_version("seed-model", result.version).tags["hpo.gate.on"]


def test_a_champion_registered_before_fingerprints_counted_images_is_still_compared(registry):
    # Rule: a version tagged with the 16-digit fingerprint of an earlier release (redshifts and
    # masses only) is the same file for the like-with-like check: a new study on that file and
    # split is compared with it on this test split, not refused; a 16-digit tag of another file
    # is still refused.
    from hpo.data.lazy import open_dataset

    client = MlflowClient(registry.tracking_uri)
    name = "old-tag-model"
    _promote(registry, name)
    old = open_dataset(registry.cwd / "signal.h5").fingerprint()
    assert len(old["sha256_v1"]) == 16 and old["sha256"] != old["sha256_v1"]
    client.set_model_version_tag(name, "1", "hpo.data_sha256", old["sha256_v1"])
    result = _promote(registry, name, study=run_study(registry, "old-tag-study"), min_gain=0.0)
    assert result.comparison is not None and result.version == "2"
    client.set_model_version_tag(name, _alias(client, name), "hpo.data_sha256", "0123456789abcdef")
    with pytest.raises(HpoError, match="data_sha256 0123456789abcdef vs"):
        _promote(registry, name, study=run_study(registry, "old-tag-study-2"))


def test_a_changed_data_file_is_refused(registry):
    # Rule: promote scores the test split of the file the study trained on; a file regenerated at
    # the same path since is refused, naming both fingerprints.
    write_h5(registry.cwd / "regen.h5", make_signal_data(300, seed=4))
    study = run_study(registry, "regen", data={"path": str(registry.cwd / "regen.h5")}, base=BAD)
    write_h5(registry.cwd / "regen.h5", make_signal_data(300, seed=5))
    with pytest.raises(HpoError, match="changed since study 'regen' ran"):
        _promote(registry, "regen-model", study=study)
    # A study launched before the fingerprint was a study attribute: its parent run's is read.
    optuna.load_study(study_name=study, storage=registry.storage_url).set_user_attr("data_sha256", "")
    with pytest.raises(HpoError, match="changed since study 'regen' ran"):
        _promote(registry, "regen-model", study=study)
    assert not MlflowClient(registry.tracking_uri).search_registered_models("name='regen-model'")


def _forged_study(registry, name: str, **attrs) -> None:
    """A copy of the registry study plus a best trial whose attributes are `attrs`."""
    optuna.copy_study(from_study_name=registry.study, from_storage=registry.storage_url,
                      to_storage=registry.storage_url, to_study_name=name)
    study = optuna.load_study(study_name=name, storage=registry.storage_url)
    real = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))[0]
    study.add_trial(optuna.trial.create_trial(
        value=1e-4, params=real.params, distributions=real.distributions,
        user_attrs={k: v for k, v in {**real.user_attrs, "val_metrics": None, **attrs}.items() if v is not None}))


def test_only_the_trials_own_model_is_loaded(registry):
    # Rule: a model URI that is not a model logged by the trial's own run (another trial's model,
    # a folder) is refused before it is loaded; a best trial without a model is a one-line refusal.
    study = optuna.load_study(study_name=registry.study, storage=registry.storage_url)
    a, b = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))[:2]
    _forged_study(registry, "forged-run", mlflow_run_id=a.user_attrs["mlflow_run_id"],
                  mlflow_model_uri=b.user_attrs[MODEL_URI_KEY])
    _forged_study(registry, "forged-path", mlflow_model_uri=str(registry.cwd))
    _forged_study(registry, "no-model", mlflow_model_uri=None)
    for study_name, fragment in [("forged-run", "is not a model logged by the trial's own MLflow run"),
                                 ("forged-path", "is not a model logged by the trial's own MLflow run"),
                                 ("no-model", "logged no model, so there is nothing to promote")]:
        with pytest.raises(HpoError) as info:
            _promote(registry, "forged-model", study=study_name)
        assert fragment in str(info.value) and "\n" not in str(info.value)
    assert not MlflowClient(registry.tracking_uri).search_registered_models("name='forged-model'")


def test_a_quote_in_the_model_name_is_one_line_and_writes_nothing(registry):
    # Rule: a name that cannot go into a models:/ URI or a registry filter is refused up front.
    with pytest.raises(HpoError) as info:
        _promote(registry, "o'brien")
    assert "model name \"o'brien\"" in str(info.value) and "\n" not in str(info.value)
    names = [m.name for m in MlflowClient(registry.tracking_uri).search_registered_models()]
    assert "o'brien" not in names
