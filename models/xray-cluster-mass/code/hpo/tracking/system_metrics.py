"""CPU, memory, disk, network and GPU use of a trial, logged as MLflow system metrics (system/*).

    MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL=5 hpo worker --study quickstart --storage sqlite:///hpo.db

On by default for trial runs; MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false turns it off. CPU and
memory need psutil (a dependency); GPU metrics need pynvml (`pip install nvidia-ml-py`) and an
NVIDIA GPU, and are simply absent without them. MLflow samples every
MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL seconds (default 10) in a daemon thread that stops by
itself when the run ends.
"""

from __future__ import annotations

import logging
import os
from typing import Any

_logger = logging.getLogger(__name__)

SAMPLING_INTERVAL_S = 10.0


def enabled() -> bool:
    """False only when MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING says false (or 0)."""
    return os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "true").strip().lower() not in ("false", "0")


def start(run_id: str, tracking_uri: str) -> Any | None:
    """A started SystemMetricsMonitor logging to `run_id`, or None when off or psutil is missing."""
    if not enabled():
        return None
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    except ImportError as exc:  # psutil missing: CPU and memory cannot be read
        _logger.info("system metrics off: %s (pip install psutil)", exc)
        return None
    quiet = logging.getLogger("mlflow.system_metrics")
    if quiet.level == logging.NOTSET:
        quiet.setLevel(logging.WARNING)  # its start/stop INFO lines would double every trial's log
    monitor = SystemMetricsMonitor(run_id, sampling_interval=SAMPLING_INTERVAL_S, tracking_uri=tracking_uri)
    monitor.start()
    return monitor


def stop(monitor: Any | None) -> None:
    """Stops the sampling thread and sends what it holds (before the run is ended)."""
    if monitor is not None:
        monitor.finish()
