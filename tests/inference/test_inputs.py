"""What a saved model takes (hpo/inference/inputs.py): photon counts of any real dtype; wrong
shapes refused in one line."""

from __future__ import annotations

import numpy as np
import pytest

from hpo.registry import models
from hpo.inference.inputs import unpack_inputs
from tests.conftest import make_signal_data
from tests._registry import MODEL
from tests._registry import log_exposure_model


@pytest.mark.parametrize("dtype", ["int32", "int64", "uint16", "float64"])
def test_any_real_dtype_becomes_float32(dtype):
    # Rule: integer counts and float64 arrays are cast to float32, values unchanged.
    images = np.arange(2 * 4 * 4 * 2).reshape(2, 4, 4, 2).astype(dtype)
    x, z = unpack_inputs({"images": images, "redshift": np.array([0.1, 0.2], dtype)}, (4, 4, 2))
    assert x.dtype == np.float32 and z.dtype == np.float32 and z.shape == (2, 1)
    np.testing.assert_array_equal(x, images.astype(np.float32))


@pytest.mark.parametrize(("images", "redshift", "fragment"), [
    (np.zeros((2, 5, 4, 2)), np.zeros(2), "images must be (N, 4, 4, 2) for this model, got shape (2, 5, 4, 2)"),
    (np.zeros((4, 4, 2)), np.zeros(1), "images must be (N, 4, 4, 2)"),
    (np.zeros((2, 4, 4, 2)), np.zeros(3), "redshift must be (2,), one per image, got shape (3,)"),
    (np.zeros((2, 4, 4, 2)), np.array(["a", "b"]), "redshift must hold real numbers"),
    (np.zeros((2, 4, 4, 2), complex), np.zeros(2), "images must hold real numbers"),
])
def test_wrong_inputs_are_one_line(images, redshift, fragment):
    # Rule: a wrong shape or dtype is a one-line ValueError saying what was expected and given.
    with pytest.raises(ValueError) as info:
        unpack_inputs({"images": images, "redshift": redshift}, (4, 4, 2))
    assert fragment in str(info.value) and "\n" not in str(info.value)


@pytest.mark.slow
def test_the_champion_predicts_integer_counts_like_floats(registry):
    # Rule: plain MLflow loads the champion and predicts int32 counts and float64 redshifts exactly
    # as float32 ones; its MLmodel says what it takes.
    model = models.load(f"{MODEL}@champion", registry.tracking_uri)
    arrays = make_signal_data(8, seed=5)  # int32 photon counts, float32 redshift
    counts = model.predict({"images": arrays["images"], "redshift": arrays["redshift"].astype(np.float64)})
    floats = model.predict({"images": arrays["images"].astype(np.float32), "redshift": arrays["redshift"]})
    np.testing.assert_allclose(counts["log_mass"], floats["log_mass"], rtol=1e-6)
    assert "integer" in model.metadata.metadata["inputs"] and "(N, 16, 16, 2)" in model.metadata.metadata["inputs"]
    with pytest.raises(ValueError) as info:
        model.predict({"images": arrays["images"][:, :8], "redshift": arrays["redshift"]})
    assert "images must be (N, 16, 16, 2) for this model, got shape (8, 8, 16, 2)" in str(info.value)


@pytest.fixture(scope="module")
def exposure_model(tmp_path_factory):
    """(keras model, pyfunc model) of an untrained network that takes exposure_s, logged to MLflow."""
    import mlflow.pyfunc

    path = tmp_path_factory.mktemp("exposure-model")
    net, uri, _ = log_exposure_model(
        path, "exposure", {"redshift": [0.05, 1.0], "log_mass": [13.0, 15.0], "exposure_s": [150.0, 2500.0]})
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(path)
        return net, mlflow.pyfunc.load_model(uri)


@pytest.mark.slow
def test_a_model_with_the_exposure_round_trips_through_pyfunc(exposure_model):
    # Rule: a logged model that takes exposure_s predicts through plain MLflow as the network
    # does, says so in its metadata, and refuses input without exposure_s in one line naming it.
    net, model = exposure_model
    arrays = make_signal_data(6, seed=2, exposure=(150.0, 2500.0))
    frame = model.predict({k: arrays[k] for k in ("images", "redshift", "exposure_s")})
    direct = net.predict({"images": arrays["images"].astype("f4"), "redshift": arrays["redshift"][:, None],
                          "exposure_s": arrays["exposure_s"][:, None]}, verbose=0)
    np.testing.assert_allclose(frame["log_mass"], direct[:, 0], rtol=1e-5)
    np.testing.assert_allclose(frame["sigma"], direct[:, 1], rtol=1e-5)
    meta = model.metadata.metadata
    assert meta["input_names"] == ["images", "redshift", "exposure_s"] and "exposure_s" in meta["inputs"]
    assert models.takes_exposure(model) and models.training_ranges(model)["exposure_s"] == (150.0, 2500.0)
    with pytest.raises(ValueError) as info:
        model.predict({"images": arrays["images"], "redshift": arrays["redshift"]})
    assert "missing key 'exposure_s'" in str(info.value) and "\n" not in str(info.value)
    mu, sigma = models.predict_arrays(model, arrays["images"], arrays["redshift"], exposure=arrays["exposure_s"],
                                      tta=True)
    assert mu.shape == sigma.shape == (6,)


@pytest.mark.slow
def test_models_from_before_the_exposure_still_predict():
    # Rule: the published champion (logged before model.use_exposure existed) loads and predicts,
    # and an exposure_s it does not take changes nothing.
    from pathlib import Path

    published = models.load(str(Path(__file__).resolve().parents[2] / "models" / "xray-cluster-mass"))
    rng = np.random.default_rng(0)
    images = rng.poisson(0.3, (4, 50, 50, 10)).astype(np.float32)  # its input schema wants float32
    z = rng.uniform(0.1, 0.9, 4).astype(np.float32)
    assert not models.takes_exposure(published)
    plain, _ = models.predict_arrays(published, images, z)
    given, _ = models.predict_arrays(published, images, z, exposure=np.full(4, 200.0, np.float32))
    np.testing.assert_allclose(plain, given)
