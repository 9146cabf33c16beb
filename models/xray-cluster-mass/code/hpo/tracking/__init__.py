"""Tracking: the only place (with hpo.registry) that talks to MLflow."""

from hpo.tracking.retry import TrackingUnavailable
from hpo.tracking.runs import MLFLOW_RUN_ID_KEY
from hpo.tracking.runs import Tracker
from hpo.tracking.runs import default_tracking_uri

__all__ = ["MLFLOW_RUN_ID_KEY", "Tracker", "TrackingUnavailable", "default_tracking_uri"]
