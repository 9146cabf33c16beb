"""Predictions of a trained model (and their residual metrics), optionally averaged over the 8
symmetries of the square."""

from __future__ import annotations

import logging

import keras
import numpy as np

from hpo.data.contract import Dataset
from hpo.data.contract import EXPOSURE_KEY
from hpo.errors import DataContractError
from hpo.model.metrics import residual_metrics

# Each trial builds a new model, so TensorFlow sees "retracing" that is expected and harmless.
logging.getLogger("tensorflow").addFilter(lambda record: "retracing" not in record.getMessage())


def dihedral_views(images: np.ndarray) -> list[np.ndarray]:
    """The 8 flips and right-angle rotations of (N, H, W, C) square images."""
    views = []
    for transposed in (images, np.swapaxes(images, 1, 2)):
        for flip_h in (False, True):
            for flip_v in (False, True):
                v = transposed[:, :, ::-1] if flip_h else transposed
                views.append(v[:, ::-1] if flip_v else v)
    return views


def predict(
    model: keras.Model,
    images: np.ndarray,
    redshift: np.ndarray,
    *,
    exposure: np.ndarray | None = None,
    tta: bool = False,
    batch_size: int = 512,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Predicted log mass and, for a model with a sigma head, its 1-sigma uncertainty.

    Args:
        model: a network from hpo.model.build_model.
        images: (N, H, W, C) counts.
        redshift: (N,) or (N, 1).
        exposure: (N,) exposure, s; needed by a model built with model.use_exposure, else unused.
        tta: average over the 8 dihedral views (mu averaged; sigma as the root mean square).
        batch_size: clusters per forward pass.

    Returns:
        mu (N,) float64 and sigma (N,) float64 or None.

    Raises:
        DataContractError: the model takes the exposure and none was given.
    """
    extra = {}
    if takes_exposure(model):
        if exposure is None:
            raise DataContractError(f"missing key '{EXPOSURE_KEY}': this model was trained with "
                                    "model.use_exposure and needs each cluster's exposure")
        extra[EXPOSURE_KEY] = np.asarray(exposure, np.float32).reshape(-1, 1)
    z = np.asarray(redshift, np.float32).reshape(-1, 1)
    views = dihedral_views(images) if tta else [images]
    outs = [_forward(model, v, z, extra, batch_size) for v in views]
    return combine_views([o[:, 0] for o in outs], [o[:, 1] for o in outs] if outs[0].shape[1] > 1 else None)


def combine_views(mus: list[np.ndarray], sigmas: list[np.ndarray] | None) -> tuple[np.ndarray, np.ndarray | None]:
    """One prediction from several views of the same clusters (test-time augmentation): log_mass
    the mean of the views', sigma the root mean square of theirs (float64)."""
    mu = np.mean(np.asarray(mus, np.float64), axis=0)
    if sigmas is None:
        return mu, None
    return mu, np.sqrt(np.mean(np.square(np.asarray(sigmas, np.float64)), axis=0))


def score(model: keras.Model, dataset: Dataset, *, tta: bool = False) -> dict[str, float]:
    """Residual metrics of `model`'s predictions on a labelled dataset (NLL and coverage too,
    for a model with a sigma head)."""
    assert dataset.log_mass is not None, "scoring needs log_mass"
    mu, sigma = predict(model, dataset.images, dataset.redshift, exposure=dataset.exposure_s, tta=tta)
    return residual_metrics(mu, dataset.log_mass, sigma)


def takes_exposure(model: keras.Model) -> bool:
    """Whether the network has an exposure_s input (built with model.use_exposure)."""
    inputs = model.input
    return isinstance(inputs, dict) and EXPOSURE_KEY in inputs


def _forward(model: keras.Model, images: np.ndarray, z: np.ndarray, extra: dict[str, np.ndarray],
             batch_size: int) -> np.ndarray:
    # predict_on_batch reuses one compiled function; model.predict builds a data adapter and a
    # callback list per call, which costs a fifth of the time on a validation split every epoch.
    chunks = [
        model.predict_on_batch({"images": images[i : i + batch_size], "redshift": z[i : i + batch_size],
                                **{k: v[i : i + batch_size] for k, v in extra.items()}})
        for i in range(0, len(z), batch_size)
    ]
    return np.concatenate([np.asarray(c) for c in chunks]) if chunks else np.zeros((0, model.output_shape[-1]))
