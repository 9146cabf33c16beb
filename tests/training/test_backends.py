"""Keras backends: a model trained and saved on one backend loads and predicts the same on the other."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow

BACKENDS = ("tensorflow", "jax")

TRAIN = """
import json, sys
import numpy as np
import keras
from hpo.config import apply_overrides
from hpo.data.lazy import open_dataset
from hpo.training import train
from hpo.training.evaluate import predict
ds = open_dataset(sys.argv[1])
cfg = apply_overrides({"model.conv_blocks": [[4], [4]], "model.pool.size": 2, "model.dense": [16],
                       "train.epochs": 2, "train.batch_size": 32, "train.loss.type": "gaussian_nll"})
result = train(cfg, ds)
result.model.save(sys.argv[2])
mu, sigma = predict(result.model, ds.images[:50], ds.redshift[:50], tta=True)
print(json.dumps({"backend": keras.backend.backend(), "mu": mu.tolist(), "sigma": sigma.tolist()}))
"""

LOAD = """
import json, sys
import keras
import hpo.model  # registers the custom layers
from hpo.data.lazy import open_dataset
from hpo.training.evaluate import predict
ds = open_dataset(sys.argv[1])
model = keras.models.load_model(sys.argv[2], compile=False)
mu, sigma = predict(model, ds.images[:50], ds.redshift[:50], tta=True)
print(json.dumps({"backend": keras.backend.backend(), "mu": mu.tolist(), "sigma": sigma.tolist()}))
"""


def _run(backend: str, script: str, *args: str) -> dict:
    pytest.importorskip(backend)
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True,
                         text=True, timeout=300, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize(("trained_on", "loaded_on"), [BACKENDS, BACKENDS[::-1]])
def test_a_model_saved_on_one_backend_predicts_the_same_on_the_other(signal_h5, tmp_path, trained_on, loaded_on):
    # Rule: the .keras file a run saves does not depend on the backend that trained it: loaded on
    # the other backend it gives the same mu and sigma (TTA included) to float32 tolerance.
    path = str(tmp_path / "model.keras")
    trained = _run(trained_on, TRAIN, str(signal_h5), path)
    loaded = _run(loaded_on, LOAD, str(signal_h5), path)
    assert (trained["backend"], loaded["backend"]) == (trained_on, loaded_on)
    assert np.std(trained["mu"]) > 0  # a trained model, not a constant
    np.testing.assert_allclose(loaded["mu"], trained["mu"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(loaded["sigma"], trained["sigma"], rtol=1e-4, atol=1e-5)
