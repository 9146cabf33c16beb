"""MLflow runs of a study: one experiment and parent run per study, one nested run per trial.

    hpo launch search_spaces/quickstart.yaml --tracking-uri sqlite:///mlflow.db
    MLFLOW_TRACKING_USERNAME=alice MLFLOW_TRACKING_PASSWORD=... hpo launch SPACE --tracking-uri http://host:5000

Every call goes through a RetryingClient (retry.py): a server away for less than
HPO_TRACKING_RETRY_S seconds (default 120) costs a trial nothing; one gone for longer fails the
running trial with TrackingUnavailable. Basic-auth credentials come from
MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, read by MLflow's client itself.
"""

from __future__ import annotations

import logging
import os
import tempfile
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import numpy as np
import yaml
from matplotlib.figure import Figure
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.models import Model

from hpo.config.overrides import flatten
from hpo.config.tree import RunConfig
from hpo.errors import first_line
from hpo.errors import TrackingError
from hpo.outputs import one_sqlite_creator
from hpo.redact import redact
from hpo.tracking import system_metrics
from hpo.tracking.logged_model import model_metadata
from hpo.tracking.logged_model import pyfunc_arguments
from hpo.tracking.retry import auth_error
from hpo.tracking.retry import default_window_s
from hpo.tracking.retry import RetryingClient

_logger = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_ARTIFACT_DIR = "mlartifacts"
FLOOR_METRICS = ("oracle_floor", "counts_baseline", "feature_baseline")  # parent-run metrics, drawn as lines by `hpo report`
# Marks an experiment as model training, not GenAI (what the UI filters and labels experiments by;
# which view it opens them in is the sidebar's, see runs_page).
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
FINAL_STATES = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED", "KILLED": "KILLED"}


def runs_page(tracking_uri: str, experiment_id: str) -> str:
    """Where the MLflow UI shows an experiment's runs; for a local store, the `mlflow ui` to start first.

    A user:password in `tracking_uri` is left out of a link (the browser asks), masked in a command.

    The UI (3.17, 3.18) opens an experiment as its sidebar toggle says (GenAI by default) whatever
    the experiment's kind; `workflowType=machine_learning` in the link selects Model training.
    """
    page = f"#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    if tracking_uri.startswith(("http://", "https://")):
        scheme, _, rest = tracking_uri.partition("://")
        return redact(f"{scheme}://{rest.rpartition('@')[2].rstrip('/')}/{page}")
    return f"mlflow ui --backend-store-uri {redact(tracking_uri)}, then http://127.0.0.1:5000/{page}"


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else the embedded SQLite store; TrackingError if not a URI."""
    from_env = os.environ.get("MLFLOW_TRACKING_URI")
    return checked_uri(from_env, "MLFLOW_TRACKING_URI") if from_env else DEFAULT_TRACKING_URI


def checked_uri(uri: str, what: str = "--tracking-uri") -> str:
    """`uri` unchanged, or TrackingError (naming `what`) where it cannot be parsed as a URI."""
    try:
        parts = urllib.parse.urlsplit(uri)
        parts.port  # noqa: B018  a port that is not a number raises here
    except ValueError as exc:
        raise TrackingError(f"{what} {redact(uri)} is not a URI ({exc}); give one such as "
                            "http://host:5000 or sqlite:///mlflow.db") from None
    return uri


class Tracker:
    """Writes a study's runs to one MLflow tracking server or store, through an explicit client.

    Args:
        tracking_uri: default MLFLOW_TRACKING_URI, else sqlite:///mlflow.db.
        retry_window_s: seconds each call retries while the server is unreachable (default
            HPO_TRACKING_RETRY_S, else 120); 0 tries once.
    """

    def __init__(self, tracking_uri: str | None = None, *, retry_window_s: float | None = None) -> None:
        self.uri = checked_uri(tracking_uri) if tracking_uri else default_tracking_uri()
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keeps worker logs legible
        if self.uri.startswith(("http://", "https://")):
            # MLflow's client would retry each request for minutes; RetryingClient bounds that instead.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        # Model.log resolves the store from the fluent URI; a worker talks to one store, so set once.
        mlflow.set_tracking_uri(self.uri)
        window = default_window_s() if retry_window_s is None else retry_window_s
        with one_sqlite_creator(self.uri):
            client = MlflowClient(self.uri)
        self.client: Any = RetryingClient(client, self.uri, window)
        self._monitors: dict[str, Any] = {}  # run id -> its system-metrics sampler

    def check(self) -> None:
        """One attempt, no retries: raises TrackingError, with the URI, if the store refuses or is away."""
        try:
            self.client.raw.search_experiments(max_results=1)
        except MlflowException as exc:
            refused = auth_error(exc, self.uri)
            if refused is not None:
                raise refused from None
            raise TrackingError(f"MLflow tracking at {redact(self.uri)} is not usable: {first_line(exc)}") from None
        except Exception as exc:  # requests' connection errors arrive as many types
            raise TrackingError(f"MLflow tracking at {redact(self.uri)} is unreachable: {first_line(exc)}") from None

    # ------------------------------------------------------------------------ study level
    def experiment_id(self, name: str) -> str:
        """The experiment called `name`, created with artifacts under ./mlartifacts for local stores.

        It is tagged as model training (EXPERIMENT_KIND); one made before that gets the tag now.
        """
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            if found.tags.get(EXPERIMENT_KIND[0]) is None:  # made before the tag was set
                self.client.set_experiment_tag(found.experiment_id, *EXPERIMENT_KIND)
            return str(found.experiment_id)
        location = None
        if not self.uri.startswith(("http://", "https://", "databricks")):
            location = Path(DEFAULT_ARTIFACT_DIR).resolve().as_uri()
        try:
            return str(self.client.create_experiment(
                name, artifact_location=location, tags=dict([EXPERIMENT_KIND])))
        except MlflowException:  # another worker created it a moment ago
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return str(found.experiment_id)

    def start_study_run(
        self, experiment_id: str, study_name: str, space_yaml: str, data_info: dict[str, Any]
    ) -> str:
        """The study's parent run: search_space.yaml, the data info as data.* params, floors as metrics.

        Args:
            data_info: {"fingerprint": {...}, "path": ..., "floors": {"oracle_floor": dex,
                "counts_baseline": dex, "feature_baseline": dex, ...}} (floors optional), as the
                launcher builds it.
        """
        run = self.client.create_run(
            experiment_id, run_name=f"study-{study_name}", tags={"hpo.study": study_name, "hpo.kind": "study"}
        )
        run_id = run.info.run_id
        self.client.log_text(run_id, space_yaml, "search_space.yaml")
        flat = {f"data.{k}": v for k, v in flatten(data_info).items()}
        params = [_param(k, v) for k, v in flat.items()]
        for i in range(0, len(params), 90):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run_id, params=params[i : i + 90])
        floors = data_info.get("floors") or {}
        self.log_metrics(run_id, {k: float(floors[k]) for k in FLOOR_METRICS if floors.get(k) is not None})
        return run_id

    # ------------------------------------------------------------------------ trial level
    def start_trial_run(
        self,
        experiment_id: str,
        parent_run_id: str | None,
        study_name: str,
        number: int,
        cfg: RunConfig,
        *,
        created: Callable[[str], Any] | None = None,
    ) -> str:
        """A nested run named trial-<n>, with the flattened config as params and config.yaml.

        The run is tagged hpo.study and hpo.trial when it is created, so that a run whose id
        never reached its trial is still found (`running_trial_runs`) and ended with it.

        Args:
            created: called with the run id as soon as the run exists, before anything else
                can fail (the objective records it on its trial there).

        Raises:
            Whatever logging the config raised, after ending the run FAILED (KILLED for an
            interrupt) if the server lets it.
        """
        tags = {"hpo.study": study_name, "hpo.trial": str(number), "hpo.kind": "trial", "hpo.state": "RUNNING"}
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        tags.update(_device_tags())
        run = self.client.create_run(experiment_id, run_name=f"trial-{number}", tags=tags)
        run_id = str(run.info.run_id)
        try:
            if created is not None:
                created(run_id)
            self.log_config(run_id, cfg)
        except BaseException as exc:
            stopped = isinstance(exc, KeyboardInterrupt)
            try:
                self.finish_trial_run(run_id, "KILLED" if stopped else "FAIL",
                                      reason="interrupted" if stopped else first_line(exc, 2000))
            except Exception as again:  # noqa: BLE001  the server may be why; reconcile.py ends it
                _logger.warning("could not end MLflow run %s of trial %d: %s", run_id, number,
                                again)
            raise
        self._monitors[run_id] = system_metrics.start(run_id, self.uri)
        return run_id

    def running_trial_runs(
        self, experiment_id: str, study_name: str, *, number: int | None = None,
        parent_run_id: str | None = None,
    ) -> list[Any]:
        """The RUNNING trial runs of a study, found by their tags (of trial `number` only, if
        given; under the study's parent run only, if given)."""
        where = [f"tags.`hpo.study` = '{study_name}'", "tags.`hpo.kind` = 'trial'",
                 "attributes.status = 'RUNNING'"]
        if number is not None:
            where.append(f"tags.`hpo.trial` = '{number}'")
        if parent_run_id:
            where.append(f"tags.`mlflow.parentRunId` = '{parent_run_id}'")
        found = self.client.search_runs([experiment_id], " AND ".join(where), max_results=1000)
        return list(found)

    def start_single_run(self, experiment_name: str, cfg: RunConfig, run_name: str | None) -> str:
        """A standalone run for `hpo train`."""
        run = self.client.create_run(
            self.experiment_id(experiment_name), run_name=run_name,
            tags={"hpo.kind": "train", **_device_tags()},
        )
        self.log_config(run.info.run_id, cfg)
        self._monitors[run.info.run_id] = system_metrics.start(run.info.run_id, self.uri)
        return run.info.run_id

    def finish_trial_run(
        self, run_id: str, state: str, *, epochs_run: int | None = None, reason: str | None = None
    ) -> None:
        """Tags a trial's final Optuna state (and why, and when it stopped) and ends its run.

        Args:
            state: COMPLETE, PRUNED, FAIL or KILLED; the run ends FINISHED, FINISHED, FAILED, KILLED.
            epochs_run: epochs trained; for a pruned trial also tagged hpo.pruned_at_epoch.
            reason: why a trial failed, tagged hpo.fail_reason.
        """
        if state not in FINAL_STATES:
            raise TrackingError(f"a trial's final state must be one of {', '.join(FINAL_STATES)}, got {state!r}")
        tags: dict[str, Any] = {"hpo.state": state}
        if epochs_run is not None:
            self.log_metrics(run_id, {"epochs_run": epochs_run})
            if state == "PRUNED":
                tags["hpo.pruned_at_epoch"] = epochs_run
        if reason:
            tags["hpo.fail_reason"] = reason
        self.set_tags(run_id, tags)
        self.end_run(run_id, FINAL_STATES[state])

    def log_config(self, run_id: str, cfg: RunConfig) -> None:
        """The resolved config as flattened dotted params and as artifact config.yaml."""
        tree = cfg.model_dump(mode="json")
        params = [_param(k, v) for k, v in flatten(tree).items()]
        for i in range(0, len(params), 90):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run_id, params=params[i : i + 90])
        self.client.log_text(run_id, yaml.safe_dump(tree, sort_keys=False), "config.yaml")

    def log_epoch(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        """One batch of metrics at `step` (an epoch, 0-based); non-finite values are left out."""
        ts = _now_ms()
        batch = [Metric(k, float(v), ts, step) for k, v in metrics.items() if np.isfinite(v)]
        if batch:
            self.client.log_batch(run_id, metrics=batch)

    def log_metrics(self, run_id: str, metrics: dict[str, float]) -> None:
        """Metrics that have one value per run (step 0)."""
        self.log_epoch(run_id, metrics, step=0)

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        """Tags in one call, values cut to MLflow's 5000 characters."""
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def log_figure(self, run_id: str, fig: Figure, name: str) -> None:
        """Logs a matplotlib figure as artifact `name` (a .png path) and closes it."""
        import matplotlib.pyplot as plt

        try:
            self.client.log_figure(run_id, fig, name)
        finally:
            plt.close(fig)

    def log_text(self, run_id: str, text: str, name: str) -> None:
        self.client.log_text(run_id, text, name)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        """Ends a run as FINISHED, FAILED or KILLED, after its last system metrics."""
        system_metrics.stop(self._monitors.pop(run_id, None))
        self.client.set_terminated(run_id, status=status)

    def run_status(self, run_id: str) -> str:
        return str(self.client.get_run(run_id).info.status)

    def log_model(self, run_id: str, keras_model: Any, example: dict[str, np.ndarray],
                  training_ranges: dict[str, list[float]] | None = None) -> str:
        """Logs the network as a pyfunc model of this run (logged_model.py); returns its models:/ URI."""
        metadata = model_metadata(keras_model, training_ranges)

        def log_once() -> Any:
            run = self.client.raw.get_run(run_id)
            # A LoggedModel in the run's experiment (MLflow files one without an active run under
            # the Default experiment), then Model.log with run_id: pyfunc.log_model without
            # MLflow's global active run.
            logged = self.client.raw.create_logged_model(
                experiment_id=run.info.experiment_id, name="model", source_run_id=run_id,
                params={k: str(v) for k, v in run.data.params.items()},
            )
            with tempfile.TemporaryDirectory() as tmp, pyfunc_arguments(
                keras_model, example, metadata, Path(tmp)
            ) as arguments:
                return Model.log(artifact_path=None, name="model", flavor=mlflow.pyfunc, run_id=run_id,
                                 model_id=logged.model_id, **arguments)

        info = self.client.call("log_model", log_once)
        return str(info.model_uri)


def _device_tags() -> dict[str, str]:
    """hpo.keras_backend, hpo.keras_version, hpo.backend_version, hpo.device of this process."""
    from hpo.training import device

    return {f"hpo.{k}": v for k, v in device.describe().items()}


def _param(key: str, value: Any) -> Any:
    from mlflow.entities import Param

    return Param(key, str(value)[:6000])


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)

