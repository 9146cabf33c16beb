"""Commands on studies: launch, worker, status, dashboard, storage-proxy."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from hpo.cli import app
from hpo.cli._table import table

STORAGE_HELP = "Optuna storage URL (default: HPO_STORAGE or sqlite:///hpo.db)."
TRACKING_HELP = "MLflow tracking URI (default: MLFLOW_TRACKING_URI or sqlite:///mlflow.db)."


@app.command()
def launch(
    spec: Path = typer.Argument(..., help="Search-space YAML, e.g. search_spaces/dropout.yaml."),
    workers: int = typer.Option(1, "--workers", min=0, help="Local worker processes; 0 creates the study only."),
    storage: str | None = typer.Option(None, "--storage", help=STORAGE_HELP),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help=TRACKING_HELP),
    launcher: str = typer.Option("local", "--launcher", help="Where workers run: local."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate the space, print it with its budget, start nothing."),
) -> None:
    """Create or resume a study, start its workers, show progress; return when the budget is spent."""
    from hpo.errors import ConfigError
    from hpo.objective.space import load_space
    from hpo.study.launcher import describe
    from hpo.study.launcher import launch as run_launch

    if dry_run:
        typer.echo(describe(load_space(spec)))
        return
    if launcher != "local":
        raise ConfigError(f"--launcher must be one of: local; got {launcher!r}")
    result = run_launch(spec, workers=workers, storage_url=storage, tracking_uri=tracking_uri, echo=typer.echo)
    p = result.progress
    if workers and p is not None:
        best = f"{p.best:.4f} dex" if p.best is not None else "none"
        typer.echo(f"study '{result.study_name}': {p.done}/{p.budget} trials done, best val_residual_std {best}")


@app.command()
def worker(
    study: str = typer.Option(..., "--study", envvar="HPO_STUDY", help="Study name."),
    storage: str = typer.Option(..., "--storage", envvar="HPO_STORAGE", help="Optuna storage URL."),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else the one the study was launched with)."),
    worker_index: int | None = typer.Option(
        None, "--worker-index", min=0, envvar="HPO_WORKER_INDEX",
        help="Offsets the sampler seed so workers differ (default: derived from host and process).",
    ),
) -> None:
    """Join an existing study and run trials until its budget is spent."""
    import socket
    import zlib

    from hpo.study.worker import run_worker

    if worker_index is None:
        # Replicas started alike (docker compose --scale) must still draw different trials.
        worker_index = zlib.crc32(f"{socket.gethostname()}-{os.getpid()}".encode()) % 100_000
    ran = run_worker(study, storage, tracking_uri, worker_index=worker_index)
    typer.echo(f"worker {worker_index}: ran {ran} trials of study '{study}'")


@app.command()
def status(
    name: str | None = typer.Argument(None, help="Study name; without it, every study in the storage."),
    storage: str | None = typer.Option(None, "--storage", help=STORAGE_HELP),
) -> None:
    """Studies and their trials: state, value, epochs run, duration, MLflow run."""
    from hpo.study.create import load_study
    from hpo.study.status import study_rows
    from hpo.study.status import trial_rows
    from hpo.study.storage import make_storage

    store = make_storage(storage)
    if name is None:
        typer.echo(table(study_rows(store)))
        return
    study, _ = load_study(store, name)
    typer.echo(table(trial_rows(study)))


@app.command()
def dashboard(
    name: str | None = typer.Argument(None, help="Study to open (all studies are browsable)."),
    storage: str | None = typer.Option(None, "--storage", help=STORAGE_HELP),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8080, "--port"),
) -> None:
    """optuna-dashboard on the same storage."""
    from hpo.errors import HpoError
    from hpo.study.storage import make_storage

    try:
        from optuna_dashboard import run_server
    except ImportError:
        raise HpoError("optuna-dashboard is not installed: pip install 'xray-hpo[dashboard]'") from None
    typer.echo(f"dashboard on http://{host}:{port}/" + (f"dashboard/studies (study '{name}')" if name else ""))
    run_server(make_storage(storage), host=host, port=port)


@app.command("storage-proxy")
def storage_proxy(
    storage: str | None = typer.Option(None, "--storage", help=STORAGE_HELP),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0 for a cluster)."),
    port: int = typer.Option(13000, "--port"),
) -> None:
    """Optuna's gRPC storage proxy: workers use grpc://host:port, the database sees one pool."""
    import optuna

    from hpo.study.storage import make_storage

    typer.echo(f"storage proxy on grpc://{host}:{port}")
    optuna.storages.run_grpc_proxy_server(make_storage(storage), host=host, port=port)
