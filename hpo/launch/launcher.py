"""`hpo launch`: check a space, then create or join its study, start workers, show progress.

    hpo launch search_spaces/quickstart.yaml --workers 2
    hpo launch search_spaces/dropout.yaml --launcher docker --storage postgresql+psycopg://... \
        --tracking-uri http://127.0.0.1:5000

One path for the command line and the library (benchmarks/studies.py): `launch` checks its
options, then the space (launch.checks.check_launch: budget, data file, calibration file, the
corners of the space on the data's shape), then hands the study to its engine: optuna_study
(workers started by worker_processes, watched by supervisor) or keras_tuner (the search runs in
this process). The checks load neither optuna, MLflow nor TensorFlow, so a bad space is
answered at once; the engines load them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hpo.errors import ConfigError
from hpo.keys import METRIC
from hpo.launch.checks import check_launch
from hpo.launch.docker import DEFAULT_IMAGE
from hpo.launch.docker import DEFAULT_NETWORK
from hpo.launch.worker_processes import LAUNCHERS

if TYPE_CHECKING:
    from hpo.launch.supervisor import Echo
    from hpo.study.budget import Progress


@dataclass(frozen=True)
class LaunchResult:
    study_name: str
    created: bool
    progress: Progress | None  # None when nothing ran (--workers 0 of a keras-tuner study)
    metric: str = METRIC
    runs: str = ""  # where the MLflow UI shows the study's runs (tracking.runs.runs_page)


def launch(
    spec: str | Path,
    *,
    workers: int | None = 1,
    storage_url: str | None = None,
    tracking_uri: str | None = None,
    launcher: str = "local",
    image: str = DEFAULT_IMAGE,
    network: str = DEFAULT_NETWORK,
    workers_per_gpu: int = 1,
    echo: Echo = print,
) -> LaunchResult:
    """Creates or resumes the study of `spec`, runs its workers until the budget is spent.

    A space with study.engine keras_tuner is searched in this process instead (launch_keras_tuner).

    Args:
        spec: the search-space file.
        workers: number of workers; 0 creates or updates the study and starts nothing; None
            means `workers_per_gpu` per visible GPU (1 on a machine without GPUs for `local`).
        storage_url: Optuna storage (default HPO_STORAGE or sqlite:///hpo.db).
        tracking_uri: MLflow tracking URI (default MLFLOW_TRACKING_URI or sqlite:///mlflow.db).
        launcher: a name in LAUNCHERS.
        image: worker image (docker).
        network: Docker network of the containers (docker).
        workers_per_gpu: workers sharing each GPU, each with a bounded share of its memory.
        echo: where progress lines go.

    Raises:
        HpoError: a bad space or data file (check_launch), an unreachable store, or workers that
            failed before the budget was spent.
    """
    if launcher not in LAUNCHERS:
        raise ConfigError(f"--launcher must be one of: {', '.join(LAUNCHERS)}; got {launcher!r}")
    if workers_per_gpu < 1:
        raise ConfigError(f"--workers-per-gpu must be at least 1, got {workers_per_gpu}")
    # A space no trial of which could run is refused before a study or run exists, and before
    # the engines below load optuna, MLflow and TensorFlow (seconds).
    space = check_launch(spec).space
    if space.study.engine == "keras_tuner":
        from hpo.launch.keras_tuner import launch_keras_tuner

        created, final, runs = launch_keras_tuner(
            space, workers=workers, tracking_uri=tracking_uri, launcher=launcher, echo=echo
        )
        return LaunchResult(space.study.name, created, final, runs=runs)
    from hpo.launch.optuna_study import launch_optuna

    created, final, runs = launch_optuna(
        space, workers=workers, storage_url=storage_url, tracking_uri=tracking_uri,
        launcher=launcher, image=image, network=network, workers_per_gpu=workers_per_gpu,
        echo=echo,
    )
    return LaunchResult(space.study.name, created, final, space.study.metric, runs)
