"""The custom layers a saved network names: their output on known input, and a save and load
that keeps it (this module runs on both Keras backends: see the Makefile's JAX_CORE)."""

from __future__ import annotations

import zipfile

import keras
import numpy as np
import pytest

import hpo.model  # noqa: F401  registers the layers, as every process of hpo does
from hpo.inference.layers import CUSTOM_OBJECTS
from hpo.inference.layers import CountsTransform
from hpo.inference.layers import ExposureScale
from hpo.inference.layers import LogExposure
from hpo.inference.layers import LogMassShift
from hpo.inference.layers import RandomDihedral
from hpo.inference.layers import SigmaScale
from hpo.inference.layers import load_network

COUNTS = np.array([0.0, 1.0, 3.0, 99.0], "float32").reshape(1, 1, 4, 1)


@pytest.mark.parametrize(("kind", "expected"), [
    ("none", COUNTS), ("log1p", np.log1p(COUNTS)), ("asinh", np.arcsinh(COUNTS)), ("sqrt", np.sqrt(COUNTS)),
])
def test_counts_transform_is_the_named_function(kind, expected):
    # Rule: each transform is its numpy twin, pixel by pixel.
    out = keras.ops.convert_to_numpy(CountsTransform(kind)(COUNTS))
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_an_unknown_transform_is_refused():
    with pytest.raises(ValueError, match="transform must be one of"):
        CountsTransform("cube")


def test_exposure_scale_gives_counts_at_the_reference_exposure():
    # Rule: images x ref_s / exposure, per cluster: 400 s at ref 200 s halves the counts.
    images = np.ones((2, 2, 2, 1), "float32") * np.array([4.0, 6.0], "float32").reshape(2, 1, 1, 1)
    out = keras.ops.convert_to_numpy(ExposureScale(200.0)(images, np.array([[400.0], [100.0]], "float32")))
    np.testing.assert_allclose(out[:, 0, 0, 0], [2.0, 12.0])
    with pytest.raises(ValueError, match="ref_s must be > 0"):
        ExposureScale(0.0)


def test_log_exposure_is_standardised():
    out = keras.ops.convert_to_numpy(LogExposure(mean=2.0, std=0.5)(np.array([[100.0], [1000.0]], "float32")))
    np.testing.assert_allclose(out[:, 0], [0.0, 2.0], atol=1e-6)


def test_random_dihedral_only_moves_pixels_and_only_in_training():
    # Rule: outside training the images pass unchanged; in training each image becomes one of the
    # 8 symmetries of the square (the same pixels, counts kept).
    x = np.arange(2 * 3 * 3 * 1, dtype="float32").reshape(2, 3, 3, 1).repeat(16, axis=0)
    layer = RandomDihedral(seed=3)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x, training=False)), x)
    out = keras.ops.convert_to_numpy(layer(x, training=True))
    for image, source in zip(out, x):
        views = [np.rot90(v, k, axes=(0, 1)) for v in (source, source[:, ::-1]) for k in range(4)]
        assert any(np.array_equal(image, v) for v in views)
    assert any(not np.array_equal(a, b) for a, b in zip(out, x))  # 32 draws: something moved


def test_sigma_scale_scales_only_sigma():
    layer = SigmaScale()
    x = np.array([[14.0, 0.2], [13.5, 0.1]], "float32")
    layer.build(x.shape)
    layer.scale.assign(1.5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), [[14.0, 0.3], [13.5, 0.15]], rtol=1e-6)


def test_log_mass_shift_is_numpy_interp_in_log_exposure():
    # Rule: the shift is piecewise linear in log10 exposure through the knots and flat beyond them,
    # as np.interp; sigma is untouched.
    layer = LogMassShift(bins=3)
    layer.build((None, 2), (None, 1))
    knots, shifts = np.log10([300.0, 800.0, 2000.0]), np.array([0.1, -0.05, 0.2])
    layer.knots.assign(knots.astype("float32"))
    layer.shift.assign(shifts.astype("float32"))
    t = np.array([[100.0], [300.0], [500.0], [800.0], [1500.0], [9000.0]], "float32")
    x = np.tile(np.array([[14.0, 0.2]], "float32"), (len(t), 1))
    out = keras.ops.convert_to_numpy(layer(x, t))
    np.testing.assert_allclose(out[:, 0], 14.0 + np.interp(np.log10(t[:, 0]), knots, shifts), atol=1e-5)
    np.testing.assert_allclose(out[:, 1], 0.2)
    one = LogMassShift(bins=1)
    one.build((None, 2))
    one.shift.assign(np.array([0.3], "float32"))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(one(x))[:, 0], 14.3, atol=1e-6)


def _network() -> keras.Model:
    """A tiny functional network through every custom layer, with its calibration set."""
    images = keras.Input((4, 4, 2), name="images")
    exposure = keras.Input((1,), name="exposure_s")
    x = ExposureScale(500.0)(images, exposure)
    x = RandomDihedral(seed=0)(CountsTransform("asinh")(x))
    x = keras.layers.Concatenate()([keras.layers.Flatten()(x), LogExposure(2.7, 0.3)(exposure)])
    x = keras.layers.Dense(2, kernel_initializer="ones")(x)
    x = SigmaScale(name="sigma_scale")(x)
    out = LogMassShift(bins=2, name="log_mass_shift")(x, exposure)
    net = keras.Model({"images": images, "exposure_s": exposure}, out)
    net.get_layer("sigma_scale").scale.assign(2.0)
    net.get_layer("log_mass_shift").knots.assign(np.array([2.5, 3.0], "float32"))
    net.get_layer("log_mass_shift").shift.assign(np.array([0.1, -0.1], "float32"))
    return net


def test_a_network_of_every_layer_saves_and_loads_the_same(tmp_path):
    # Rule: a saved network names its layers "hpo>ClassName" (as every earlier model did) and loads
    # with the same weights and outputs, from the inference module's classes alone.
    net = _network()
    feed = {"images": np.random.default_rng(0).poisson(3.0, (5, 4, 4, 2)).astype("float32"),
            "exposure_s": np.array([[200.0], [400.0], [900.0], [1200.0], [3000.0]], "float32")}
    net.save(tmp_path / "net.keras")
    with zipfile.ZipFile(tmp_path / "net.keras") as saved:
        config = saved.read("config.json").decode()
    assert all(f'"registered_name": "{name}"' in config for name in CUSTOM_OBJECTS)
    again = load_network(tmp_path / "net.keras")
    np.testing.assert_allclose(again.predict(feed, verbose=0), net.predict(feed, verbose=0), rtol=1e-6)
    assert set(CUSTOM_OBJECTS.values()) <= {type(layer) for layer in again.layers}
