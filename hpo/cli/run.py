"""`hpo train`: one training run of one configuration, logged to MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from hpo.cli import app


@app.command()
def train(
    config: Path = typer.Argument(..., help="YAML overrides of the run config (nested or dotted keys)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object, last line."),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or sqlite:///mlflow.db)."),
    experiment: str = typer.Option("train", "--experiment", help="MLflow experiment of the run."),
    run_name: str | None = typer.Option(None, "--run-name", help="MLflow run name (default: the config's file name)."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="Keras progress output."),
) -> None:
    """Train one configuration on its data file and log params, epochs, plots and model to MLflow."""
    from hpo.config import load_run_config
    from hpo.data.lazy import open_dataset
    from hpo.data.recipe import require_calibration_file
    from hpo.data.recipe import require_data_file

    cfg = load_run_config(config)
    require_data_file(cfg.data.path, config)
    require_calibration_file(cfg.data.calibration_path)
    # Bad input fails here, before TensorFlow loads.
    dataset = open_dataset(cfg.data.path, max_in_memory_gb=cfg.data.max_in_memory_gb)

    from hpo.tracking import Tracker
    from hpo.tracking.recorder import MlflowRecorder
    from hpo.trial.runner import run_trial

    tracker = Tracker(tracking_uri)
    tracker.check()
    recorder = MlflowRecorder.standalone(tracker, experiment, run_name or config.stem)
    result = run_trial(cfg, dataset, recorder, verbose=min(verbose, 2)).result
    run_id = recorder.run_id
    out = {f"val_{k}": v for k, v in result.val_metrics.items()}
    out.update(epochs_run=result.epochs_run, best_epoch=result.best_epoch,
               seconds=round(result.seconds, 2), mlflow_run_id=run_id)
    if result.sigma_scale is not None:
        out["sigma_scale"] = result.sigma_scale
    if result.shift is not None:
        out["bias_shift"] = result.shift.as_dict()
    if as_json:
        typer.echo(json.dumps(out))
        return
    typer.echo(f"val_residual_std {out['val_residual_std']:.4f} dex after {result.epochs_run} epochs "
               f"(best epoch {result.best_epoch + 1}); MLflow run {run_id}")
    where = "on " + str(cfg.data.calibration_path) if cfg.data.calibration_path else "on the validation split"
    if result.shift is not None:
        shifts = result.shift.shift
        typer.echo(f"calibrated {where}: log mass shifted by {shifts.min():+.3f} to {shifts.max():+.3f} dex "
                   f"({len(set(result.shift.log_exposure_knots.tolist()))} bin(s) of exposure)")
    if result.sigma_scale is not None:
        typer.echo(f"calibrated {where}: sigma scaled by {result.sigma_scale:.3f}")
