"""Model references (NAME@alias, NAME/version, models:/..., runs:/..., a local folder), loaded as pyfunc.

    hpo pull xray-cluster-mass@champion -o champion/
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import mlflow.artifacts
import numpy as np
from mlflow.exceptions import MlflowException

from hpo.errors import TrackingError


def model_uri(ref: str) -> str:
    """An MLflow URI for `ref`: NAME@alias -> models:/NAME@alias, NAME/3 -> models:/NAME/3."""
    if ref.startswith(("models:/", "runs:/", "file:", "s3:", "gs:", "http")) or Path(ref).exists():
        return ref
    if "@" in ref or "/" in ref:
        return f"models:/{ref}"
    raise TrackingError(f"'{ref}' is not a model reference; use NAME@alias, NAME/version, "
                        "models:/..., runs:/... or a downloaded model folder")


def load(ref: str, tracking_uri: str | None = None) -> Any:
    """The pyfunc model behind `ref`."""
    uri = model_uri(ref)
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    try:
        return mlflow.pyfunc.load_model(uri)
    except (MlflowException, OSError) as exc:
        raise TrackingError(f"cannot load model {uri}: {str(exc).splitlines()[0]}") from None


def pull(ref: str, out_dir: str | Path, tracking_uri: str | None = None) -> Path:
    """Downloads the model behind `ref` into `out_dir` (loadable with mlflow.pyfunc.load_model)."""
    uri = model_uri(ref)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        path = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(out), tracking_uri=tracking_uri)
    except (MlflowException, OSError) as exc:
        raise TrackingError(f"cannot download model {uri}: {str(exc).splitlines()[0]}") from None
    return Path(path)


def predict_arrays(model: Any, images: np.ndarray, redshift: np.ndarray, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray | None]:
    """log_mass and sigma (or None) for every cluster, in chunks to bound memory."""
    mus, sigmas = [], []
    for i in range(0, len(images), chunk):
        frame = model.predict({"images": images[i : i + chunk], "redshift": redshift[i : i + chunk]})
        mus.append(frame["log_mass"].to_numpy())
        if "sigma" in frame:
            sigmas.append(frame["sigma"].to_numpy())
    return np.concatenate(mus), (np.concatenate(sigmas) if sigmas else None)
