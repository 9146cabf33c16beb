"""Optimisers and learning-rate schedules by name, as the report scanned them."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from hpo.config.tree import OptimizerConfig
from hpo.config.tree import ScheduleConfig
from hpo.training.optimizers import build_optimizer
from hpo.training.optimizers import learning_rate
from hpo.training.optimizers import OPTIMIZERS


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_builds_with_its_options(name):
    # Rule: each optimizer name gives that Keras optimizer, momentum/Nesterov/clipping passed on.
    cfg = OptimizerConfig(type=name, learning_rate=1e-3, momentum=0.9, nesterov=True, clipnorm=1.0)
    opt = build_optimizer(cfg, ScheduleConfig(), steps_per_epoch=10, epochs=2)
    expected = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW,
                "sgd": keras.optimizers.SGD, "rmsprop": keras.optimizers.RMSprop}[name]
    assert isinstance(opt, expected) and opt.clipnorm == 1.0
    if name == "sgd":
        assert opt.nesterov and opt.momentum == 0.9


def test_exponential_schedule_runs_from_the_first_to_the_final_rate():
    # Rule: the report's decay goes from 10^-2.66 at step 0 to 10^-3 at the last step.
    cfg = OptimizerConfig(learning_rate=10**-2.66)
    sched = learning_rate(cfg, ScheduleConfig(type="exponential", final_learning_rate=1e-3), 50, 20)
    assert float(sched(0)) == pytest.approx(10**-2.66, rel=1e-5)
    assert float(sched(1000)) == pytest.approx(1e-3, rel=1e-4)


def test_cosine_schedule_warms_up_then_decays():
    # Rule: cosine with warm-up rises to the rate over the warm-up epochs, then falls to the final rate.
    cfg = OptimizerConfig(learning_rate=1e-3)
    sched = learning_rate(cfg, ScheduleConfig(type="cosine", warmup_epochs=2, final_learning_rate=1e-5), 10, 10)
    values = np.array([float(sched(s)) for s in (0, 10, 20, 60, 100)])
    assert values[0] < values[1] < values[2] == pytest.approx(1e-3, rel=1e-4)
    assert values[2] > values[3] > values[4] == pytest.approx(1e-5, rel=1e-2)


def test_constant_schedule_is_a_plain_rate():
    # Rule: constant means a float, which MLflow logs as the rate of every epoch.
    assert learning_rate(OptimizerConfig(learning_rate=3e-4), ScheduleConfig(), 10, 10) == 3e-4
