"""A trained network as an MLflow pyfunc model: its files, metadata and requirements.

    hpo train configs/x.yaml      # every run's model is logged through pyfunc_arguments
    save_model_dir(network, "models/xray-cluster-mass", example)      # a model shipped as a folder

A model carries the saved network (.keras), a copy of hpo/inference as its code (the layers the
network names, the input handling, the pyfunc wrapper) and nothing else of hpo.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
from mlflow.models import ModelSignature
from mlflow.types import ColSpec
from mlflow.types import Schema

import hpo.inference
from hpo.inference.inputs import EXPOSURE
from hpo.inference.inputs import EXPOSURE_INPUTS
from hpo.inference.inputs import INPUTS
from hpo.inference.pyfunc import KERAS_ARTIFACT

INFERENCE = Path(hpo.inference.__file__).resolve().parent
# What hpo/inference imports, and Keras' default backend (KERAS_BACKEND unset), under which a
# network saved on either backend loads.
REQUIREMENTS = ["mlflow>=3.17", "keras>=3.15", "tensorflow>=2.21", "numpy>=2.0", "pandas"]


def model_metadata(network: Any, training_ranges: dict[str, list[float]] | None = None) -> dict[str, Any]:
    """What the model takes (`inputs`, `input_names`), its image shape and, if given, the
    [min, max] of its training clusters (`training_ranges`: what `hpo predict` flags outside of)."""
    names = list(network.input)
    h, w, c = (int(d) for d in network.input["images"].shape[1:])
    inputs = EXPOSURE_INPUTS if EXPOSURE in names else INPUTS
    metadata: dict[str, Any] = {"inputs": inputs.replace("(N, H, W, C)", f"(N, {h}, {w}, {c})"),
                                "image_shape": [h, w, c], "input_names": names}
    if training_ranges:
        metadata["training_ranges"] = training_ranges
    return metadata


@contextmanager
def pyfunc_arguments(
    network: Any, example: dict[str, np.ndarray], metadata: dict[str, Any], tmp: Path
) -> Iterator[dict[str, Any]]:
    """The arguments of mlflow.pyfunc's save_model and log_model for `network`, its files under
    `tmp` (a folder the caller removes afterwards)."""
    path = tmp / "model.keras"
    network.save(path)
    code = tmp / hpo.inference.CODE_NAME
    shutil.copytree(INFERENCE, code, ignore=shutil.ignore_patterns("__pycache__", "entry.py"))
    has_sigma = int(network.output.shape[-1]) > 1
    outputs = Schema([ColSpec("double", "log_mass")] + ([ColSpec("double", "sigma")] if has_sigma else []))
    yield {
        "python_model": str(INFERENCE / "entry.py"),
        "artifacts": {KERAS_ARTIFACT: str(path)},
        "code_paths": [str(code)],
        # No input schema: MLflow would refuse integer counts before predict converts them.
        "signature": ModelSignature(outputs=outputs),
        "metadata": metadata,
        "input_example": {k: np.asarray(v, np.float32) for k, v in example.items()},
        "pip_requirements": REQUIREMENTS,
    }


def save_model_dir(network: Any, out: str | Path, example: dict[str, np.ndarray],
                   metadata: dict[str, Any]) -> Path:
    """Writes `network` as a pyfunc model folder `out` (new or empty); returns it."""
    with tempfile.TemporaryDirectory() as tmp, pyfunc_arguments(network, example, metadata, Path(tmp)) as kw:
        mlflow.pyfunc.save_model(str(out), **kw)
    return Path(out)
