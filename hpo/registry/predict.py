"""`hpo predict`: log mass and its uncertainty for every cluster of a file, written as CSV.

    hpo predict xray-cluster-mass@champion data/new.h5 -o predictions.csv
"""

from __future__ import annotations

import csv
from pathlib import Path

from hpo.data.contract import load_dataset
from hpo.errors import DataContractError
from hpo.model.metrics import residual_metrics
from hpo.registry import models


def predict_file(ref: str, data_path: str | Path, out_csv: str | Path, tracking_uri: str | None = None) -> dict:
    """Writes index, log_mass and sigma per cluster; returns a summary (with metrics if labelled)."""
    ds = load_dataset(data_path, require_labels=False)
    model = models.load(ref, tracking_uri)
    expected = _image_shape(model)
    if expected is not None and tuple(ds.image_shape) != expected:
        shown = "x".join(map(str, ds.image_shape))
        raise DataContractError(
            f"{data_path}: key 'images' holds {shown} images (height x width x channels); model "
            f"{ref} takes {'x'.join(map(str, expected))}")
    mu, sigma = models.predict_arrays(model, ds.images, ds.redshift)
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with out_csv.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "log_mass", "sigma"])
        for i, m in enumerate(mu):
            writer.writerow([i, f"{m:.6f}", "" if sigma is None else f"{sigma[i]:.6f}"])
    summary: dict = {"n": len(ds), "csv": str(out_csv)}
    if ds.log_mass is not None:
        summary.update(residual_metrics(mu, ds.log_mass, sigma))
    return summary


def _image_shape(model) -> tuple[int, ...] | None:
    """(H, W, C) from the logged model's metadata (or an older model's input signature); None
    if it records neither."""
    recorded = (model.metadata.metadata or {}).get("image_shape")
    if recorded:
        return tuple(int(d) for d in recorded)
    schema = model.metadata.get_input_schema()
    for spec in getattr(schema, "inputs", None) or []:
        if getattr(spec, "name", None) == "images" and len(getattr(spec, "shape", ())) == 4:
            return tuple(int(d) for d in spec.shape[1:])
    return None
