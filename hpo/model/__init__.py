"""Model: the CNN builder, the losses and the residual metrics (the custom layers are in
hpo/inference, which every saved model carries)."""

from hpo.inference.layers import register
from hpo.model.builder import build_model
from hpo.model.builder import InputStats
from hpo.model.losses import LOSSES
from hpo.model.metrics import residual_metrics

register()  # networks saved by hpo name their layers "hpo>ClassName"

__all__ = ["LOSSES", "InputStats", "build_model", "residual_metrics"]
