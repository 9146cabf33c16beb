"""The MLflow pyfunc wrapper that lets plain MLflow load a trained network and predict log mass.

    mlflow.pyfunc.load_model("models:/xray-cluster-mass@champion").predict(
        {"images": X, "redshift": z})     # -> DataFrame with log_mass (and sigma)
    # a model trained with model.use_exposure also takes {"exposure_s": t} (N,) seconds
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

KERAS_ARTIFACT = "keras_model"
# What predict takes, in the logged model's metadata (its signature holds no input schema: MLflow
# would refuse every dtype but one before predict could convert it).
INPUTS = ('"images": (N, H, W, C) photon counts and "redshift": (N,), each of any integer or '
          "float dtype (cast to float32)")
EXPOSURE = "exposure_s"
EXPOSURE_INPUTS = INPUTS.replace(' and "redshift": (N,)', ', "redshift": (N,) and "exposure_s": (N,) '
                                 "seconds > 0")


class XrayMassModel(mlflow.pyfunc.PythonModel):
    """Loads the saved Keras network; predicts from {"images": (N,H,W,C), "redshift": (N,)}.

    INPUTS says what it takes; unpack_inputs converts and checks it.
    """

    # unpack_inputs checks inputs; MLflow's type-hint validation takes list[...] inputs only, and
    # without hints it warns on every load.
    _skip_type_hint_validation = True

    def load_context(self, context):  # noqa: ANN001, ANN201 (MLflow inspects the signature)
        import keras

        import hpo.model.layers  # noqa: F401  registers the custom layers before loading

        self.model = keras.models.load_model(context.artifacts[KERAS_ARTIFACT], compile=False)

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        shape = tuple(int(d) for d in self.model.input["images"].shape[1:])
        with_exposure = EXPOSURE in self.model.input  # models of before model.use_exposure: False
        images, redshift, *exposure = unpack_inputs(model_input, shape, exposure=with_exposure)
        feed = {"images": images, "redshift": redshift}
        if with_exposure:
            feed[EXPOSURE] = exposure[0]
        out = np.asarray(self.model.predict(feed, batch_size=256, verbose=0))
        frame = pd.DataFrame({"log_mass": out[:, 0].astype(np.float64)})
        if out.shape[1] > 1:
            frame["sigma"] = out[:, 1].astype(np.float64)
        return frame


def unpack_inputs(model_input: Any, image_shape: tuple[int, ...] | None = None, *,
                  exposure: bool = False) -> tuple[np.ndarray, ...]:
    """(images float32 (N,H,W,C), redshift float32 (N,1)[, exposure_s float32 (N,1)]) from a dict
    of arrays or lists, or a DataFrame; exposure_s only if `exposure` (the model takes it).

    Any real numeric dtype is taken (photon counts come as integers) and cast to float32.

    Raises:
        ValueError: one line naming the key, the shape or dtype expected and the one given.
    """
    if isinstance(model_input, pd.DataFrame):
        model_input = {k: np.stack(model_input[k].to_numpy()) for k in model_input.columns}
    if not isinstance(model_input, dict) or not {"images", "redshift"} <= set(model_input):
        raise ValueError(f"input must be a mapping with keys {EXPOSURE_INPUTS if exposure else INPUTS}")
    if exposure and EXPOSURE not in model_input:
        raise ValueError(f"missing key '{EXPOSURE}': this model was trained with model.use_exposure; "
                         f"input must be a mapping with keys {EXPOSURE_INPUTS}")
    images = _real(model_input["images"], "images")
    redshift = _real(model_input["redshift"], "redshift")
    if redshift.ndim == 2 and redshift.shape[1] == 1:
        redshift = redshift[:, 0]
    want = "(N, " + ", ".join(map(str, image_shape)) + ")" if image_shape else "(N, H, W, C)"
    if images.ndim != 4 or (image_shape and images.shape[1:] != tuple(image_shape)):
        raise ValueError(f"images must be {want} for this model, got shape {images.shape}")
    if redshift.ndim != 1 or len(redshift) != len(images):
        raise ValueError(f"redshift must be ({len(images)},), one per image, got shape {redshift.shape}")
    if not exposure:
        return images, redshift.reshape(-1, 1)
    t = _real(model_input[EXPOSURE], EXPOSURE)
    t = t[:, 0] if t.ndim == 2 and t.shape[1] == 1 else t
    if t.ndim != 1 or len(t) != len(images):
        raise ValueError(f"{EXPOSURE} must be ({len(images)},), one per image, got shape {t.shape}")
    if not np.all(t > 0):  # NaN fails too
        raise ValueError(f"{EXPOSURE} must be > 0 s, got {int(np.sum(~(t > 0)))} values that are not")
    return images, redshift.reshape(-1, 1), t.reshape(-1, 1)


def _real(value: Any, key: str) -> np.ndarray:
    array = np.asarray(value)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"{key} must hold real numbers (any integer or float dtype), got dtype {array.dtype}")
    return array.astype(np.float32, copy=False)
