"""The training loop learns, reports its metrics every epoch and fails cleanly on NaN."""

from __future__ import annotations

import numpy as np
import pytest

from hpo.config import apply_overrides
from hpo.data import load_dataset
from hpo.errors import DataContractError
from hpo.errors import TrialFailed
from hpo.training import train
from tests.conftest import make_signal_data
from tests.conftest import write_h5

SMALL = {
    "model.conv_blocks": [[8], [8]],
    "model.pool.size": 2,
    "model.dense": [32, 16],
    "train.batch_size": 32,
    "train.optimizer.learning_rate": 3e-3,
}


@pytest.mark.slow
def test_small_model_learns_a_synthetic_signal(signal_h5):
    # Rule: validation residual std falls well below the label std when counts carry the mass.
    ds = load_dataset(signal_h5)
    cfg = apply_overrides({**SMALL, "train.epochs": 25})
    result = train(cfg, ds)
    label_std = float(np.std(ds.log_mass))
    assert result.val_metrics["residual_std"] < 0.5 * label_std
    assert result.epochs_run == 25
    assert len(result.history["val_residual_std"]) == 25
    assert {"train_residual_std", "val_bias", "val_rmse", "val_outlier_frac"} <= set(result.history)


def test_nan_loss_fails_the_run(signal_h5):
    # Rule: a diverging run raises TrialFailed naming the epoch, it never trains on silently.
    ds = load_dataset(signal_h5)
    cfg = apply_overrides({**SMALL, "train.epochs": 3, "train.optimizer.learning_rate": 1e12,
                           "model.input.transform": "none", "model.input.standardize": False})
    with pytest.raises(TrialFailed, match="epoch"):
        train(cfg, ds)


@pytest.mark.slow
def test_likelihood_training_predicts_a_calibrated_sigma(signal_h5):
    # Rule: the Gaussian NLL model outputs sigma; with an MSE warm start it trains, and the
    # coverage and NLL metrics are reported every epoch.
    ds = load_dataset(signal_h5)
    cfg = apply_overrides({**SMALL, "train.epochs": 20,
                           "train.loss": {"type": "gaussian_nll", "warm_start_epochs": 5}})
    result = train(cfg, ds)
    assert {"val_nll", "val_coverage68", "train_coverage68"} <= set(result.history)
    assert len(result.history["val_nll"]) == 20
    assert 0.3 < result.val_metrics["coverage68"] <= 1.0
    assert result.val_metrics["residual_std"] < 0.6 * float(np.std(ds.log_mass))


@pytest.mark.slow
def test_sigma_calibrated_on_validation_is_part_of_the_saved_model(signal_h5, tmp_path):
    # Rule: with train.calibrate_sigma the model's last layer scales sigma so that 68.3% of the
    # validation split lies within 1 sigma; the validation metrics reported are the scaled
    # model's (mu, and so residual std and bias, unchanged), and the saved model keeps the scale.
    import keras

    ds = load_dataset(signal_h5)
    base = {**SMALL, "train.epochs": 6, "train.loss": {"type": "gaussian_nll", "warm_start_epochs": 2}}
    plain = train(apply_overrides(base), ds)
    result = train(apply_overrides({**base, "train.calibrate_sigma": True}), ds)
    assert result.sigma_scale > 0 and result.sigma_scale != 1.0 and plain.sigma_scale is None
    assert abs(result.val_metrics["coverage68"] - 0.6827) <= 1.5 / len(result.split.val)
    assert result.val_metrics["residual_std"] == pytest.approx(plain.val_metrics["residual_std"], rel=1e-3)
    path = tmp_path / "m.keras"
    result.model.save(path)
    layer = keras.saving.load_model(path, compile=False).get_layer("sigma_scale")
    assert float(layer.scale.numpy()) == pytest.approx(result.sigma_scale)


def test_calibrating_sigma_needs_a_sigma():
    # Rule: calibrate_sigma on a point estimator (mse) is refused, naming the key.
    from hpo.errors import ConfigError

    with pytest.raises(ConfigError, match="calibrate_sigma needs a sigma"):
        apply_overrides({"train.calibrate_sigma": True, "train.loss.type": "mse"})


def test_early_stopping_and_best_weights(signal_h5):
    # Rule: patience stops the run early; the returned model is the best epoch's.
    ds = load_dataset(signal_h5)
    cfg = apply_overrides({**SMALL, "train.epochs": 40, "train.early_stopping_patience": 1,
                           "train.optimizer.learning_rate": 0.05})
    result = train(cfg, ds)
    assert result.epochs_run < 40
    best = min(result.history["val_residual_std"])
    assert result.val_metrics["residual_std"] == pytest.approx(best, rel=1e-4)


def test_mixed_precision_and_xla_options_train_and_restore_the_policy(signal_h5):
    # Rule: the GPU options run (here on the CPU); the global dtype policy is restored afterwards.
    import keras

    ds = load_dataset(signal_h5)
    cfg = apply_overrides({**SMALL, "train.epochs": 1, "train.mixed_precision": True,
                           "train.jit_compile": True})
    result = train(cfg, ds)
    assert np.isfinite(result.val_metrics["residual_std"])
    assert keras.mixed_precision.global_policy().name == "float32"


def test_a_model_that_takes_the_exposure_refuses_a_file_without_it(signal_h5):
    # Rule: model.use_exposure on a file without exposure_s is one clear error naming the key,
    # before any training.
    cfg = apply_overrides({**SMALL, "train.epochs": 1, "model.use_exposure": True})
    with pytest.raises(DataContractError, match=r"missing key 'exposure_s'.*model.use_exposure"):
        train(cfg, load_dataset(signal_h5))


@pytest.mark.slow
def test_the_exposure_input_pays_off_on_mixed_depths(tmp_path):
    # Rule: when counts scale with an exposure spanning a factor of 16, a model that takes the
    # exposure (head or rate) beats the same model without it.
    data = write_h5(tmp_path / "mixed.h5", make_signal_data(400, exposure=(150.0, 2500.0)))
    ds = load_dataset(data)
    base = {**SMALL, "train.epochs": 20, "data.test_fraction": 0.0, "data.val_fraction": 0.2}
    without = train(apply_overrides(base), ds).val_metrics["residual_std"]
    for mode in ("head", "rate"):
        cfg = apply_overrides({**base, "model.use_exposure": True, "model.exposure_mode": mode})
        with_it = train(cfg, ds).val_metrics["residual_std"]
        assert with_it < 0.8 * without, (mode, with_it, without)
