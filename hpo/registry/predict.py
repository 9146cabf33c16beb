"""`hpo predict`: a catalogue of log mass, its uncertainty and quality flags, as FITS and CSV.

    hpo predict xray-cluster-mass@champion clusters.h5 -o masses     # masses.fits and masses.csv

One row per cluster of the file: index, cluster_id (the file's IDs, else the index), log_mass
(log10 M500/Msun), sigma (dex; empty without a sigma head), flags (bit mask, see flags.py) and
flag_names, and reference_log_mass where the file carries a catalogue's own mass. With one, the
comparison (scatter and bias of ours minus theirs, on the clusters that have a value) is
returned and saved beside the tables as <stem>_vs_reference.json and .png.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from hpo.data.contract import Dataset
from hpo.data.contract import EXPOSURE_KEY
from hpo.data.contract import load_dataset
from hpo.errors import DataContractError
from hpo.model.metrics import residual_metrics
from hpo.outputs import atomic_outputs
from hpo.outputs import check_outputs
from hpo.registry import flags as quality
from hpo.registry import models

TABLE_SUFFIXES = (".csv", ".fits", ".fit")


def predict_file(ref: str, data_path: str | Path, out: str | Path, tracking_uri: str | None = None, *,
                 overwrite: bool = False) -> dict:
    """Writes <stem>.fits and <stem>.csv (stem: `out` less a .csv or .fits suffix); returns a summary.

    The tables (and, for a file with reference/log_mass, <stem>_vs_reference.json and .png)
    appear together or not at all (hpo.outputs); they are checked before the model loads.

    Returns:
        n, csv, fits, flagged (clusters with any flag), flags (clusters per flag),
        flags_unchecked; residual metrics if the file has log_mass; comparison (n, scatter,
        bias, rmse, source, plot, json) if it has reference/log_mass.

    Raises:
        DataContractError: the file breaks the contract, its images are not the model's shape,
            or it lacks exposure_s and the model takes it.
        OutputError: an output exists (without `overwrite`), is the data file, or cannot be
            written.
    """
    ds = load_dataset(data_path, require_labels=False)
    stem = _stem(Path(out))
    csv_path, fits_path = stem.with_name(stem.name + ".csv"), stem.with_name(stem.name + ".fits")
    reference = ds.reference.get("log_mass")
    compared = reference is not None
    plotted = compared and bool(np.isfinite(reference).any())
    paths = [fits_path, csv_path]
    if compared:
        paths.append(stem.with_name(stem.name + "_vs_reference.json"))
    if plotted:
        paths.append(stem.with_name(stem.name + "_vs_reference.png"))
    check_outputs(paths, inputs=[data_path], overwrite=overwrite)  # before the model loads
    model = models.load(ref, tracking_uri)
    expected = _image_shape(model)
    if expected is not None and tuple(ds.image_shape) != expected:
        shown = "x".join(map(str, ds.image_shape))
        raise DataContractError(
            f"{data_path}: key 'images' holds {shown} images (height x width x channels); model "
            f"{ref} takes {'x'.join(map(str, expected))}")
    if ds.exposure_s is None and models.takes_exposure(model):
        raise DataContractError(
            f"{data_path}: missing key '{EXPOSURE_KEY}' (each cluster's exposure, s), which model "
            f"{ref} needs: it was trained with model.use_exposure")
    mu, sigma = models.predict_arrays(model, ds.images, ds.redshift, exposure=ds.exposure_s)
    flags, unchecked = quality.cluster_flags(ds.images, ds.redshift, mu, ds.exposure_s,
                                             models.training_ranges(model))
    columns = _columns(ds, mu, sigma, flags)
    meta = {"model": ref, "data": str(data_path), "flags_unchecked": unchecked,
            "reference_mass_source": ds.attrs.get("reference_mass_source")}
    summary: dict[str, Any] = {
        "n": len(ds), "csv": str(csv_path), "fits": str(fits_path),
        "flagged": int(np.count_nonzero(flags)),
        "flags": {name: int(np.count_nonzero(flags & bit)) for name, bit in quality.FLAGS.items()},
        "flags_unchecked": unchecked,
    }
    if ds.log_mass is not None:
        summary.update(residual_metrics(mu, ds.log_mass, sigma))
    with atomic_outputs(paths, inputs=[data_path], overwrite=overwrite) as temps:
        _write_fits(temps[0], columns, meta)
        _write_csv(temps[1], columns)
        if compared:
            comparison = compare(mu, sigma, reference, ds.attrs.get("reference_mass_source"))
            comparison["json"] = str(paths[2])
            if plotted:
                comparison["plot"] = str(paths[3])
                _plot_comparison(temps[3], mu, sigma, reference, comparison["source"])
            temps[2].write_text(json.dumps(comparison, indent=1) + "\n")
            summary["comparison"] = comparison
    return summary


def compare(mu: np.ndarray, sigma: np.ndarray | None, reference: np.ndarray,
            source: str | None) -> dict[str, Any]:
    """Ours against a catalogue's mass where it has one: n, source, and (for n > 0) scatter,
    bias and rmse of ours minus theirs."""
    have = np.isfinite(reference)
    out: dict[str, Any] = {"n": int(have.sum()), "source": source or "reference/log_mass"}
    if have.any():
        diff = mu[have] - reference[have]
        out.update(scatter=float(np.std(diff)), bias=float(np.mean(diff)),
                   rmse=float(np.sqrt(np.mean(diff**2))))
    return out


def _plot_comparison(path: Path, mu: np.ndarray, sigma: np.ndarray | None, reference: np.ndarray,
                     source: str) -> None:
    from hpo.tracking import plots

    have = np.isfinite(reference)
    fig = plots.ours_vs_reference(mu[have], reference[have], None if sigma is None else sigma[have], source)
    try:
        fig.savefig(path, dpi=120, format="png")
    finally:
        plots.close(fig)


def _stem(out: Path) -> Path:
    return out.with_suffix("") if out.suffix.lower() in TABLE_SUFFIXES else out


def _columns(ds: Dataset, mu: np.ndarray, sigma: np.ndarray | None, flags: np.ndarray) -> dict[str, np.ndarray]:
    index = np.arange(len(ds), dtype=np.int64)
    columns = {
        "index": index,
        "cluster_id": ds.cluster_id if ds.cluster_id is not None else index,
        "log_mass": mu.astype(np.float64),
        "sigma": sigma.astype(np.float64) if sigma is not None else np.full(len(ds), np.nan),
        "flags": flags,
        "flag_names": np.array([quality.names(int(f)) for f in flags], dtype=object),
    }
    if "log_mass" in ds.reference:
        columns["reference_log_mass"] = ds.reference["log_mass"].astype(np.float64)
    return columns


def _write_csv(path: Path, columns: dict[str, np.ndarray]) -> None:
    floats = {"log_mass", "sigma", "reference_log_mass"}
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(list(columns))
        for row in zip(*columns.values(), strict=True):
            writer.writerow([("" if not np.isfinite(v) else f"{v:.6f}") if k in floats else v
                             for k, v in zip(columns, row, strict=True)])


def _write_fits(path: Path, columns: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    from astropy.table import Table

    table = Table()
    for name, values in columns.items():
        table[name] = _fits_strings(values) if values.dtype == object else values
    # FITS has no logarithmic units (astropy writes none): what each column is, in words.
    described = {"index": "row of the input file", "cluster_id": "the input's cluster_id, else the row",
                 "log_mass": "log10(M500 / Msun)", "sigma": "1-sigma uncertainty of log_mass, dex",
                 "flags": "bit mask of quality flags", "flag_names": "the flags set, by name",
                 "reference_log_mass": "the input catalogue's log10(M500 / Msun), for comparison"}
    for name in table.colnames:
        table[name].description = described[name]
    table.meta["MODEL"] = meta["model"][:68]
    table.meta["DATA"] = Path(meta["data"]).name[:68]
    if meta.get("reference_mass_source"):
        table.meta["REFMASS"] = str(meta["reference_mass_source"])[:68]
    table.meta["comments"] = [f"flags bit {bit}: {name}, {quality.MEANING[name]}"
                              for name, bit in quality.FLAGS.items()]
    if meta["flags_unchecked"]:
        table.meta["comments"].append("not checked (the model records no training range): "
                                      + ", ".join(meta["flags_unchecked"]))
    table.write(path, format="fits", overwrite=True)


def _fits_strings(values: np.ndarray) -> np.ndarray:
    """Strings for a FITS column: ASCII as text; others UTF-8 encoded, as FITS strings are ASCII."""
    text = values.astype(str)
    if all(v.isascii() for v in text):
        return text
    return np.array([v.encode() for v in text], dtype=bytes)


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
