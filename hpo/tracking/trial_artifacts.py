"""What a finished training run leaves in its MLflow run: final metrics, plots and the model.

    hpo train run.yaml     # or every COMPLETE trial of `hpo worker`
"""

from __future__ import annotations

import json

import numpy as np

from hpo.data.contract import Dataset
from hpo.data.lazy import H5Source
from hpo.tracking import plots
from hpo.tracking.runs import Tracker
from hpo.training.evaluate import predict
from hpo.training.evaluate import takes_exposure
from hpo.training.loop import TrainResult

LOSS_CURVES = "plots/loss_curves.png"  # a pruned trial logs this one too


def log_trial_artifacts(
    tracker: Tracker, run_id: str, result: TrainResult, ds: Dataset | H5Source, *, log_model: bool = True
) -> str | None:
    """Logs final validation metrics, the plots and (unless `log_model` is false) the model of a run.

    Plots (validation split): plots/loss_curves.png, plots/predicted_vs_true.png (1:1 line),
    plots/residuals_vs_mass.png, plots/residuals_vs_redshift.png, and for a model with a sigma
    head plots/sigma_calibration.png.

    Returns:
        The logged model's URI, or None when no model was logged (tag hpo.model_logged false).
    """
    val = ds.subset(result.split.val)  # max_clusters keeps the first N, so indices still hold
    tracker.log_metrics(run_id, {f"final_val_{k}": v for k, v in result.val_metrics.items()})
    tracker.log_metrics(run_id, {"epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
                                 "train_seconds": result.seconds})
    if result.sigma_scale is not None:  # train.calibrate_sigma: the factor the calibration set sigma to
        tracker.log_metrics(run_id, {"sigma_scale": result.sigma_scale})
    if result.shift is not None:  # train.calibrate_bias: the shift per bin of exposure
        tracker.log_metrics(run_id, {"bias_shift_max_abs": float(np.max(np.abs(result.shift.shift)))})
        tracker.log_text(run_id, json.dumps(result.shift.as_dict(), indent=1), "calibration/bias_shift.json")
    tracker.log_figure(run_id, plots.loss_curves(result.history), LOSS_CURVES)
    mu, sigma = predict(result.model, val.images, val.redshift, exposure=val.exposure_s)
    true = val.log_mass
    assert true is not None  # train() refuses a data set without labels
    tracker.log_figure(run_id, plots.predicted_vs_true(mu, true, sigma), "plots/predicted_vs_true.png")
    tracker.log_figure(run_id, plots.residuals_vs(true, mu, true, xlabel="true log10 M500"),
                       "plots/residuals_vs_mass.png")
    tracker.log_figure(run_id, plots.residuals_vs(val.redshift, mu, true, xlabel="redshift z"),
                       "plots/residuals_vs_redshift.png")
    if sigma is not None:
        tracker.log_figure(run_id, plots.sigma_calibration(mu, true, sigma), "plots/sigma_calibration.png")
    if not log_model:
        tracker.set_tags(run_id, {"hpo.model_logged": "false"})
        return None
    example = {"images": val.images[:2], "redshift": val.redshift[:2]}
    if takes_exposure(result.model):
        example["exposure_s"] = val.exposure_s[:2]
    return tracker.log_model(run_id, result.model, {k: np.asarray(v) for k, v in example.items()},
                             training_ranges(ds, result.split.train))


def training_ranges(ds: Dataset | H5Source, train: np.ndarray) -> dict[str, list[float]]:
    """[min, max] of the training clusters' redshift, log_mass, total counts (photons per cluster,
    all channels) and, if the file has it, exposure_s."""
    if not len(train):
        return {}
    columns = {"redshift": ds.redshift, "log_mass": ds.log_mass, "exposure_s": ds.exposure_s}
    ranges = {k: [float(np.min(v[train])), float(np.max(v[train]))]
              for k, v in columns.items() if v is not None}
    counts = total_counts(ds, train)
    ranges["total_counts"] = [float(counts.min()), float(counts.max())]
    return ranges


def total_counts(ds: Dataset | H5Source, idx: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """(len(idx),) photons of each cluster at `idx`, read `chunk` clusters at a time."""
    read = ds.read_images if isinstance(ds, H5Source) else (lambda rows: ds.images[rows])
    return np.concatenate([read(idx[i : i + chunk]).sum(axis=(1, 2, 3), dtype=np.float64)
                           for i in range(0, len(idx), chunk)])
