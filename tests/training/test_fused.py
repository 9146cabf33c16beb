"""Several trials in one vmapped program (hpo/training/fused.py, Keras' JAX backend): each member
trains as it would alone on the device path, and one member's end leaves the others unchanged.

    KERAS_BACKEND=jax .venv/bin/python -m pytest tests/training/test_fused.py
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
import optuna
import pytest

from hpo.config import apply_overrides
from hpo.data import load_dataset
from hpo.errors import TrialFailed

ON_JAX = keras.backend.backend() == "jax"
pytestmark = pytest.mark.skipif(not ON_JAX, reason="fused training runs on Keras' JAX backend "
                                "only (make test runs this file again with KERAS_BACKEND=jax)")

SMALL = {
    "model.conv_blocks": [[8], [8]],
    "model.pool.size": 2,
    "model.dense": [32, 16],
    "model.regularizer": {"type": "l2", "layers": "both"},
    "train.batch_size": 32,
    "train.epochs": 3,
}
N_TRAIN, N_VAL = 240, 60


class Logs(keras.callbacks.Callback):
    """Every epoch's logs as the callbacks after the evaluator see them; prunes at `prune_at`."""

    def __init__(self, prune_at: int | None = None) -> None:
        super().__init__()
        self.epochs: list[dict[str, Any]] = []
        self.prune_at = prune_at

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.epochs.append(dict(logs or {}))
        if epoch == self.prune_at:
            raise optuna.TrialPruned(f"Trial was pruned at epoch {epoch}.")


def member(ds: Any, overrides: dict[str, Any], prune_at: int | None = None) -> Any:
    """A compiled network of one trial as train() builds it (its own seed, its input statistics
    fitted on its own sample), with its evaluator and a log."""
    from hpo.model.builder import build_model
    from hpo.model.builder import InputStats
    from hpo.model.losses import LOSSES
    from hpo.training.device_loop import DeviceEvaluator
    from hpo.training.fused import Member
    from hpo.training.optimizers import build_optimizer

    cfg = apply_overrides({**SMALL, **overrides})
    seed = cfg.train.seed
    keras.utils.set_random_seed(seed)
    sample = np.random.default_rng(seed).permutation(N_TRAIN)[:160]
    stats = InputStats.fit(ds.images[sample], ds.redshift[sample], ds.log_mass[sample],
                           cfg.model.input.transform)
    model = build_model(cfg.model, image_shape=ds.image_shape, stats=stats,
                        augment=cfg.train.augment, seed=seed)
    steps = math.ceil(N_TRAIN / cfg.train.batch_size)
    model.compile(optimizer=build_optimizer(cfg.train.optimizer, cfg.train.schedule, steps,
                                            cfg.train.epochs), loss=LOSSES["mse"])
    evaluator = DeviceEvaluator(ds.log_mass[N_TRAIN:], monitor="val_residual_std")
    return Member(model, evaluator, seed, callbacks=[Logs(prune_at)])


def alone(ds: Any, data: Any, overrides: dict[str, Any], dispatch: str = "auto") -> Any:
    """The member trained by itself on the device path (fit_on_device)."""
    from hpo.model.losses import LOSSES
    from hpo.training.device_loop import fit_on_device

    m = member(ds, overrides)
    try:
        fit_on_device(m.model, data, loss=LOSSES["mse"], batch_size=32, seed=m.seed,
                      initial_epoch=0, epochs=SMALL["train.epochs"], evaluator=m.evaluator,
                      callbacks=m.callbacks, dispatch=dispatch)
    except TrialFailed as exc:
        m.error = exc
    return m


def fused(ds: Any, data: Any, points: list[dict[str, Any]], prune_at: dict[int, int] | None = None,
          dispatch: str = "auto", strategy: str = "vmap", pipeline: bool | None = None) -> list[Any]:
    from hpo.model.losses import LOSSES
    from hpo.training.fused import fit_fused

    members = [member(ds, p, (prune_at or {}).get(i)) for i, p in enumerate(points)]
    fit_fused(members, data, loss=LOSSES["mse"], batch_size=32, initial_epoch=0,
              epochs=SMALL["train.epochs"], dispatch=dispatch, strategy=strategy,
              pipeline=pipeline)
    return members


def assert_same_run(ours: Any, theirs: Any) -> None:
    assert sorted(ours.evaluator.history) == sorted(theirs.evaluator.history)
    for key, values in theirs.evaluator.history.items():
        np.testing.assert_allclose(ours.evaluator.history[key], values, rtol=2e-4, atol=2e-5,
                                   err_msg=key)
    for a, b in zip(ours.model.get_weights(), theirs.model.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


@pytest.fixture(scope="module")
def ds(signal_h5):
    return load_dataset(signal_h5)


@pytest.fixture(scope="module")
def data(ds):
    from hpo.training.device_data import place

    return place(ds, np.arange(N_TRAIN), np.arange(N_TRAIN, N_TRAIN + N_VAL), exposure=False)


# Three trials of one shape that differ in every number a member may set: seed (weights,
# shuffle, dropout and augmentation draws, input statistics), learning rate and its cosine
# schedule, dropout rate, L2 strength.
POINTS = [
    {"train.seed": 0, "train.optimizer.learning_rate": 3e-3, "model.dropout.rate": 0.2,
     "model.regularizer.l2": 1e-4, "train.schedule": {"type": "cosine", "warmup_epochs": 1}},
    {"train.seed": 1, "train.optimizer.learning_rate": 1e-3, "model.dropout.rate": 0.4,
     "model.regularizer.l2": 1e-3, "train.schedule": {"type": "cosine", "warmup_epochs": 1,
                                                      "final_learning_rate": 1e-4}},
    {"train.seed": 2, "train.optimizer.learning_rate": 5e-3, "model.dropout.rate": 0.1,
     "model.regularizer.l2": 1e-5, "train.schedule": {"type": "cosine", "warmup_epochs": 1}},
]


@pytest.mark.parametrize(("dispatch", "strategy"),
                         [("step", "vmap"), ("epoch", "vmap"), ("step", "unroll")])
def test_a_fused_member_trains_as_it_would_alone(ds, data, dispatch, strategy):
    # Rule: each member of a fused program ends with the per-epoch metrics and weights of the
    # same trial trained alone on the device path (same seed; float tolerance), though they
    # differ in every per-member number, whichever way the program is fused.
    members = fused(ds, data, POINTS, dispatch=dispatch, strategy=strategy)
    for point, m in zip(POINTS, members, strict=True):
        assert m.error is None and m.epochs_run == 3
        assert_same_run(m, alone(ds, data, point, dispatch))
    assert members[0].evaluator.history["loss"] != members[1].evaluator.history["loss"]


def test_a_nan_in_one_member_fails_only_it(ds, data):
    # Rule: a member that diverges (a huge constant learning rate: NaN loss) fails with
    # TrialFailed at its epoch; the others' histories and weights are those of their alone-runs.
    points = [{"train.seed": 0, "train.optimizer.learning_rate": 3e-3},
              {"train.seed": 1, "train.optimizer.learning_rate": 1e12},
              {"train.seed": 2, "train.optimizer.learning_rate": 1e-3}]
    members = fused(ds, data, points)
    assert isinstance(members[1].error, TrialFailed) and "epoch" in str(members[1].error)
    assert members[1].epochs_run < 3
    for i in (0, 2):
        assert members[i].error is None and members[i].epochs_run == 3
        assert_same_run(members[i], alone(ds, data, points[i]))


@pytest.mark.parametrize("pipeline", [False, True])
def test_a_pruned_member_leaves_the_others_unchanged(ds, data, pipeline):
    # Rule: a member pruned after its first epoch stops there (its pruning error kept for its
    # trial to raise); the members trained on alone are unchanged, also when the next epoch was
    # dispatched for all of them before the pruning (pipelined: the rest keep their rows of it).
    members = fused(ds, data, POINTS[:2], prune_at={0: 0}, pipeline=pipeline)
    assert isinstance(members[0].error, optuna.TrialPruned)
    assert members[0].epochs_run == 1 and len(members[0].callbacks[0].epochs) == 1
    assert members[1].error is None and members[1].epochs_run == 3
    assert_same_run(members[1], alone(ds, data, POINTS[1]))


def test_networks_of_another_shape_are_refused(ds):
    # Rule: members whose networks differ other than by the per-member numbers (here one conv
    # layer's filters) cannot share a program: refused before anything is traced.
    from hpo.training.fused import fusion_error

    a = member(ds, POINTS[0]).model
    b = member(ds, {**POINTS[1], "model.conv_blocks": [[8], [16]]}).model
    c = member(ds, {**POINTS[1], "model.pool.type": "avg"}).model
    assert fusion_error([a, member(ds, POINTS[1]).model]) == ""
    assert "conv1_0" in fusion_error([a, b])
    assert "pool" in fusion_error([a, c])


def test_train_fused_gives_each_trial_what_train_gives_it_alone(ds):
    # Rule: train_fused (a worker's group of one fusion key) returns per trial the result that
    # train() returns for it alone on the device path: per-epoch history, best epoch and final
    # validation metrics, through an MSE warm start and the likelihood phase after it.
    from hpo.training import train
    from hpo.training.loop import train_fused

    base = {**SMALL, "train.loop": "device", "train.epochs": 2,
            "train.loss": {"type": "gaussian_nll", "warm_start_epochs": 1}}
    cfgs = [apply_overrides({**base, **point}) for point in POINTS[:2]]
    results = train_fused(cfgs, ds, strategy="vmap")
    for cfg, ours in zip(cfgs, results, strict=True):
        theirs = train(cfg, ds)
        assert not isinstance(ours, BaseException), ours
        assert ours.epochs_run == theirs.epochs_run == 2 and ours.best_epoch == theirs.best_epoch
        for key, values in theirs.history.items():
            np.testing.assert_allclose(ours.history[key], values, rtol=2e-4, atol=2e-5,
                                       err_msg=key)
        for key, value in theirs.val_metrics.items():
            assert ours.val_metrics[key] == pytest.approx(value, rel=2e-4, abs=2e-5), key


def test_train_fused_refuses_configs_of_several_fusion_keys(ds):
    # Rule: configs that cannot share a program are refused in one line, before any training.
    from hpo.errors import ConfigError
    from hpo.training.loop import train_fused

    cfgs = [apply_overrides({**SMALL, "train.loop": "device"}),
            apply_overrides({**SMALL, "train.loop": "device", "train.batch_size": 64})]
    with pytest.raises(ConfigError, match="one fusion key"):
        train_fused(cfgs, ds)


def test_fused_trials_are_each_their_own_recorded_run(ds, signal_h5):
    # Rule: run_trials_fused records each trial as run_trial does: its own run started, its
    # epochs, and ended its own way (one pruned after its first epoch: PRUNED with its curve;
    # the other trains on to COMPLETE with its result), the pruning returned for its trial.
    from hpo.trial.runner import run_trials_fused
    from tests.trial.test_runner import ListRecorder

    base = {**SMALL, "train.loop": "device", "train.epochs": 2, "data.path": str(signal_h5)}
    cfgs = [apply_overrides({**base, **point}) for point in POINTS[:2]]
    recorders = [ListRecorder(), ListRecorder()]
    out = run_trials_fused(cfgs, ds, recorders, callbacks=[[Logs(prune_at=0)], []])
    assert isinstance(out[0], optuna.TrialPruned)
    assert recorders[0].names() == ["start", "inputs", "epoch", "pruned", "finish"]
    assert recorders[0].calls[-1] == ("finish", "PRUNED", 1, None)
    assert recorders[1].names() == ["start", "inputs", "epoch", "epoch", "result", "finish"]
    assert recorders[1].calls[-1] == ("finish", "COMPLETE", 2, None)
    assert out[1].value == out[1].result.val_metrics["residual_std"]


ADAMW = [
    {"train.seed": 0, "train.optimizer": {"type": "adamw", "learning_rate": 3e-3,
                                          "weight_decay": 1e-2},
     "train.schedule": {"type": "exponential", "final_learning_rate": 1e-4},
     "model.regularizer": {"type": "l1l2", "l1": 1e-4, "l2": 1e-5, "layers": "dense"}},
    {"train.seed": 1, "train.optimizer": {"type": "adamw", "learning_rate": 1e-3,
                                          "weight_decay": 1e-4},
     "train.schedule": {"type": "exponential", "final_learning_rate": 1e-5},
     "model.regularizer": {"type": "l1l2", "l1": 1e-3, "l2": 1e-3, "layers": "dense"}},
]


def test_weight_decay_an_exponential_schedule_and_l1_are_a_members_own(ds, data):
    # Rule: AdamW's weight decay, an exponential schedule's numbers and L1 strengths are
    # per-member arrays too: configs of one fusion key build networks that fuse, and each
    # member trains as it would alone.
    from hpo.training.fusion import fusion_key

    assert fusion_key(apply_overrides({**SMALL, **ADAMW[0]})) == fusion_key(
        apply_overrides({**SMALL, **ADAMW[1]}))
    members = fused(ds, data, ADAMW)
    for point, m in zip(ADAMW, members, strict=True):
        assert m.error is None
        assert_same_run(m, alone(ds, data, point))
