"""A tiny study whose best trial is registered as the champion (the `registry` fixture of
tests/conftest.py), more studies on its stores, and logged models: shared by the registry and
inference tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.cli.test_end_to_end import TINY
from tests.conftest import make_signal_data
from tests.conftest import write_h5

MODEL = "xray-cluster-mass"


@dataclass(frozen=True)
class Registry:
    """Where the study ran and what promote registered."""

    cwd: Path
    storage_url: str
    tracking_uri: str
    study: str
    champion_run_id: str  # the MLflow run of version 1, the champion


def run_study(reg: Registry, name: str, *, data: dict | None = None, base: dict | None = None,
              n_trials: int = 1) -> str:
    """Another study in `reg`'s stores (default: its data file and split), run in this process."""
    from hpo.launch.launcher import launch
    from hpo.launch.worker import run_worker

    space = {
        "study": {"name": name, "n_trials": n_trials, "sampler": {"type": "random", "seed": 0},
                  "pruner": {"type": "none"}},
        "data": {"path": str(reg.cwd / "signal.h5"), **(data or {})},
        "base": base or TINY,
        "params": {"model.dropout.rate": {"categorical": [0.0]}},
    }
    path = reg.cwd / f"{name}.yaml"
    path.write_text(yaml.safe_dump(space))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(reg.cwd)
        mp.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        launch(path, workers=0, storage_url=reg.storage_url, tracking_uri=reg.tracking_uri, echo=lambda line: None)
        run_worker(name, reg.storage_url, reg.tracking_uri)
    return name


# One epoch at a learning rate that barely moves the weights: a model any trained one beats.
BAD = {**TINY, "train": {**TINY["train"], "epochs": 1, "optimizer": {"learning_rate": 1e-7}}}


def make_registry(cwd: Path) -> Registry:
    """2 TPE trials of the tiny CNN (3 epochs, 300 clusters of 16x16x2) in `cwd`, run in this
    process, the best promoted as the champion of MODEL."""
    from mlflow import MlflowClient

    from hpo.registry.promote import promote
    from hpo.launch.launcher import launch
    from hpo.launch.worker import run_worker

    write_h5(cwd / "signal.h5", make_signal_data(300))
    space = {
        "study": {"name": "reg", "n_trials": 2, "sampler": {"type": "tpe", "seed": 1},
                  "pruner": {"type": "none"}},
        "data": {"path": str(cwd / "signal.h5")},
        "base": TINY,
        "params": {"train.optimizer.learning_rate": {"float": [1e-3, 1e-2], "log": True}},
    }
    (cwd / "space.yaml").write_text(yaml.safe_dump(space))
    reg = Registry(cwd, f"sqlite:///{cwd / 'hpo.db'}", f"sqlite:///{cwd / 'mlflow.db'}", "reg", "")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)  # local artifacts go to ./mlartifacts
        mp.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        launch(cwd / "space.yaml", workers=0, storage_url=reg.storage_url, tracking_uri=reg.tracking_uri,
               echo=lambda line: None)
        run_worker("reg", reg.storage_url, reg.tracking_uri)
        result = promote("reg", MODEL, storage_url=reg.storage_url, tracking_uri=reg.tracking_uri)
    assert result.champion_moved and result.version == "1"
    run_id = MlflowClient(reg.tracking_uri).get_model_version(MODEL, "1").run_id
    return Registry(cwd, reg.storage_url, reg.tracking_uri, "reg", run_id)


def log_exposure_model(path: Path, experiment: str, ranges: dict) -> tuple:
    """(keras model, models:/ URI, tracking URI) of an untrained tiny network that takes
    exposure_s, with a log-mass shift and a sigma scale set, logged with its training `ranges`
    to a SQLite store in `path`."""
    from hpo.config import apply_overrides
    from hpo.tracking.runs import Tracker

    net = exposure_network()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(path)
        mp.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
        tracker = Tracker(f"sqlite:///{path / 'mlflow.db'}", retry_window_s=0)
        run_id = tracker.start_single_run(experiment, apply_overrides({}), experiment)
        example = make_signal_data(2, exposure=(150.0, 2500.0))
        uri = tracker.log_model(run_id, net, {k: example[k] for k in ("images", "redshift", "exposure_s")},
                                ranges)
        tracker.end_run(run_id)
    return net, uri, tracker.uri


def exposure_network():
    """An untrained tiny network (16 x 16 x 2 images) that takes exposure_s, with its log-mass
    shift and sigma scale set as training would leave them, so that its layers carry values."""
    import numpy as np

    from hpo.config import apply_overrides
    from hpo.model import InputStats
    from hpo.model import build_model

    stats = InputStats(np.zeros(2), np.ones(2), 14.0, 0.5, 0.5, 0.25, 1000.0, 3.0, 0.3)
    net = build_model(apply_overrides({"model.use_exposure": True, "model.dense": [8]}).model,
                      image_shape=(16, 16, 2), stats=stats, sigma_head="softplus",
                      calibrate_sigma=True, calibrate_bias_bins=3)
    net.get_layer("log_mass_shift").knots.assign(np.log10([300.0, 800.0, 2000.0]).astype("f4"))
    net.get_layer("log_mass_shift").shift.assign(np.array([0.1, -0.05, 0.2], "f4"))
    net.get_layer("sigma_scale").scale.assign(1.5)
    return net
