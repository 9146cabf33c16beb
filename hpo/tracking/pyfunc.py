"""The MLflow pyfunc wrapper that lets plain MLflow load a trained network and predict log mass.

    mlflow.pyfunc.load_model("models:/xray-cluster-mass@champion").predict(
        {"images": X, "redshift": z})     # -> DataFrame with log_mass (and sigma)
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

KERAS_ARTIFACT = "keras_model"


class XrayMassModel(mlflow.pyfunc.PythonModel):
    """Loads the saved Keras network; predicts from {"images": (N,H,W,C), "redshift": (N,)}."""

    # The logged tensor signature checks inputs; MLflow's type-hint validation takes list[...]
    # inputs only, and without hints it warns on every load.
    _skip_type_hint_validation = True

    def load_context(self, context):  # noqa: ANN001, ANN201 (MLflow inspects the signature)
        import keras

        import hpo.model.layers  # noqa: F401  registers the custom layers before loading

        self.model = keras.models.load_model(context.artifacts[KERAS_ARTIFACT], compile=False)

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        images, redshift = unpack_inputs(model_input)
        out = np.asarray(
            self.model.predict({"images": images, "redshift": redshift}, batch_size=256, verbose=0)
        )
        frame = pd.DataFrame({"log_mass": out[:, 0].astype(np.float64)})
        if out.shape[1] > 1:
            frame["sigma"] = out[:, 1].astype(np.float64)
        return frame


def unpack_inputs(model_input: Any) -> tuple[np.ndarray, np.ndarray]:
    """(images float32 (N,H,W,C), redshift float32 (N,1)) from a dict of arrays or lists."""
    if isinstance(model_input, pd.DataFrame):
        model_input = {k: np.stack(model_input[k].to_numpy()) for k in model_input.columns}
    if not isinstance(model_input, dict) or not {"images", "redshift"} <= set(model_input):
        raise ValueError('input must be a mapping with keys "images" (N,H,W,C) and "redshift" (N,)')
    images = np.asarray(model_input["images"], np.float32)
    redshift = np.asarray(model_input["redshift"], np.float32).reshape(-1, 1)
    if images.ndim != 4 or images.shape[0] != redshift.shape[0]:
        raise ValueError(
            f"images must be (N, H, W, C) and redshift (N,), got {images.shape} and {redshift.shape}"
        )
    return images, redshift
