"""Dotted overrides of the one config tree: applied, validated once, unknown paths named."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpo.config import apply_overrides
from hpo.config import load_run_config
from hpo.config import RunConfig
from hpo.config.overrides import read_yaml
from hpo.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_are_the_report_architecture():
    # Rule: the default model is the lab report's section 6.1 network.
    cfg = RunConfig()
    assert cfg.model.conv_blocks == [[20, 20, 20], [20, 20]]
    assert cfg.model.kernel_size == 2 and cfg.model.pool.size == 4 and cfg.model.pool.type == "max"
    assert cfg.model.dense == [512, 256, 128, 64] and cfg.model.use_redshift
    assert cfg.train.batch_size == 64 and cfg.train.optimizer.type == "adam"
    assert cfg.train.loss.type == "mse"


def test_dotted_and_nested_overrides_agree():
    # Rule: `a.b: v` and `a: {b: v}` are the same override.
    dotted = apply_overrides({"model.dropout.rate": 0.2, "train.epochs": 7})
    nested = apply_overrides({"model": {"dropout": {"rate": 0.2}}, "train": {"epochs": 7}})
    assert dotted == nested and dotted.model.dropout.rate == 0.2


def test_unknown_path_is_named_with_the_valid_keys():
    # Rule: a misspelt path names itself and lists what exists at that level.
    with pytest.raises(ConfigError, match=r"x.yaml: 'model.dropuot.rate' is not a config path; model has: .*dropout"):
        apply_overrides({"model.dropuot.rate": 0.1}, where="x.yaml")


def test_bad_value_names_the_key_and_the_value():
    # Rule: a value the tree refuses names the key and repeats the value.
    with pytest.raises(ConfigError, match=r"'train.optimizer.type'.*'adamm'"):
        apply_overrides({"train.optimizer.type": "adamm"})


def test_yaml_file_errors_name_the_file(tmp_path):
    # Rule: a config file's errors name the file.
    path = tmp_path / "run.yaml"
    path.write_text("train: {epochs: -1}\n")
    with pytest.raises(ConfigError, match=str(path)):
        load_run_config(path)


def test_report_preset_restores_the_report_settings(tmp_path):
    # Rule: `preset: report` gives raw counts, Adam 1e-4, no dropout, no augmentation; the file's
    # own overrides still apply on top.
    path = tmp_path / "run.yaml"
    path.write_text("preset: report\ntrain: {epochs: 5}\n")
    cfg = load_run_config(path)
    assert cfg.model.input.transform == "none" and not cfg.model.input.standardize
    assert cfg.train.optimizer.learning_rate == 1e-4 and cfg.model.dropout.placement == "none"
    assert not (cfg.train.augment.flips or cfg.train.augment.rot90) and cfg.train.epochs == 5


def test_unknown_preset_lists_the_presets(tmp_path):
    # Rule: a misspelt preset names itself and the valid ones.
    path = tmp_path / "run.yaml"
    path.write_text("preset: reprot\n")
    with pytest.raises(ConfigError, match="unknown preset 'reprot'; presets are: every_depth, report"):
        load_run_config(path)


def test_every_depth_preset_is_the_model_the_depth_benchmark_judged():
    # Rule: `preset: every_depth` is the configuration benchmarks/depth.py trained and judged as
    # the one model for every depth (champion + exposure as rates + seed 1 + both calibrations),
    # so that the README's recipe gives the model of docs/results.md.
    import importlib.util

    from hpo.config.presets import preset_config

    spec = importlib.util.spec_from_file_location("depth", ROOT / "benchmarks" / "depth.py")
    depth = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(depth)
    judged = apply_overrides({**depth.CHAMPION, **depth.MODELS["mixed, exposure rate"][1], "train.seed": 1,
                              "train.calibrate_sigma": True, "train.calibrate_bias": True,
                              "train.epochs": 40, "train.early_stopping_patience": 10, "train.batch_size": 64})
    preset = preset_config("every_depth")
    assert preset.model == judged.model and preset.train == judged.train


@pytest.mark.parametrize(("text", "fragment"), [
    ("study:\n  name: a\nstudy:\n  name: b\n", "line 3, column 1: key 'study' is given twice (lines 1 and 3)"),
    ("params:\n  a.b: {float: [0, 1]}\n  a.b: {int: [0, 1]}\n", "key 'a.b' is given twice (lines 2 and 3)"),
    ("train:\n  seed: 1\n  seed: 2\n", "key 'seed' is given twice (lines 2 and 3)"),
    ("study:\n\tname: a\n", "line 2, column 1: not valid YAML: found character '\\t' that cannot start any "
     "token (YAML indents with spaces, not tabs)"),
    ("study: {name: a\n", "line 2, column 1: not valid YAML: expected ',' or '}'"),
    ("- a\n- b\n", "expected a mapping at the top level, got list"),
])
def test_a_yaml_slip_is_one_line_with_its_line_and_column(tmp_path, text, fragment):
    # Rule: a key given twice (PyYAML would keep the last silently) and a syntax error are one
    # line naming the file, the line and column, and what is wrong.
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        read_yaml(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and fragment in message and "\n" not in message


@pytest.mark.parametrize(("override", "fragment"), [
    ({"train.optimizer.learning_rate": float("inf")}, "'train.optimizer.learning_rate': Input should be a finite number"),
    ({"model.dropout.rate": float("nan")}, "'model.dropout.rate': Input should be a finite number"),
    ({"train.seed": -5}, "'train.seed': Input should be greater than or equal to 0 (got -5)"),
    ({"train.seed": 2**32}, "'train.seed': Input should be less than or equal to 4294967295"),
    ({"data.split_seed": -1}, "'data.split_seed': Input should be greater than or equal to 0"),
])
def test_every_number_is_finite_and_every_seed_is_numpys(override, fragment):
    # Rule: inf and NaN are no setting's value, and a seed is one numpy takes (0..2**32-1): both
    # are refused before anything trains.
    with pytest.raises(ConfigError) as info:
        apply_overrides(override)
    assert fragment in str(info.value)
