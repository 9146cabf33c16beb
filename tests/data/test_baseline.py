"""The floors: the oracle floor recovers injected scatter; the counts baseline sits in between."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from hpo.data.baseline import floors
from hpo.data.contract import load_dataset
from hpo.data.cosmology import FlatLCDM
from hpo.data.sim import simulator as sim
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


def test_floors_of_a_mock_are_ordered(tmp_path: Path) -> None:
    # On our mock: oracle floor < counts baseline < spread of log mass; deterministic.
    ds = load_dataset(sim.write_mock(tmp_path / "mock.h5", 600, 3, sim.SimConfig()))
    out = floors(ds)
    assert out["oracle_floor"] < out["counts_baseline"] < float(np.std(ds.log_mass))
    assert 0.05 < out["oracle_floor"] < 0.15
    assert floors(ds) == out


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
