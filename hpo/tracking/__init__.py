"""Tracking: the only place (with hpo.registry) that talks to MLflow."""

from hpo.tracking.retry import TrackingUnavailable
from hpo.tracking.runs import default_tracking_uri
from hpo.tracking.runs import Tracker

__all__ = ["Tracker", "TrackingUnavailable", "default_tracking_uri"]
