"""Optimisers and learning-rate schedules by name, built from the `train.optimizer` config."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras

from hpo.config.tree import OptimizerConfig
from hpo.config.tree import ScheduleConfig


def learning_rate(
    cfg: OptimizerConfig, schedule: ScheduleConfig, steps_per_epoch: int, epochs: int
) -> Any:
    """A float for a constant rate, else a Keras schedule over the run's optimizer steps."""
    lr, final = cfg.learning_rate, schedule.final_learning_rate
    total_steps = steps_per_epoch * epochs
    if schedule.type == "constant":
        return lr
    if schedule.type == "exponential":
        # From lr at step 0 to `final` at the last step, as the report's 10^-2.66 -> 10^-3 run.
        return keras.optimizers.schedules.ExponentialDecay(lr, max(total_steps, 1), final / lr)
    warmup = min(schedule.warmup_epochs * steps_per_epoch, max(total_steps - 1, 0))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=lr if warmup == 0 else final,
        decay_steps=max(total_steps - warmup, 1),
        alpha=min(final / lr, 1.0),
        warmup_target=None if warmup == 0 else lr,
        warmup_steps=warmup,
    )


def _adam(cfg: OptimizerConfig, lr: Any) -> keras.optimizers.Optimizer:
    return keras.optimizers.Adam(lr, clipnorm=cfg.clipnorm)


def _adamw(cfg: OptimizerConfig, lr: Any) -> keras.optimizers.Optimizer:
    return keras.optimizers.AdamW(lr, weight_decay=cfg.weight_decay, clipnorm=cfg.clipnorm)


def _sgd(cfg: OptimizerConfig, lr: Any) -> keras.optimizers.Optimizer:
    return keras.optimizers.SGD(lr, momentum=cfg.momentum, nesterov=cfg.nesterov, clipnorm=cfg.clipnorm)


def _rmsprop(cfg: OptimizerConfig, lr: Any) -> keras.optimizers.Optimizer:
    return keras.optimizers.RMSprop(lr, momentum=cfg.momentum, clipnorm=cfg.clipnorm)


OPTIMIZERS: dict[str, Callable[[OptimizerConfig, Any], keras.optimizers.Optimizer]] = {
    "adam": _adam,
    "adamw": _adamw,
    "sgd": _sgd,
    "rmsprop": _rmsprop,
}


def build_optimizer(
    cfg: OptimizerConfig, schedule: ScheduleConfig, steps_per_epoch: int, epochs: int
) -> keras.optimizers.Optimizer:
    """The optimiser named by `cfg.type`, its rate following `schedule` over the whole run."""
    lr = learning_rate(cfg, schedule, steps_per_epoch, epochs)
    return OPTIMIZERS[cfg.type](cfg, lr)
