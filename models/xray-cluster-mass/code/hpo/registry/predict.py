"""`hpo predict`: log mass and its uncertainty for every cluster of a file, written as CSV.

    hpo predict xray-cluster-mass@champion data/new.h5 -o predictions.csv
"""

from __future__ import annotations

import csv
from pathlib import Path

from hpo.data.contract import load_dataset
from hpo.model.metrics import residual_metrics
from hpo.registry import models


def predict_file(ref: str, data_path: str | Path, out_csv: str | Path, tracking_uri: str | None = None) -> dict:
    """Writes index, log_mass and sigma per cluster; returns a summary (with metrics if labelled)."""
    ds = load_dataset(data_path, require_labels=False)
    model = models.load(ref, tracking_uri)
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
