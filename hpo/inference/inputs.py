"""What a saved model takes, checked and converted: images, redshift and (if it takes it) exposure.

    unpack_inputs({"images": counts, "redshift": z}, (50, 50, 10))   # -> float32 arrays
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

EXPOSURE = "exposure_s"
# What predict takes, in the logged model's metadata (its signature holds no input schema: MLflow
# would refuse every dtype but one before predict could convert it).
INPUTS = ('"images": (N, H, W, C) photon counts and "redshift": (N,), each of any integer or '
          "float dtype (cast to float32)")
EXPOSURE_INPUTS = INPUTS.replace(' and "redshift": (N,)', ', "redshift": (N,) and "exposure_s": (N,) '
                                 "seconds > 0")


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
