"""The model builder: each knob changes the built network as the config says."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from hpo.config import apply_overrides
from hpo.model import build_model
from hpo.model import InputStats
from hpo.inference.layers import RandomDihedral
from hpo.model.losses import gaussian_nll

SHAPE = (16, 16, 2)
STATS = InputStats(np.zeros(2), np.ones(2), 14.0, 0.5, 0.5, 0.25)


def _build(overrides: dict, **kw) -> keras.Model:
    return build_model(apply_overrides(overrides).model, image_shape=SHAPE, stats=STATS, **kw)


def _layers(model: keras.Model, cls: type) -> list:
    return [layer for layer in model.layers if isinstance(layer, cls)]


def test_default_architecture_layer_counts():
    # Rule: 5 conv layers in 2 blocks, 2 poolings, 4 hidden dense + 1 output, redshift joined.
    model = _build({})
    assert len(_layers(model, keras.layers.Conv2D)) == 5
    assert len(_layers(model, keras.layers.MaxPooling2D)) == 2
    assert [d.units for d in _layers(model, keras.layers.Dense)] == [512, 256, 128, 64, 1]
    assert model.get_layer("join_redshift") is not None
    out = model.predict({"images": np.zeros((3, *SHAPE), "f4"), "redshift": np.ones((3, 1), "f4")}, verbose=0)
    assert out.shape == (3, 1)
    # The report's initialiser: an untrained net predicts the training mean mass.
    assert np.allclose(out, 14.0, atol=0.5)


def test_filters_override_every_conv_layer_and_kernel_size_applies():
    # Rule: model.filters sets every conv layer (the report's filter scan); kernel_size applies.
    model = _build({"model.filters": 7, "model.kernel_size": 3})
    convs = _layers(model, keras.layers.Conv2D)
    assert {c.filters for c in convs} == {7} and {c.kernel_size for c in convs} == {(3, 3)}


def test_pooling_type_and_batch_norm():
    # Rule: avg pooling replaces max; batch_norm adds one BN per conv layer.
    model = _build({"model.pool.type": "avg", "model.batch_norm": True})
    assert len(_layers(model, keras.layers.AveragePooling2D)) == 2
    assert len(_layers(model, keras.layers.BatchNormalization)) == 5


@pytest.mark.parametrize(("placement", "index", "expected"), [("none", -1, []), ("every_dense", -1, [0, 1, 2, 3]), ("one_dense", 1, [1]), ("one_dense", -1, [3])])
def test_dropout_placement(placement, index, expected):
    # Rule: dropout follows every hidden dense layer, or exactly the one at `index`.
    model = _build({"model.dropout": {"rate": 0.2, "placement": placement, "index": index}})
    assert sorted(int(d.name.removeprefix("dropout")) for d in _layers(model, keras.layers.Dropout)) == expected


@pytest.mark.parametrize(("target", "layers", "n_losses"), [("kernel", "dense", 5 - 1), ("bias", "conv", 5), ("kernel", "both", 9)])
def test_regularizers_add_losses_where_asked(target, layers, n_losses):
    # Rule: a regulariser adds one penalty per regularised layer (dense excludes the output head).
    model = _build({"model.regularizer": {"type": "l2", "target": target, "layers": layers}})
    model({"images": np.zeros((1, *SHAPE), "f4"), "redshift": np.ones((1, 1), "f4")})
    assert len(model.losses) == n_losses


def test_default_model_takes_images_and_redshift_only():
    # Rule: model.use_exposure is off by default and then adds no input and no layer, so models
    # built as before the exposure existed are unchanged.
    model = _build({})
    assert list(model.input) == ["images", "redshift"]
    assert not [layer.name for layer in model.layers if "exposure" in layer.name]


@pytest.mark.parametrize("mode", ["head", "rate", "both"])
def test_exposure_input_changes_predictions_and_survives_saving(mode, tmp_path):
    # Rule: with model.use_exposure the network takes exposure_s, and the same images at another
    # exposure give another prediction; the saved model loads and predicts the same.
    stats = InputStats(np.zeros(2), np.ones(2), 14.0, 0.5, 0.5, 0.25, 1000.0, 3.0, 0.3)
    model = build_model(apply_overrides({"model.use_exposure": True, "model.exposure_mode": mode}).model,
                        image_shape=SHAPE, stats=stats)
    x = {"images": np.random.default_rng(0).poisson(3.0, (4, *SHAPE)).astype("f4"),
         "redshift": np.full((4, 1), 0.3, "f4")}
    short = model.predict({**x, "exposure_s": np.full((4, 1), 200.0, "f4")}, verbose=0)
    deep = model.predict({**x, "exposure_s": np.full((4, 1), 2000.0, "f4")}, verbose=0)
    assert list(model.input) == ["images", "redshift", "exposure_s"]
    assert np.all(np.abs(short - deep) > 1e-4)
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(again.predict({**x, "exposure_s": np.full((4, 1), 200.0, "f4")}, verbose=0),
                               short, rtol=1e-5)


def test_rate_mode_sees_counts_at_the_reference_exposure():
    # Rule: exposure_mode rate feeds counts x t_ref / t: twice the counts at twice the exposure
    # is the same input, so the same prediction.
    stats = InputStats(np.zeros(2), np.ones(2), 14.0, 0.5, 0.5, 0.25, 1000.0, 3.0, 0.3)
    model = build_model(apply_overrides({"model.use_exposure": True, "model.exposure_mode": "rate"}).model,
                        image_shape=SHAPE, stats=stats)
    counts = np.random.default_rng(1).poisson(3.0, (3, *SHAPE)).astype("f4")
    z = np.full((3, 1), 0.3, "f4")
    once = model.predict({"images": counts, "redshift": z, "exposure_s": np.full((3, 1), 500.0, "f4")}, verbose=0)
    twice = model.predict({"images": 2 * counts, "redshift": z, "exposure_s": np.full((3, 1), 1000.0, "f4")},
                          verbose=0)
    np.testing.assert_allclose(once, twice, rtol=1e-5)


def test_no_redshift_ablation():
    # Rule: use_redshift off removes the redshift join.
    model = _build({"model.use_redshift": False})
    assert "join_redshift" not in [layer.name for layer in model.layers]


def test_sigma_head_starts_at_the_training_spread():
    # Rule: the sigma head's initial output is the training std of log mass (the report's init).
    for kind in ("softplus", "log_sigma"):
        model = _build({}, sigma_head=kind)
        out = model.predict({"images": np.zeros((2, *SHAPE), "f4"), "redshift": np.ones((2, 1), "f4")}, verbose=0)
        assert out.shape == (2, 2) and np.allclose(out[:, 1], 0.5, rtol=0.05)


def test_gaussian_nll_matches_hand_computation():
    # Rule: NLL = log sigma + (y - mu)^2 / (2 sigma^2) + log(2 pi) / 2, averaged.
    y = np.array([14.0, 13.0], "f4")
    pred = np.array([[14.2, 0.1], [13.0, 0.5]], "f4")
    hand = np.mean([math.log(0.1) + 0.04 / 0.02, math.log(0.5)]) + 0.5 * math.log(2 * math.pi)
    assert float(gaussian_nll(y, pred)) == pytest.approx(hand, rel=1e-5)


def test_dihedral_augmentation_preserves_counts_and_moves_pixels():
    # Rule: flips and right-angle rotations only move pixels: per-image counts are unchanged.
    x = np.random.default_rng(0).poisson(3.0, (64, 16, 16, 2)).astype("f4")
    for flips, rot90 in ((True, False), (False, True), (True, True)):
        out = np.asarray(RandomDihedral(flips=flips, rot90=rot90, seed=1)(x, training=True))
        assert np.allclose(out.sum(axis=(1, 2, 3)), x.sum(axis=(1, 2, 3)))
        assert not np.allclose(out, x)
    assert np.array_equal(np.asarray(RandomDihedral(seed=1)(x, training=False)), x)
