"""Model: the CNN builder, its custom layers, the losses and the residual metrics."""

from hpo.model.builder import build_model
from hpo.model.builder import InputStats
from hpo.model.losses import LOSSES
from hpo.model.metrics import residual_metrics

__all__ = ["LOSSES", "InputStats", "build_model", "residual_metrics"]
