"""Commands on studies: launch, worker, status, dashboard, storage-proxy."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from hpo.cli import app
from hpo.cli._table import table
from hpo.study.docker import DEFAULT_IMAGE
from hpo.study.docker import DEFAULT_NETWORK

STORAGE_HELP = "Optuna storage URL (default: HPO_STORAGE or sqlite:///hpo.db)."
TRACKING_HELP = "MLflow tracking URI (default: MLFLOW_TRACKING_URI or sqlite:///mlflow.db)."


@app.command()
def launch(
    spec: Path = typer.Argument(..., help="Search-space YAML, e.g. search_spaces/dropout.yaml."),
    workers: int | None = typer.Option(
        None,
        "--workers",
        min=0,
        help="Workers to start (default: 1 local process, or one container per GPU); "
        "0 creates the study only.",
    ),
    storage: str | None = typer.Option(None, "--storage", help=STORAGE_HELP),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help=TRACKING_HELP),
    launcher: str = typer.Option(
        "local",
        "--launcher",
        help="Where workers run: local (processes here, one GPU each, round robin) or docker "
        "(one worker container per GPU; needs server URLs for --storage and --tracking-uri).",
    ),
    image: str = typer.Option(
        DEFAULT_IMAGE,
        "--image",
        envvar="HPO_DOCKER_IMAGE",
        help="Worker image for --launcher docker.",
    ),
    network: str = typer.Option(
        DEFAULT_NETWORK,
        "--docker-network",
        envvar="HPO_DOCKER_NETWORK",
        help="Docker network of the worker containers "
        "(host: 127.0.0.1 in the URLs is this machine).",
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Validate the space, print it with its budget, start nothing."
    ),
) -> None:
    """Create or resume a study, start its workers, show progress until the budget is spent."""
    from hpo.objective.space import load_space

    if dry_run:  # validation only: no TensorFlow, no database, no MLflow
        typer.echo(load_space(spec).describe())
        return
    from hpo.study.launcher import launch as run_launch

    result = run_launch(
        spec,
        workers=workers,
        storage_url=storage,
        tracking_uri=tracking_uri,
        launcher=launcher,
        image=image,
        network=network,
        echo=typer.echo,
    )
    p = result.progress
    if workers != 0 and p is not None:
        best = f"{p.best:.4f} dex" if p.best is not None else "none"
        typer.echo(
            f"study '{result.study_name}': {p.done}/{p.budget} trials done, "
            f"best val_residual_std {best}"
        )


@app.command()
def worker(
    study: str = typer.Option(..., "--study", envvar="HPO_STUDY", help="Study name."),
    storage: str = typer.Option(
        ..., "--storage", envvar="HPO_STORAGE", help="Optuna storage URL."
    ),
    tracking_uri: str | None = typer.Option(
        None,
        "--tracking-uri",
        help="MLflow tracking URI "
        "(default: MLFLOW_TRACKING_URI, else the one the study was launched with).",
    ),
    worker_index: int | None = typer.Option(
        None,
        "--worker-index",
        min=0,
        envvar="HPO_WORKER_INDEX",
        help="Offsets the sampler seed so workers differ "
        "(default: derived from host and process).",
    ),
) -> None:
    """Join an existing study and run trials until its budget is spent."""
    import socket
    import zlib

    from hpo.study.storage import make_storage

    # A bad storage is one line on stderr, before TensorFlow's import writes its own lines there.
    make_storage(storage)

    from hpo.study.interrupt import StopRequest
    from hpo.study.worker import run_worker

    stop = StopRequest().install()  # Ctrl-C, docker stop, pod deletion: end the trial cleanly
    if worker_index is None:
        # Replicas started alike (docker compose --scale) must still draw different trials.
        worker_index = zlib.crc32(f"{socket.gethostname()}-{os.getpid()}".encode()) % 100_000
    ran = run_worker(study, storage, tracking_uri, worker_index=worker_index, stop=stop)
    typer.echo(f"worker {worker_index}: ran {ran} trials of study '{study}'")


@app.command()
def status(
    name: str | None = typer.Argument(
        None, help="Study name; without it, every study in the storage."
    ),
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
        raise HpoError(
            "optuna-dashboard is not installed: pip install 'xray-hpo[dashboard]'"
        ) from None
    typer.echo(
        f"dashboard on http://{host}:{port}/"
        + (f"dashboard/studies (study '{name}')" if name else "")
    )
    run_server(make_storage(storage), host=host, port=port)


@app.command("storage-proxy")
def storage_proxy(
    storage: str | None = typer.Option(None, "--storage", help=STORAGE_HELP),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to listen on (0.0.0.0 for a cluster)."
    ),
    port: int = typer.Option(13000, "--port"),
    reap_every: float = typer.Option(
        10.0,
        "--reap-every",
        min=0.1,
        help="Seconds between passes that fail trials whose workers stopped beating.",
    ),
) -> None:
    """Optuna's gRPC storage proxy: workers use grpc://host:port, the database sees one pool."""
    from hpo.study.proxy import serve
    from hpo.study.storage import default_storage_url

    serve(storage or default_storage_url(), host, port, reap_every_s=reap_every, echo=typer.echo)
