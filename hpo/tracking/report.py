"""`hpo report NAME`: study-level plots and the trials table, logged to the study's parent run.

    hpo report dropout --storage sqlite:///hpo.db

Artifacts under report/ in the parent run: optimization_history.png, param_importances.png,
parallel_coordinate.png, slice.png (Optuna's matplotlib plots), scan.png for grid studies (see
scan_plot.py), trials.csv and trials.md. A plot the study cannot support yet (no COMPLETE trial;
importances with fewer than 2 COMPLETE trials or a single parameter) is skipped with a reason.
Running it again replaces every artifact, so it can follow a study as it runs.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from typing import Any

import matplotlib
import numpy as np
import optuna
from matplotlib.figure import Figure
from optuna.trial import TrialState

from hpo.errors import TrackingError
from hpo.keys import MLFLOW_PARENT_RUN_KEY
from hpo.store.storage import make_storage
from hpo.study.create import load_study
from hpo.study.create import stored_tracking_uri
from hpo.tracking import scan_plot
from hpo.tracking.runs import FLOOR_METRICS
from hpo.tracking.runs import Tracker
from hpo.tracking.trials_table import report_rows
from hpo.tracking.trials_table import to_csv
from hpo.tracking.trials_table import to_markdown

REPORT_DIR = "report"


@dataclass(frozen=True)
class ReportResult:
    """What `report` logged.

    Attributes:
        study: the study's name.
        run_id: its MLflow parent run.
        artifacts: artifact paths logged to that run.
        skipped: plot name -> why it was not drawn.
    """

    study: str
    run_id: str
    artifacts: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def report(
    study_name: str, *, storage_url: str | None = None, tracking_uri: str | None = None
) -> ReportResult:
    """Logs the study-level plots and the trials table to the study's parent run.

    Args:
        study_name: a study created by `hpo launch`.
        storage_url: its Optuna storage (default HPO_STORAGE or sqlite:///hpo.db).
        tracking_uri: MLflow tracking (default MLFLOW_TRACKING_URI, else the study's own).

    Raises:
        HpoError: no such study, or it has no MLflow parent run.
        TrackingError: the tracking server refuses or is away.
    """
    study, space = load_study(make_storage(storage_url), study_name)
    parent = study.user_attrs.get(MLFLOW_PARENT_RUN_KEY)
    if not parent:
        raise TrackingError(
            f"study '{study_name}' has no MLflow parent run (user attr '{MLFLOW_PARENT_RUN_KEY}'); "
            "run `hpo launch` on its space once to create it"
        )
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or stored_tracking_uri(study)
    tracker = Tracker(uri)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    params = sorted({p for t in complete for p in t.params})
    result = ReportResult(study_name, parent)
    metric = space.study.metric

    def add(name: str, draw: Callable[[], Figure], why_not: str | None) -> None:
        if why_not is None:
            try:
                # Optuna's plots switch pyplot to its own style; the context keeps that to them.
                with warnings.catch_warnings(), matplotlib.style.context("default"):
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    warnings.simplefilter("ignore", UserWarning)  # one-point axes, colorbar layouts
                    fig = draw()
            except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # zero variance, ...
                why_not = f"{type(exc).__name__}: {exc}"
            else:
                path = f"{REPORT_DIR}/{name}.png"
                tracker.log_figure(parent, fig, path)
                result.artifacts.append(path)
                return
        result.skipped[name] = why_not

    from optuna.visualization import matplotlib as ovm

    def optuna_plot(plot: Callable[..., Any]) -> Callable[[], Figure]:
        return lambda: _figure(plot(study, target_name=metric))

    none = "no COMPLETE trial yet" if not complete else None
    no_params = none or ("no parameters" if not params else None)
    add("optimization_history", optuna_plot(ovm.plot_optimization_history), none)
    add("param_importances", optuna_plot(ovm.plot_param_importances),
        none or ("fewer than 2 COMPLETE trials" if len(complete) < 2 else None)
        or ("a single parameter has nothing to be compared with" if len(params) < 2 else None))
    add("parallel_coordinate", optuna_plot(ovm.plot_parallel_coordinate), no_params)
    add("slice", optuna_plot(ovm.plot_slice), no_params)
    if space.study.sampler.type == "grid":
        grid = space.grid()
        x = scan_plot.scanned_param(complete, list(grid))
        if x is None:
            result.skipped["scan"] = none or "no scanned parameter"
        else:
            add("scan", lambda: scan_plot.scan(
                trials, x, x_order=grid[x], metric=metric, floors=_floors(tracker, parent),
                title=f"{study_name}: {metric} against {x}",
            ), none)

    rows = report_rows(trials, metric)
    title = f"Study {study_name}: {len(trials)} trials, best first"
    for name, text in (("trials.csv", to_csv(rows)), ("trials.md", to_markdown(rows, title))):
        tracker.log_text(parent, text, f"{REPORT_DIR}/{name}")
        result.artifacts.append(f"{REPORT_DIR}/{name}")
    return result


def _floors(tracker: Tracker, run_id: str) -> dict[str, float]:
    """The floors of a parent run: its metrics, else its data.floors.* params (older studies)."""
    data = tracker.client.get_run(run_id).data
    out = {}
    for key in FLOOR_METRICS:
        value: Any = data.metrics.get(key, data.params.get(f"data.floors.{key}"))
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            continue
    return out


def _figure(axes: Any) -> Figure:
    """The figure behind Optuna's Axes (or array of them), widened past 4 panels to stay legible."""
    first = axes.ravel()[0] if isinstance(axes, np.ndarray) else axes
    fig = first.figure
    if isinstance(axes, np.ndarray) and axes.size > 4:
        fig.set_size_inches(min(3.2 * axes.size, 48.0), fig.get_size_inches()[1])
    return fig
