"""The `hpo` command line: thin commands over the library; an HpoError is one line and exit 1.

    hpo --help
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys

import typer

from hpo.envfile import load_secrets_file
from hpo.errors import HpoError
from hpo.redact import redact_text

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Hyperparameter optimisation, tracked in MLflow, of a CNN that measures galaxy-cluster masses.",
)
OVERWRITE_HELP = "Replace output files that exist (refused otherwise); an input is never replaced."


@app.callback()
def _root(
    debug: bool = typer.Option(
        False, "--debug", help="Show full tracebacks, and what TensorFlow and JAX print as they start "
        "(also HPO_VERBOSE=1), instead of one-line errors."),
) -> None:
    from hpo import quiet

    if debug:
        os.environ["HPO_DEBUG"] = "1"
    quiet.install()  # before any command imports TensorFlow or JAX; a no-op for --debug
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # `hpo pull` as the rest
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # launch names the experiment
    logging.basicConfig(level=logging.INFO if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not debug:
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported


from hpo.cli import data as _data  # noqa: E402,F401  (registers commands)
from hpo.cli import model as _model  # noqa: E402,F401
from hpo.cli import report as _report  # noqa: E402,F401
from hpo.cli import run as _run  # noqa: E402,F401
from hpo.cli import study as _study  # noqa: E402,F401


def main() -> None:
    """Entry point of the `hpo` script."""
    # A process started with `&` from a script inherits SIGINT ignored, and Python keeps it so;
    # then `kill -INT` (how launchers, tests and schedulers ask for a clean stop) does nothing.
    # SIGTERM (docker stop, scancel, systemd, `timeout`) stops a command as Ctrl-C does: without
    # this, `hpo launch` would die at once and leave its workers (in sessions of their own)
    # training, and a command writing a file would leave its temporary file behind. `hpo worker`
    # installs its own handler for both (training/stop.py).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        if not _only_help(sys.argv[1:]):
            load_secrets_file()  # help shows whatever the file holds
        app()
    except HpoError as exc:
        if os.environ.get("HPO_DEBUG"):
            raise
        typer.echo(f"hpo: error: {redact_text(str(exc))}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("hpo: interrupted", err=True)
        _exit_interrupted()
    except SystemExit as exc:
        if exc.code == 130:  # what typer makes of an interrupt inside a command
            typer.echo("hpo: interrupted", err=True)
            _exit_interrupted()
        raise


def _only_help(args: list[str]) -> bool:
    """Whether the command line asks only for help (what needs no secrets)."""
    return not args or "--help" in args or "-h" in args


def _exit_interrupted() -> None:
    # A stop has a deadline (docker stop, pod deletion, Slurm preemption): collecting a trained
    # network's objects on the way out can take longer than the work itself, and is skipped.
    gc.freeze()
    sys.exit(130)
