"""Search-space files: every shipped file validates; a malformed one names its file and key."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from hpo.config.space import load_space
from hpo.config.space import parse_space
from hpo.engines.suggest import config_for_trial
from hpo.errors import ConfigError
from hpo.errors import TrialFailed

SPACES = sorted((Path(__file__).parents[2] / "search_spaces").glob("*.yaml"))


@pytest.mark.parametrize("path", SPACES, ids=[p.stem for p in SPACES])
def test_every_shipped_space_validates(path):
    # Rule: each file in search_spaces/ is a valid space with a finite budget.
    space = load_space(path)
    assert space.budget() >= 1


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"study": {"name": "x"}, "params": {"model.dropuot.rate": {"float": [0, 0.5]}}}, "'model.dropuot.rate' is not a config path"),
        ({"study": {"name": "x"}, "params": {"model.dropout.rate": {"float": [0, 2]}}}, "'model.dropout.rate'"),
        ({"study": {"name": "x"}, "params": {"model.dropout.rate": {"floot": [0, 1]}}}, "key 'params.model.dropout.rate.floot'"),
        ({"study": {"name": "x"}, "params": {"model.dropout.rate": {"float": [0.5, 0.1]}}}, "low must be <= high"),
        ({"study": {"name": "x", "sampler": {"type": "annealing"}}}, "key 'study.sampler.type'"),
        ({"study": {"name": "x"}, "base": {"train": {"epoch": 3}}}, "'train.epoch' is not a config path"),
        ({"study": {"name": "x", "sampler": {"type": "grid"}}, "params": {"train.optimizer.learning_rate": {"float": [1e-4, 1e-2], "log": True}}}, "a grid needs a step"),
        ({"study": {"name": "x"}}, "study.n_trials is required"),
        ({"study": {"name": "x", "n_trials": 1}, "data": {"val_fraction": 0.6, "test_fraction": 0.5}},
         "val_fraction + test_fraction must leave at least 10% of the clusters to train on"),
        ({"study": {"name": "x", "n_trials": 2, "enqueue": [{"model.filters": 8}]},
          "params": {"model.dropout.rate": {"float": [0, 0.5]}}},
         "key 'study.enqueue.0': 'model.filters' is not a param of this space"),
        ({"study": {"name": "x", "n_trials": 2, "enqueue": [{"model.dropout.rate": 0.7}]},
          "params": {"model.dropout.rate": {"float": [0, 0.5]}}},
         "model.dropout.rate = 0.7: expected a number in [0.0, 0.5]"),
        ({"study": {"name": "x", "n_trials": 2, "enqueue": [{}, {"model.pool.type": "mean"}]},
          "params": {"model.pool.type": {"categorical": ["max", "avg"]}}},
         "key 'study.enqueue.1': model.pool.type = 'mean' is not one of ['max', 'avg']"),
        ({"study": {"name": "x", "sampler": {"type": "grid"}, "enqueue": [{"model.filters": 8}]},
          "params": {"model.filters": {"categorical": [8]}}}, "enqueue needs engine optuna"),
        ({"study": {"name": "x", "n_trials": 1}, "tracking": {"log_models": "best"}},
         "key 'tracking.log_models'"),
        ({"study": {"name": "x", "n_trials": 4, "fuse": 4}},
         "key 'study.fuse': 4 trials train as one program on the device path only"),
        ({"study": {"name": "x", "n_trials": 4, "fuse": 2, "engine": "keras_tuner"},
          "base": {"train": {"loop": "device"}}}, "fuse 2 needs engine optuna"),
        ({"study": {"name": "x", "n_trials": 4, "fuse": 0}}, "key 'study.fuse'"),
    ],
)
def test_malformed_space_names_file_and_key(raw, fragment):
    # Rule: the message names the file, the key and what was expected.
    with pytest.raises(ConfigError) as err:
        parse_space(raw, source="spaces/bad.yaml").budget()
    assert "spaces/bad.yaml" in str(err.value) and fragment in str(err.value)


def test_grid_with_repeats_scans_every_point_per_seed():
    # Rule: a grid's budget is its size; repeats multiply it through train.seed.
    space = parse_space(
        {"study": {"name": "g", "sampler": {"type": "grid"}, "repeats": 3},
         "params": {"model.filters": {"int": [1, 91], "step": 10}}},
        source="g.yaml",
    )
    assert space.grid()["model.filters"] == [1, 11, 21, 31, 41, 51, 61, 71, 81, 91]
    assert space.budget() == 30


def test_list_valued_choices_reach_the_config():
    # Rule: categorical choices may be lists (conv layouts); trials get them back as lists.
    space = parse_space(
        {"study": {"name": "c", "n_trials": 1},
         "params": {"model.conv_blocks": {"categorical": [[[8]], [[8, 8], [4]]]}}},
        source="c.yaml",
    )
    study = optuna.create_study()
    cfg = config_for_trial(study.ask(), space)
    assert cfg.model.conv_blocks in ([[8]], [[8, 8], [4]])


def test_impossible_combination_fails_only_the_trial():
    # Rule: a sampled combination the config refuses is a TrialFailed, not a crash.
    space = parse_space(
        {"study": {"name": "d", "n_trials": 1},
         "base": {"model": {"dense": [8, 8], "dropout": {"placement": "one_dense"}}},
         "params": {"model.dropout.index": {"int": [0, 1]}}},
        source="d.yaml",
    )
    assert config_for_trial(optuna.create_study().ask(), space).model.dropout.index in (0, 1)
    space.base["model"]["dense"] = [8]  # now index 1 addresses no layer
    study = optuna.create_study()
    study.enqueue_trial({"model.dropout.index": 1})
    with pytest.raises(TrialFailed, match="dropout.index"):
        config_for_trial(study.ask(), space)


def test_a_huge_int_range_validates_at_once():
    # Rule: validation checks a numeric range at its ends; it never enumerates [0, 2**31].
    space = parse_space({"study": {"name": "s", "n_trials": 3},
                         "params": {"train.seed": {"int": [0, 2**31]}}}, source="s.yaml")
    assert space.params["train.seed"].int_ == (0, 2**31)


def test_enqueued_points_are_the_first_trials_params():
    # Rule: study.enqueue's points are what the sampler hands out first; unnamed params sampled.
    from hpo.config.space import enqueue_params

    space = parse_space(
        {"study": {"name": "e", "n_trials": 3, "enqueue": [
            {"model.dense": [64], "model.dropout.rate": 0.25}, {"model.dense": [32, 16]}]},
         "params": {"model.dense": {"categorical": [[64], [32, 16]]},
                    "model.dropout.rate": {"float": [0.0, 0.5]}}},
        source="e.yaml",
    )
    study = optuna.create_study()
    for params in enqueue_params(space):
        study.enqueue_trial(params)
    first, second = (config_for_trial(study.ask(), space) for _ in range(2))
    assert first.model.dense == [64] and first.model.dropout.rate == 0.25
    assert second.model.dense == [32, 16] and 0.0 <= second.model.dropout.rate <= 0.5


@pytest.mark.parametrize("key", ["data.path", "data.split_seed", "data.test_fraction", "data.max_clusters"])
def test_data_keys_cannot_be_searched(key):
    # Rule: a data setting as a search parameter is refused in one line naming the key and why.
    values = {"data.path": {"categorical": ["a.h5", "b.h5"]}, "data.max_clusters": {"int": [100, 200]}}
    raw = {"study": {"name": "d", "n_trials": 2}, "params": {key: values.get(key, {"categorical": [0, 1]})}}
    if key == "data.test_fraction":
        raw["params"][key] = {"float": [0.1, 0.2]}
    with pytest.raises(ConfigError) as err:
        parse_space(raw, source="d.yaml")
    message = str(err.value)
    assert f"params key '{key}'" in message and "cannot be searched" in message and "\n" not in message


def test_study_metric_choices_and_val_nll_needs_a_sigma_head():
    # Rule: study.metric takes val_residual_std (default), val_rmse and val_nll; val_nll is refused
    # for a point estimator, whether the base or a parameter trains one.
    base = {"study": {"name": "m", "n_trials": 1}}
    assert parse_space(base, source="m.yaml").study.metric == "val_residual_std"
    assert parse_space({"study": {**base["study"], "metric": "val_rmse"}}, source="m.yaml").study.metric == "val_rmse"
    nll = {"study": {**base["study"], "metric": "val_nll"}}
    with pytest.raises(ConfigError, match="val_nll needs a sigma head"):
        parse_space(nll, source="m.yaml")
    likelihood = {"train": {"loss": {"type": "gaussian_nll"}}}
    assert parse_space({**nll, "base": likelihood}, source="m.yaml").study.metric == "val_nll"
    with pytest.raises(ConfigError, match="params key 'train.loss.type'"):
        parse_space({**nll, "base": likelihood, "params": {"train.loss.type": {"categorical": ["gaussian_nll", "mse"]}}},
                    source="m.yaml")
    with pytest.raises(ConfigError, match="key 'study.metric'"):
        parse_space({"study": {**base["study"], "metric": "val_mae"}}, source="m.yaml")


@pytest.mark.parametrize(("dist", "fragment"), [
    ({"float": [1.0e-4, float("inf")], "log": True}, "key 'params.train.optimizer.learning_rate.float.1': Input should be a finite number (got inf)"),
    ({"float": [float("-inf"), 0.1]}, "Input should be a finite number (got -inf)"),
    ({"float": [0.0, 0.1], "step": float("nan")}, "Input should be a finite number"),
    ({"categorical": [1.0e-3, float("inf")]}, "a choice must be a finite number"),
])
def test_every_range_bound_and_choice_is_finite(dist, fragment):
    # Rule: a range or choice holding inf or NaN is refused when the space is read (every trial
    # would fail with it), naming the file and the key.
    with pytest.raises(ConfigError) as info:
        parse_space({"study": {"name": "x", "n_trials": 3},
                     "params": {"train.optimizer.learning_rate": dist}}, source="s.yaml")
    assert str(info.value).startswith("s.yaml") and fragment in str(info.value)


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_a_sampler_seed_is_one_numpy_takes(seed):
    with pytest.raises(ConfigError, match="study.sampler.seed"):
        parse_space({"study": {"name": "x", "n_trials": 3, "sampler": {"type": "tpe", "seed": seed}},
                     "params": {"model.dropout.rate": {"float": [0, 0.5]}}}, source="s.yaml")
