"""The fusion key (hpo/training/fusion.py): which trials a worker may train as one program."""

from __future__ import annotations

from hpo.config import apply_overrides
from hpo.training.fusion import fusion_key
from hpo.training.fusion import shape_key

BASE = {"model.filters": 12, "model.kernel_size": 5, "model.dense": [256, 128, 64],
        "model.regularizer.type": "l2", "train.schedule.type": "cosine"}


def key(**overrides: object) -> str:
    return fusion_key(apply_overrides({**BASE, **{k.replace("__", "."): v
                                                  for k, v in overrides.items()}}))


def test_trials_that_differ_only_in_per_member_numbers_share_a_key():
    # Rule: seed, learning rate and schedule numbers, dropout rate, L2 strength, weight decay,
    # early stopping and TTA are a member's own (arrays of the fused program, or per trial).
    assert key() == key(train__seed=3, train__optimizer__learning_rate=3e-4,
                        train__schedule__final_learning_rate=1e-6, model__dropout__rate=0.4,
                        model__regularizer__l2=1e-3, train__early_stopping_patience=5,
                        train__augment__tta=True)


def test_what_shapes_the_program_splits_the_key():
    # Rule: the layout, the batch size, the optimizer's kind, the pooling, the augmentation,
    # a dropout that is there or not, a warm-up or not: each is another program.
    for change in ({"model__filters": 13}, {"train__batch_size": 32},
                   {"train__optimizer__type": "adamw"}, {"model__pool__type": "avg"},
                   {"train__augment__flips": False}, {"model__dropout__rate": 0.0},
                   {"train__schedule__warmup_epochs": 2}, {"train__epochs": 7}):
        assert key(**change) != key(), change


def test_settings_the_options_leave_unused_do_not_split_the_key():
    # Rule: an L2 strength without a regularizer, a dropout rate without dropout, and filters
    # written two ways that the builder lays out alike are one key.
    assert key(model__regularizer__type="none") == key(model__regularizer__type="none",
                                                       model__regularizer__l2=0.5)
    assert key(model__dropout__placement="none") == key(model__dropout__placement="none",
                                                        model__dropout__rate=0.0)
    assert key(model__filters=None, model__conv_blocks=[[12, 12, 12], [12, 12]]) == key()


def test_the_shape_key_sees_variable_shapes_only():
    cfg = apply_overrides(BASE)
    assert shape_key(cfg) == shape_key(apply_overrides({**BASE, "model.pool.type": "avg",
                                                        "train.batch_size": 32}))
    assert shape_key(cfg) != shape_key(apply_overrides({**BASE, "model.kernel_size": 3}))
