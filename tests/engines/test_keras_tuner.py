"""keras-tuner as a study engine: the space's params as kt.HyperParameters, and back."""

from __future__ import annotations

from hpo.config.space import parse_space


def test_every_distribution_maps_to_a_hyperparameter_and_back():
    # Rule: keras-tuner draws the same values the space names: a stepped float keeps its top
    # value, log ranges sample on a log scale, list choices come back as lists, mixed ints and
    # floats as they were written, repeats as train.seed.
    from hpo.engines.keras_tuner import config_values
    from hpo.engines.keras_tuner import hyperparameters

    raw = {"study": {"name": "m", "engine": "keras_tuner", "repeats": 2},
           "params": {"model.dropout.rate": {"float": [0.0, 0.5], "step": 0.05},
                      "train.optimizer.learning_rate": {"float": [1e-4, 1e-2], "log": True},
                      "model.filters": {"int": [8, 32], "log": True},
                      "model.conv_blocks": {"categorical": [[[8]], [[8, 8], [4]]]},
                      "model.regularizer.l2": {"categorical": [0, 0.5]}}}
    space = parse_space(raw, source="m.yaml")
    hp = hyperparameters(space)
    by_name = {p.name: p for p in hp.space}

    def value(path, drawn):
        return config_values(space, {**hp.values, path: drawn})[path]

    rates = sorted(value("model.dropout.rate", v) for v in by_name["model.dropout.rate"].values)
    assert rates == space.params["model.dropout.rate"].grid()
    assert by_name["train.optimizer.learning_rate"].sampling == "log"
    assert by_name["model.filters"].sampling == "log"
    assert list(by_name["train.seed"].values) == [0, 1]
    blocks = by_name["model.conv_blocks"].values
    assert [value("model.conv_blocks", b) for b in blocks] == [[[8]], [[8, 8], [4]]]
    assert by_name["model.regularizer.l2"].values == [0.0, 0.5]
    zero = value("model.regularizer.l2", 0.0)
    assert zero == 0 and isinstance(zero, int)
