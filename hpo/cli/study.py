"""Commands on studies: launch, worker, status, dashboard, storage-proxy."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from hpo.cli import app
from hpo.cli import OVERWRITE_HELP
from hpo.cli._table import table
from hpo.launch.docker import DEFAULT_IMAGE
from hpo.launch.docker import DEFAULT_NETWORK

STORAGE_HELP = "Optuna storage URL (default: HPO_STORAGE or sqlite:///hpo.db)."
TRACKING_HELP = "MLflow tracking URI (default: MLFLOW_TRACKING_URI or sqlite:///mlflow.db)."


@app.command()
def launch(
    spec: Path = typer.Argument(..., help="Search-space YAML, e.g. search_spaces/dropout.yaml."),
    workers: int | None = typer.Option(
        None,
        "--workers",
        min=0,
        help="Workers to start (default: --workers-per-gpu on each visible GPU, or 1 local "
        "process without a GPU); 0 creates the study only.",
    ),
    workers_per_gpu: int = typer.Option(
        1,
        "--workers-per-gpu",
        envvar="HPO_WORKERS_PER_GPU",
        help="Workers sharing each GPU, each with a bounded share of its memory (one small CNN "
        "does not fill a modern GPU).",
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
        False, "--dry-run", help="Validate the space against its data file's header, build the "
        "network at the extremes of the space (no training), print the space with its budget; "
        "start nothing."
    ),
) -> None:
    """Create or resume a study, start its workers, show progress until the budget is spent."""
    if dry_run:  # no database, no MLflow, no training
        from hpo.launch.checks import dry_run as check_and_build

        for line in check_and_build(spec):
            typer.echo(line)
        return
    from hpo.launch.launcher import launch as run_launch

    result = run_launch(
        spec,
        workers=workers,
        storage_url=storage,
        tracking_uri=tracking_uri,
        launcher=launcher,
        image=image,
        network=network,
        workers_per_gpu=workers_per_gpu,
        echo=typer.echo,
    )
    p = result.progress
    if workers != 0 and p is not None:
        best = f"{p.best:.4f} dex" if p.best is not None else "none"
        typer.echo(
            f"study '{result.study_name}': {p.done}/{p.budget} trials done, "
            f"best {result.metric} {best}"
        )
    typer.echo(f"runs: {result.runs}")


@app.command()
def refit(
    name: str = typer.Argument(..., help="The study whose best trials to train again."),
    out: Path = typer.Option(..., "--out", "-o", help="Search-space YAML to write (then: hpo launch it)."),
    top: int = typer.Option(4, "--top", min=1, help="Best COMPLETE trials to train again."),
    seeds: str = typer.Option("1,2", "--seeds", help="Comma-separated train.seed values; each trial once per seed."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="train.epochs of every refit (default: the study's)."),
    patience: int | None = typer.Option(None, "--patience", min=1, help="Early-stopping patience (default: the study's)."),
    tta: bool = typer.Option(False, "--tta", help="Validation scored with test-time augmentation."),
    refit_name: str | None = typer.Option(None, "--name", help="Name of the refit study (default: NAME-refit)."),
    storage: str | None = typer.Option(None, "--storage", help=STORAGE_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Write a search space that trains a study's best trials again, once per seed."""
    from hpo.errors import ConfigError
    from hpo.outputs import atomic_outputs
    from hpo.outputs import check_outputs
    from hpo.outputs import sqlite_file
    from hpo.study.create import load_study
    from hpo.study.refit import refit_comment
    from hpo.study.refit import refit_space
    from hpo.store.storage import default_storage_url
    from hpo.store.storage import make_storage

    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds must be comma-separated integers, got {seeds!r}") from None
    url = storage or default_storage_url()
    database = sqlite_file(url)
    check_outputs([out], inputs=[database], overwrite=overwrite)  # before the study is read
    if database is not None and not Path(database).exists():  # SQLite would create it, empty
        raise ConfigError(f"no study '{name}': the storage {url} does not exist (no file {database}); "
                          "give --storage (or HPO_STORAGE) of the study's database")
    study, space = load_study(make_storage(storage), name)
    space = refit_space(study, space, top=top, seeds=seed_list, epochs=epochs, patience=patience,
                        tta=tta, name=refit_name)
    with atomic_outputs([out], inputs=[database], overwrite=overwrite) as (tmp,):
        tmp.write_text(refit_comment(study, top, seed_list) + space.to_yaml())
    typer.echo(f"wrote {out}: {space.budget()} trials ({len(space.study.enqueue) // len(seed_list)} "
               f"configurations x {len(seed_list)} seeds) as study '{space.study.name}'")
    from hpo.store.storage import redact

    typer.echo(f"next: hpo launch {out}" + (f" --storage {redact(storage)}" if storage else ""))


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
    workers_per_gpu: int = typer.Option(
        1,
        "--workers-per-gpu",
        min=1,
        envvar="HPO_WORKERS_PER_GPU",
        help="Run K worker processes on this node's GPU, each with a bounded share of its memory "
        "(what a container, pod or Slurm task with one GPU runs to pack K trials onto it).",
    ),
) -> None:
    """Join an existing study and run trials until its budget is spent."""
    import socket
    import zlib

    from hpo.store.storage import make_storage

    # A bad storage is one line on stderr, before TensorFlow's import writes its own lines there.
    make_storage(storage)

    from hpo.training.stop import StopRequest
    from hpo.launch.worker import run_worker

    stop = StopRequest().install()  # Ctrl-C, docker stop, pod deletion: end the trial cleanly
    if worker_index is None:
        # Replicas started alike (docker compose --scale) must still draw different trials.
        worker_index = zlib.crc32(f"{socket.gethostname()}-{os.getpid()}".encode()) % 100_000
    if workers_per_gpu > 1:
        from hpo.launch.worker_group import worker_group

        p = worker_group(study, storage, tracking_uri, workers_per_gpu=workers_per_gpu,
                         worker_index=worker_index, echo=typer.echo)
        typer.echo(f"{workers_per_gpu} workers of study '{study}': {p.done}/{p.budget} trials done")
        return
    ran = run_worker(study, storage, tracking_uri, worker_index=worker_index, stop=stop)
    typer.echo(f"worker {worker_index}: ran {ran} trials of study '{study}'")


@app.command()
def status(
    name: str | None = typer.Argument(
        None, help="Study name; without it, every study in the storage."
    ),
    storage: str | None = typer.Option(None, "--storage", help=STORAGE_HELP),
    repair: bool = typer.Option(
        False,
        "--repair",
        help="First fail the trials of workers gone silent (as a worker would) and end the MLflow "
        "runs left RUNNING by finished trials.",
    ),
    tracking_uri: str | None = typer.Option(
        None,
        "--tracking-uri",
        help="MLflow tracking URI for --repair "
        "(default: MLFLOW_TRACKING_URI, else the one the study was launched with).",
    ),
) -> None:
    """Studies and their trials: state, value, epochs run, duration, MLflow run."""
    from hpo.errors import ConfigError
    from hpo.study.create import load_study
    from hpo.study.status import study_rows
    from hpo.study.status import status_rows
    from hpo.store.storage import make_storage

    store = make_storage(storage)
    if name is None:
        if repair:
            raise ConfigError("hpo status --repair needs the study's NAME")
        typer.echo(table(study_rows(store)))
        return
    study, space = load_study(store, name)
    if repair:
        from hpo.study.create import stored_tracking_uri
        from hpo.tracking.preflight import checked_tracker
        from hpo.tracking.reconcile import repair as repair_study

        tracker = checked_tracker(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
                                  or stored_tracking_uri(study))
        lines = repair_study(store, study, space, tracker)
        for line in lines or [f"study '{name}': nothing to repair"]:
            typer.echo(line)
    typer.echo(table(status_rows(study)))


@app.command()
def dashboard(
    name: str | None = typer.Argument(None, help="Study to open (all studies are browsable)."),
    storage: str | None = typer.Option(None, "--storage", help=STORAGE_HELP),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8080, "--port"),
) -> None:
    """optuna-dashboard on the same storage."""
    from hpo.errors import HpoError
    from hpo.store.storage import make_storage

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
    from hpo.store.proxy import serve
    from hpo.store.storage import default_storage_url
    from hpo.tracking.reconcile import KillLostRuns

    serve(storage or default_storage_url(), host, port, reap_every_s=reap_every, echo=typer.echo,
          end_runs_for=KillLostRuns)
