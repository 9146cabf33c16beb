"""The floors: the oracle floor recovers injected scatter; the counts baseline sits in between; the
feature baseline (trees on aperture photometry) learns a learnable signal, deterministically."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpo.data.baseline import data_summary
from hpo.data.baseline import feature_baseline
from hpo.data.baseline import FEATURE_MIN_CLUSTERS
from hpo.data.baseline import floors
from hpo.data.baseline import photometry_features
from hpo.data.contract import load_dataset
from hpo.data.cosmology import FlatLCDM
from hpo.data.photometry import APERTURE_RADII
from hpo.data.photometry import aperture_photometry
from hpo.data.sim import simulator as sim
from hpo.data.split import split_indices
from hpo.errors import DataContractError


def _write(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)
    return path


def _linear_truth(n: int, noise: float, seed: int = 0) -> dict[str, np.ndarray]:
    """log M = a log L + b log kT + c log E(z) + N(0, noise), with tiny Poisson images."""
    rng = np.random.default_rng(seed)
    z = rng.uniform(0.05, 1.0, n)
    log_lx = rng.uniform(42.0, 45.0, n)
    kt = 10 ** rng.uniform(0.0, 1.0, n)
    log_e = np.log10(FlatLCDM().e(z))
    log_mass = 0.5 * log_lx + 0.8 * np.log10(kt) - 1.0 * log_e - 8.0 + rng.normal(0, noise, n)
    images = rng.poisson(3.0, size=(n, 8, 8, 3)).astype(np.int32)
    return {
        "images": images,
        "redshift": z,
        "log_mass": log_mass,
        "truth/log_lx": log_lx,
        "truth/kT": kt,
    }


def test_oracle_floor_recovers_injected_noise(tmp_path: Path) -> None:
    # Known linear truths plus 0.05 dex noise: the oracle floor is that noise.
    ds = load_dataset(_write(tmp_path / "lin.h5", _linear_truth(3000, 0.05)))
    out = floors(ds)
    assert out["oracle_floor"] == pytest.approx(0.05, abs=0.005)
    assert out["n_fit"] == 2400 and out["n_eval"] == 600
    assert out["counts_baseline"] > out["oracle_floor"]  # these images carry no signal


def test_no_truth_gives_no_oracle(tmp_path: Path) -> None:
    # Without truth/kT the oracle floor is None; the counts baseline is still given.
    arrays = _linear_truth(200, 0.05)
    del arrays["truth/kT"]
    out = floors(load_dataset(_write(tmp_path / "nokt.h5", arrays)))
    assert out["oracle_floor"] is None and np.isfinite(out["counts_baseline"])
    arrays = {k: v for k, v in arrays.items() if not k.startswith("truth/")}
    assert floors(load_dataset(_write(tmp_path / "none.h5", arrays)))["oracle_floor"] is None


def test_missing_log_mass_is_refused(tmp_path: Path) -> None:
    # Floors need labels: a prediction-only file is refused, naming log_mass.
    arrays = {k: v for k, v in _linear_truth(50, 0.05).items() if k != "log_mass"}
    ds = load_dataset(_write(tmp_path / "nolab.h5", arrays), require_labels=False)
    with pytest.raises(DataContractError, match="log_mass"):
        floors(ds)


@pytest.fixture(scope="module")
def mock(tmp_path_factory: pytest.TempPathFactory):
    """600 clusters of the default simulator (eRASS:8), exposure_s included."""
    return load_dataset(sim.write_mock(tmp_path_factory.mktemp("mock") / "mock.h5", 600, 3,
                                       sim.SimConfig()))


def test_floors_of_a_mock_are_ordered(mock) -> None:
    # On our mock: oracle floor < feature baseline < counts baseline < spread of log mass: the
    # trees beat a constant predictor clearly and the linear fit too, by a sane margin; their bias
    # is small; the same number twice (every key, the trees' included).
    out = floors(mock)
    spread = float(np.std(mock.log_mass))
    assert out["oracle_floor"] < out["feature_baseline"] < out["counts_baseline"] < spread
    assert 0.05 < out["oracle_floor"] < 0.15
    assert out["feature_baseline"] < 0.6 * spread
    assert 0.5 * out["counts_baseline"] < out["feature_baseline"] < 0.95 * out["counts_baseline"]
    assert abs(out["feature_baseline_bias"]) < 0.05
    assert out["feature_baseline_n_fit"] == out["n_fit"] == 480 and out["n_eval"] == 120
    assert floors(mock) == out


def test_a_study_records_the_feature_baseline(mock, monkeypatch) -> None:
    # The parent run's data summary carries the trees beside the other floors, fitted on at most
    # SUMMARY_TREES_MAX_FIT of the fit clusters and scored on all the eval clusters.
    assert data_summary(mock)["floors"] == floors(mock)
    monkeypatch.setattr("hpo.data.baseline.SUMMARY_TREES_MAX_FIT", 100)
    capped = data_summary(mock)["floors"]
    assert capped["feature_baseline_n_fit"] == 100 and capped["n_eval"] == 120
    assert capped["feature_baseline"] != floors(mock)["feature_baseline"]


def test_feature_baseline_scores_given_clusters(mock) -> None:
    # On a model's own split: fitted on its train clusters, scored on its test clusters, the
    # counts reported; deterministic, and another seed is another (close) number.
    split = split_indices(len(mock), val_fraction=0.1, test_fraction=0.2, seed=0)
    out = feature_baseline(mock, split.train, split.test)
    assert out["n_train"] == split.train.size and out["n_test"] == split.test.size == 120
    assert 0.0 < out["residual_std"] < 0.6 * float(np.std(mock.log_mass[split.test]))
    assert feature_baseline(mock, split.train, split.test) == out
    assert feature_baseline(mock, split.train, split.test, seed=1)["residual_std"] == pytest.approx(
        out["residual_std"], abs=0.03)


def test_feature_baseline_with_and_without_exposure(mock) -> None:
    # exposure_s, where present, is one more feature (log10 s) and turns the luminosity proxies
    # into rates; a file without it still gets the trees.
    bare = dataclasses.replace(mock, exposure_s=None)
    assert photometry_features(mock).shape[1] == photometry_features(bare).shape[1] + 1
    with_exp, without = floors(mock), floors(bare)
    assert without["counts_baseline"] == with_exp["counts_baseline"]
    assert np.isfinite(without["feature_baseline"]) and without["feature_baseline"] < without["counts_baseline"]


def test_feature_baseline_refuses_too_few_clusters(mock) -> None:
    # Fewer than FEATURE_MIN_CLUSTERS to fit: one clear DataContractError naming the minimum and
    # the count; floors() of a small file give the other floors and say why there are no trees.
    train, test = np.arange(FEATURE_MIN_CLUSTERS - 1), np.arange(100, 120)
    with pytest.raises(DataContractError, match=rf"needs at least {FEATURE_MIN_CLUSTERS} clusters "
                                                rf"to fit, got {FEATURE_MIN_CLUSTERS - 1}"):
        feature_baseline(mock, train, test)
    small = floors(mock.subset(np.arange(40)))
    assert small["feature_baseline"] is None and np.isfinite(small["counts_baseline"])
    assert small["feature_baseline_skipped"] == (
        f"needs at least {FEATURE_MIN_CLUSTERS} clusters to fit, got 32")
    assert "feature_baseline" not in floors(mock, features=False)


def test_tiny_images_get_no_trees(tmp_path: Path) -> None:
    # 2 x 2 pixels leave no background annulus: floors() still gives the linear floors.
    arrays = _linear_truth(200, 0.05)
    arrays["images"] = arrays["images"][:, :2, :2]
    out = floors(load_dataset(_write(tmp_path / "tiny.h5", arrays)))
    assert out["feature_baseline"] is None and "3 x 3" in out["feature_baseline_skipped"]
    assert np.isfinite(out["counts_baseline"])


def test_aperture_photometry_of_a_source_on_a_flat_background() -> None:
    # A flat background of 2 counts per pixel and channel plus 1000 counts in the central pixels:
    # the annulus measures the background, the net counts are the source in every aperture.
    images = np.full((3, 50, 50, 2), 2.0, dtype=np.float32)
    images[:, 24:26, 24:26, 0] += 250.0
    phot = aperture_photometry(images)
    assert phot.counts.shape == (3, len(APERTURE_RADII), 2) and phot.background_area == 1236
    assert np.allclose(phot.background, 2.0)
    yy, xx = np.mgrid[:50, :50] + 0.5 - 25.0
    assert np.all(np.diff(phot.areas) > 0) and phot.areas[3] == np.sum(yy**2 + xx**2 <= 10.0**2)
    assert np.allclose(phot.net_counts()[..., 0], 1000.0) and np.allclose(phot.net_counts()[..., 1], 0.0)


def test_count_rates_rescue_the_counts_baseline_on_mixed_depths(tmp_path: Path) -> None:
    # On a file of mixed depths (150-2500 s) the classic estimator needs the exposure: on count
    # rates (with_exposure) it beats the plain counts baseline; without with_exposure the floors
    # are as before (no new key).
    cfg = sim.load_sim_config(None, "mixed")
    ds = load_dataset(sim.write_mock(tmp_path / "mixed.h5", 1000, 3, cfg))
    plain = floors(ds)
    out = floors(ds, with_exposure=True)
    assert "counts_rate_baseline" not in plain and out["counts_baseline"] == plain["counts_baseline"]
    assert out["counts_rate_baseline"] < 0.9 * out["counts_baseline"]
