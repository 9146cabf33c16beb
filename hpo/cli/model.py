"""Commands on models: promote, pull, predict.

    hpo promote quickstart --model xray-cluster-mass --tta
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from hpo.cli import app
from hpo.cli import OVERWRITE_HELP
from hpo.registry.gate import DEFAULT_MIN_GAIN

STORAGE_HELP = "Optuna storage URL (default: HPO_STORAGE or sqlite:///hpo.db)."
TRACKING_HELP = "MLflow tracking URI (default: MLFLOW_TRACKING_URI or sqlite:///mlflow.db)."


@app.command()
def promote(
    name: str = typer.Argument(..., help="Study name."),
    model: str = typer.Option(..., "--model", help="Registered model name, e.g. xray-cluster-mass."),
    storage: str | None = typer.Option(None, "--storage", help=STORAGE_HELP),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (default: the study's)."),
    top_k: int = typer.Option(3, "--top-k", min=1, help="Best trials scored again on the validation split."),
    tta: bool = typer.Option(False, "--tta", help="Average predictions over the 8 flips and right-angle rotations."),
    select_by: str | None = typer.Option(
        None, "--select-by", help="val_residual_std, val_rmse or val_nll (default: the study's metric)."),
    min_gain: float = typer.Option(
        DEFAULT_MIN_GAIN, "--min-gain", min=0,
        help="How much better (in the metric's unit) the winner must be to replace the champion."),
    compare_on: Path | None = typer.Option(
        None, "--compare-on",
        help="A labelled data file neither model trained on: compare with the champion there "
             "(for a champion of other data or split settings)."),
) -> None:
    """Choose the best trial on validation, score it once on the test split, register it, maybe move `champion`."""
    from hpo.registry.promote import promote as run_promote

    r = run_promote(name, model, storage_url=storage, tracking_uri=tracking_uri, top_k=top_k, tta=tta,
                    select_by=select_by, min_gain=min_gain, compare_on=compare_on)
    floors = ", ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in (r.floors or {}).items())
    typer.echo(
        f"registered {r.model_name} version {r.version} (trial {r.trial}, chosen by validation "
        f"{r.selected_by} {r.val_value:.4f}); test, scored once{' with TTA' if tta else ''} on "
        f"{r.test_clusters} clusters: residual std {r.test_metrics['residual_std']:.4f} dex, rmse "
        f"{r.test_metrics['rmse']:.4f}, bias {r.test_metrics['bias']:+.4f}"
        + (f" (floors: {floors} dex)" if floors else "") + f"; {r.message}")


@app.command()
def pull(
    ref: str = typer.Argument(..., help="NAME@alias, NAME/version, models:/NAME@alias, models:/NAME/version or runs:/RUN_ID/model."),
    out: Path = typer.Option(..., "-o", "--out", help="Folder to download into: new, empty, or one an "
                             "earlier hpo pull wrote (then --overwrite)."),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help=TRACKING_HELP),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an earlier pull in the folder: exactly the files it wrote (its "
        ".hpo-pull.json lists them); any other file there stays."),
) -> None:
    """Download a registered model (loadable with mlflow.pyfunc.load_model)."""
    from hpo.registry.models import pull as run_pull

    typer.echo(f"model in {run_pull(ref, out, tracking_uri, overwrite=overwrite)}")


@app.command()
def predict(
    model: str = typer.Argument(..., help="NAME@alias, NAME/version, models:/..., runs:/... or a pulled folder."),
    data: Path = typer.Argument(..., help="Data file (cut-outs); log_mass, exposure_s, cluster_id and "
                                "reference/log_mass are optional."),
    out: Path = typer.Option(..., "-o", "--out", help="Where to write: OUT.fits and OUT.csv (a .csv or .fits "
                             "suffix is replaced); index, cluster_id, log_mass, sigma, flags, flag_names."),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help=TRACKING_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Log mass, its uncertainty and quality flags for every cluster in a file, as a FITS and a CSV table."""
    from hpo.registry.predict import predict_file

    summary = predict_file(model, data, out, tracking_uri, overwrite=overwrite)
    flagged = ", ".join(f"{k} {v}" for k, v in summary["flags"].items() if v)
    typer.echo(f"wrote {summary['n']} clusters to {summary['fits']} and {summary['csv']}"
               + (f"; flagged {summary['flagged']} ({flagged})" if flagged else "; none flagged")
               + (f"; not checked, as the model records no training ranges: {', '.join(summary['flags_unchecked'])}"
                  if summary["flags_unchecked"] else ""))
    comparison = summary.get("comparison")
    if comparison and comparison["n"]:
        typer.echo(f"against {comparison['source']} on {comparison['n']} clusters: scatter "
                   f"{comparison['scatter']:.3f} dex, bias {comparison['bias']:+.3f} dex (ours - theirs); "
                   f"plot {comparison['plot']}, numbers {comparison['json']}")
    elif comparison:
        typer.echo(f"{comparison['source']}: no cluster has a finite value; nothing to compare")
    typer.echo(json.dumps(summary))
