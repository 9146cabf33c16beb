"""MLflow runs of a study: one experiment and parent run per study, one nested run per trial.

    hpo launch search_spaces/quickstart.yaml --tracking-uri sqlite:///mlflow.db
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import yaml
from matplotlib.figure import Figure
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec
from mlflow.types import Schema
from mlflow.types import TensorSpec

from hpo.config.overrides import flatten
from hpo.config.tree import RunConfig
from hpo.errors import TrackingError
from hpo.objective.keys import MLFLOW_RUN_ID_KEY  # noqa: F401  (re-exported)

_logger = logging.getLogger(__name__)

MLFLOW_PARENT_RUN_KEY = "mlflow_parent_run_id"  # study user attr: the study's parent run
MLFLOW_EXPERIMENT_KEY = "mlflow_experiment_id"
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_ARTIFACT_DIR = "mlartifacts"
MODEL_REQUIREMENTS = ["tensorflow>=2.21", "keras>=3.15", "numpy", "pandas", "mlflow>=3.17"]


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else the embedded SQLite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


class Tracker:
    """Writes a study's runs to one MLflow tracking server or store, through an explicit client."""

    def __init__(self, tracking_uri: str | None = None) -> None:
        self.uri = tracking_uri or default_tracking_uri()
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keeps worker logs legible
        # log_model needs the fluent API; a worker process talks to one store, so this is set once.
        mlflow.set_tracking_uri(self.uri)
        self.client = MlflowClient(self.uri)

    def check(self) -> None:
        """Raises TrackingError, with the URI, if the store cannot be reached or refuses us."""
        try:
            self.client.search_experiments(max_results=1)
        except MlflowException as exc:
            raise TrackingError(f"MLflow tracking at {self.uri} is not usable: {_first_line(exc)}") from None
        except Exception as exc:  # requests' connection errors arrive as many types
            raise TrackingError(f"MLflow tracking at {self.uri} is unreachable: {_first_line(exc)}") from None

    # ------------------------------------------------------------------------ study level
    def experiment_id(self, name: str) -> str:
        """The experiment called `name`, created with artifacts under ./mlartifacts for local stores."""
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        location = None
        if not self.uri.startswith(("http://", "https://", "databricks")):
            location = Path(DEFAULT_ARTIFACT_DIR).resolve().as_uri()
        try:
            return str(self.client.create_experiment(name, artifact_location=location))
        except MlflowException:  # another worker created it a moment ago
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return str(found.experiment_id)

    def start_study_run(
        self, experiment_id: str, study_name: str, space_yaml: str, data_info: dict[str, Any]
    ) -> str:
        """The study's parent run, holding its search space and data fingerprint and floors."""
        run = self.client.create_run(
            experiment_id, run_name=f"study-{study_name}", tags={"hpo.study": study_name, "hpo.kind": "study"}
        )
        run_id = run.info.run_id
        self.client.log_text(run_id, space_yaml, "search_space.yaml")
        flat = {f"data.{k}": v for k, v in flatten(data_info).items()}
        self.client.log_batch(run_id, params=[_param(k, v) for k, v in flat.items()])
        return run_id

    # ------------------------------------------------------------------------ trial level
    def start_trial_run(
        self, experiment_id: str, parent_run_id: str | None, study_name: str, number: int, cfg: RunConfig
    ) -> str:
        """A nested run named trial-<n>, with the flattened config as params and config.yaml."""
        tags = {"hpo.study": study_name, "hpo.trial": str(number), "hpo.kind": "trial"}
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(experiment_id, run_name=f"trial-{number}", tags=tags)
        self.log_config(run.info.run_id, cfg)
        return run.info.run_id

    def start_single_run(self, experiment_name: str, cfg: RunConfig, run_name: str | None) -> str:
        """A standalone run for `hpo train`."""
        run = self.client.create_run(
            self.experiment_id(experiment_name), run_name=run_name, tags={"hpo.kind": "train"}
        )
        self.log_config(run.info.run_id, cfg)
        return run.info.run_id

    def log_config(self, run_id: str, cfg: RunConfig) -> None:
        tree = cfg.model_dump(mode="json")
        params = [_param(k, v) for k, v in flatten(tree).items()]
        for i in range(0, len(params), 90):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run_id, params=params[i : i + 90])
        self.client.log_text(run_id, yaml.safe_dump(tree, sort_keys=False), "config.yaml")

    def log_epoch(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        ts = _now_ms()
        batch = [Metric(k, float(v), ts, step) for k, v in metrics.items() if np.isfinite(v)]
        self.client.log_batch(run_id, metrics=batch)

    def log_metrics(self, run_id: str, metrics: dict[str, float]) -> None:
        self.log_epoch(run_id, metrics, step=0)

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_tag(run_id, key, str(value)[:5000])

    def log_figure(self, run_id: str, fig: Figure, name: str) -> None:
        self.client.log_figure(run_id, fig, name)
        import matplotlib.pyplot as plt

        plt.close(fig)

    def log_text(self, run_id: str, text: str, name: str) -> None:
        self.client.log_text(run_id, text, name)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        """Ends a run as FINISHED, FAILED or KILLED."""
        self.client.set_terminated(run_id, status=status)

    def run_status(self, run_id: str) -> str:
        return str(self.client.get_run(run_id).info.status)

    def log_model(self, run_id: str, keras_model: Any, example: dict[str, np.ndarray]) -> str:
        """Logs the network as a pyfunc model of this run; returns its models:/ URI."""
        from hpo.tracking.pyfunc import KERAS_ARTIFACT

        h, w, c = (int(d) for d in keras_model.input["images"].shape[1:])
        has_sigma = int(keras_model.output.shape[-1]) > 1
        inputs = Schema([
            TensorSpec(np.dtype(np.float32), (-1, h, w, c), "images"),
            TensorSpec(np.dtype(np.float32), (-1,), "redshift"),
        ])
        outputs = Schema([ColSpec("double", "log_mass")] + ([ColSpec("double", "sigma")] if has_sigma else []))
        package = Path(__file__).resolve().parents[1]
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.keras"
            keras_model.save(path)
            with mlflow.start_run(run_id=run_id):
                info = mlflow.pyfunc.log_model(
                    name="model",
                    python_model=str(package / "tracking" / "pyfunc_entry.py"),
                    artifacts={KERAS_ARTIFACT: str(path)},
                    code_paths=[str(package)],
                    signature=ModelSignature(inputs=inputs, outputs=outputs),
                    input_example={k: np.asarray(v, np.float32) for k, v in example.items()},
                    pip_requirements=MODEL_REQUIREMENTS,
                )
        return str(info.model_uri)


def _param(key: str, value: Any) -> Any:
    from mlflow.entities import Param

    return Param(key, str(value)[:6000])


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
