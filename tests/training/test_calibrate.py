"""Calibration on clusters never trained on: the shift of log mass per exposure bin, the scale of
sigma, the layers that apply them, and the refusals before any training."""

from __future__ import annotations

import h5py
import keras
import numpy as np
import pytest

from hpo.config import apply_overrides
from hpo.data import load_dataset
from hpo.data.sim.simulator import GENERATOR
from hpo.errors import ConfigError
from hpo.errors import DataContractError
from hpo.errors import TrialFailed
from hpo.inference.layers import LogMassShift
from hpo.training import train
from hpo.training.calibrate import bias_shift
from hpo.training.calibrate import Shift
from hpo.training.evaluate import predict
from tests.conftest import make_signal_data
from tests.conftest import write_h5
from tests.training.test_loop import SMALL

EXPOSURE = (150.0, 2500.0)


def _simulated(path, n, seed):
    path = write_h5(path, make_signal_data(n, seed=seed, exposure=EXPOSURE))
    with h5py.File(path, "a") as f:  # what hpo simulate writes
        f.attrs["generator"], f.attrs["seed"] = GENERATOR, seed
    return path


def test_a_shift_linear_in_log_exposure_is_removed_between_the_end_knots():
    # Rule: each knot's shift is minus its bin's mean residual at the bin's mean log exposure; a
    # residual linear in log exposure is then removed exactly between the end knots, and beyond
    # them the shift stays at the end knot's value.
    rng = np.random.default_rng(0)
    exposure = 10 ** rng.uniform(np.log10(150), np.log10(2500), 4000)
    true = rng.uniform(13, 15, exposure.size)
    mu = true + 0.05 * (np.log10(exposure) - 2.7)
    shift = bias_shift(mu, true, exposure, bins=5)
    assert np.all(np.diff(shift.log_exposure_knots) > 0) and len(shift.shift) == 5
    t = np.log10(exposure)
    inside = (t >= shift.log_exposure_knots[0]) & (t <= shift.log_exposure_knots[-1])
    fixed = shift(mu, exposure)
    assert np.abs(fixed - true)[inside].max() < 1e-12
    assert np.allclose((fixed - true)[t < shift.log_exposure_knots[0]],
                       0.05 * (t[t < shift.log_exposure_knots[0]] - shift.log_exposure_knots[0]))
    # Without the exposure, or with one bin: one shift, the mean residual.
    for one in (bias_shift(mu, true, None, bins=5), bias_shift(mu, true, exposure, bins=1)):
        assert len(one.shift) == 1 and one.shift[0] == pytest.approx(-(mu - true).mean())
        assert (one(mu, exposure) - true).mean() == pytest.approx(0, abs=1e-12)


def test_bins_that_share_an_exposure_are_one_bin():
    # Rule: a file of two depths gives two knots (the rest repeat the last), each shift the mean
    # residual of that depth, and no bin straddles them.
    true = np.zeros(1000)
    exposure = np.where(np.arange(1000) < 300, 200.0, 1600.0)
    mu = np.where(exposure == 200.0, 0.1, -0.02)
    shift = bias_shift(mu, true, exposure, bins=4)
    assert list(10 ** shift.log_exposure_knots) == pytest.approx([200, 1600, 1600, 1600])
    assert list(shift.shift) == pytest.approx([-0.1, 0.02, 0.02, 0.02])
    assert np.abs(shift(mu, exposure)).max() < 1e-12


@pytest.mark.parametrize("bins", [1, 2, 5])
def test_the_layer_applies_the_fitted_shift_to_log_mass_only(bins):
    # Rule: LogMassShift computes what Shift computes (np.interp, flat beyond the end knots) on
    # the first column, and leaves sigma alone; with one bin it needs no exposure.
    rng = np.random.default_rng(bins)
    knots = np.sort(rng.uniform(2.0, 3.5, bins)) if bins > 1 else np.zeros(1)
    fitted = Shift(knots, rng.normal(0, 0.05, bins))
    exposure = 10 ** rng.uniform(1.8, 3.7, 200)  # also beyond both end knots
    x = np.stack([rng.uniform(13, 15, 200), rng.uniform(0.1, 0.3, 200)], axis=1).astype("float32")
    layer = LogMassShift(bins)
    layer.build(x.shape)
    layer.knots.assign(knots.astype("float32"))
    layer.shift.assign(fitted.shift.astype("float32"))
    out = keras.ops.convert_to_numpy(layer(x, exposure.reshape(-1, 1).astype("float32")))
    assert np.allclose(out[:, 0], fitted(x[:, 0].astype(np.float64), exposure), atol=2e-5)
    assert np.array_equal(out[:, 1], x[:, 1])
    if bins == 1:
        assert np.allclose(keras.ops.convert_to_numpy(layer(x))[:, 0], x[:, 0] + fitted.shift[0], atol=2e-5)
    point = keras.ops.convert_to_numpy(layer(x[:, :1], exposure.reshape(-1, 1).astype("float32")))
    assert point.shape == (200, 1) and np.allclose(point[:, 0], out[:, 0])  # an MSE model's output


@pytest.mark.slow
def test_calibrated_on_a_file_of_its_own_the_saved_model_is_unbiased_and_covered_there(tmp_path):
    # Rule: with data.calibration_path, the shift and the sigma scale are fitted on that file's
    # clusters (none trained on): the saved model's mean residual there is 0 and 68.3% lie within
    # 1 sigma; the validation metrics reported are the calibrated model's.
    train_h5 = _simulated(tmp_path / "train.h5", 300, seed=0)
    cal_h5 = _simulated(tmp_path / "cal.h5", 500, seed=1)
    cfg = apply_overrides({**SMALL, "train.epochs": 4, "model.use_exposure": True,
                           "model.exposure_mode": "head",
                           "train.loss": {"type": "gaussian_nll", "warm_start_epochs": 1},
                           "train.calibrate_sigma": True, "train.calibrate_bias": True,
                           "train.calibrate_bias_bins": 1, "data.calibration_path": str(cal_h5)})
    result = train(cfg, load_dataset(train_h5))
    assert result.shift is not None and result.shift.shift[0] != 0 and result.sigma_scale != 1
    path = tmp_path / "m.keras"
    result.model.save(path)
    model = keras.saving.load_model(path, compile=False)
    cal = load_dataset(cal_h5)
    mu, sigma = predict(model, cal.images, cal.redshift, exposure=cal.exposure_s)
    assert abs(np.mean(mu - cal.log_mass)) < 1e-4
    assert abs(np.mean(np.abs(mu - cal.log_mass) < sigma) - 0.6827) <= 1.5 / len(cal)
    val = load_dataset(train_h5).subset(result.split.val)
    mu_v, _ = predict(model, val.images, val.redshift, exposure=val.exposure_s)
    assert result.val_metrics["bias"] == pytest.approx(np.mean(mu_v - val.log_mass), abs=1e-4)


def test_a_calibration_file_is_read_once_while_it_is_unchanged(tmp_path):
    # Rule: the trials of one worker share the calibration file they read (one read, as the
    # training file); a file rewritten since is read again.
    from hpo.training.loop import read_calibration

    path = _simulated(tmp_path / "cal.h5", 50, seed=1)
    first = read_calibration(path)
    assert read_calibration(str(path)) is first
    _simulated(path, 60, seed=2)
    again = read_calibration(path)
    assert again is not first and len(again) == 60


def test_calibration_clusters_that_were_trained_on_or_too_few_are_refused_before_training(tmp_path):
    # Rule: a calibration file holding the training clusters (the same file; the same simulator
    # seed, which draws the same clusters at another depth) or too few clusters for its bins is
    # refused with one line naming it, before an epoch is trained.
    train_h5 = _simulated(tmp_path / "train.h5", 300, seed=0)
    twin = _simulated(tmp_path / "twin.h5", 500, seed=0)
    small = _simulated(tmp_path / "small.h5", 500, seed=1)
    base = {**SMALL, "train.epochs": 50, "model.use_exposure": True, "train.calibrate_bias": True}
    ds = load_dataset(train_h5)
    with pytest.raises(DataContractError, match="same file"):
        train(apply_overrides({**base, "data.calibration_path": str(train_h5)}), ds)
    twin_seed = r"twin.h5: holds the training file's clusters \(both simulated with seed 0"
    with pytest.raises(DataContractError, match=twin_seed):
        train(apply_overrides({**base, "data.calibration_path": str(twin)}), ds)
    with pytest.raises(TrialFailed, match=r"5 bin\(s\) needs 2000 calibration clusters and .*small.h5 holds 500"):
        train(apply_overrides({**base, "data.calibration_path": str(small)}), ds)
    with pytest.raises(TrialFailed, match="the validation split holds 30"):
        train(apply_overrides({**base, "train.calibrate_bias_bins": 1}), ds)
    with pytest.raises(ConfigError, match="calibrate_bias_bins"):
        apply_overrides({"train.calibrate_bias_bins": 0})
