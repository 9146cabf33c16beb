"""`hpo report NAME`: study-level plots and the trials table, logged to the study's parent run."""

from __future__ import annotations

import typer

from hpo.cli import app


@app.command()
def report(
    name: str = typer.Argument(..., help="Study name."),
    storage: str | None = typer.Option(
        None, "--storage", help="Optuna storage URL (default: HPO_STORAGE or sqlite:///hpo.db)."),
    tracking_uri: str | None = typer.Option(
        None, "--tracking-uri",
        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else the study's)."),
) -> None:
    """Log the study's plots (history, importances, parallel coordinates, slices, scan) and trials table."""
    from hpo.tracking.report import report as run_report

    r = run_report(name, storage_url=storage, tracking_uri=tracking_uri)
    typer.echo(f"study '{r.study}': logged {len(r.artifacts)} artifacts to MLflow run {r.run_id}: "
               + ", ".join(r.artifacts))
    for plot, why in r.skipped.items():
        typer.echo(f"  skipped {plot}: {why}")
