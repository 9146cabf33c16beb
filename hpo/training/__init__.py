"""Training: optimisers and schedules, per-epoch evaluation, and the training loop."""

from hpo.training.loop import train
from hpo.training.loop import TrainResult

__all__ = ["TrainResult", "train"]
