"""The registered model takes photon counts as they come: any real dtype, wrong shapes refused in one line."""

from __future__ import annotations

import numpy as np
import pytest

from hpo.registry import models
from hpo.tracking.pyfunc import unpack_inputs
from tests.conftest import make_signal_data
from tests.registry.conftest import MODEL


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
