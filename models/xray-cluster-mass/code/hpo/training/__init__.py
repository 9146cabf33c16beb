"""Training: optimisers and schedules, per-epoch evaluation, and the training loop."""

from hpo.training.loop import TrainResult
from hpo.training.loop import train

__all__ = ["TrainResult", "train"]
