"""Fuzzing the search-space loader and the run-config overrides: any file mutated from a valid
one is a space (or a run config), or one ConfigError line naming the file, never a traceback.

    HYPOTHESIS_PROFILE=e2e python -m pytest tests/config/test_space_fuzz.py   # 500 examples each
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import example
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from hpo.cli import app
from hpo.config.overrides import apply_overrides
from hpo.config.overrides import read_yaml
from hpo.config.presets import load_run_config
from hpo.config.presets import PRESET_DIR
from hpo.config.space import grid_points
from hpo.config.space import load_space
from hpo.config.tree import RunConfig
from hpo.config.space import parse_space
from hpo.trial.corners import check_space
from tests._fuzz import accepted_or_one_line
from tests._fuzz import cli_accepted_or_one_line
from tests._fuzz import EDGE_FLOATS
from tests._fuzz import EDGE_INTS
from tests._fuzz import dump_mutated
from tests._fuzz import junk
from tests._fuzz import mutated_text
from tests._fuzz import mutated_tree

pytestmark = pytest.mark.fuzz

ROOT = Path(__file__).resolve().parents[2]
SPACE_FILES = sorted((ROOT / "search_spaces").glob("*.yaml"))
SPACES = {p.name: yaml.safe_load(p.read_text()) for p in SPACE_FILES}
RUN_CONFIGS = {p.name: yaml.safe_load(p.read_text()) for p in sorted(PRESET_DIR.glob("*.yaml"))}
RUN_CONFIGS["dotted.yaml"] = {"preset": "report", "model.dropout.rate": 0.1,
                              "train": {"epochs": 3, "optimizer.learning_rate": 1e-3}}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@st.composite
def mutated_file(draw: st.DrawFn, fixtures: dict[str, dict]) -> tuple[str, bytes]:
    name = draw(st.sampled_from(sorted(fixtures)))
    tree = draw(mutated_tree(fixtures[name]))
    return name, draw(mutated_text(dump_mutated(tree)))


def _written(folder: Path, case: tuple[str, bytes]) -> Path:
    path = folder / case[0]
    path.write_bytes(case[1])
    return path


def _use_space(path: Path) -> None:
    """What `hpo launch --dry-run` does with a space before it looks for the data file."""
    space = load_space(path)
    space.describe()
    if space.study.sampler.type == "grid" and space.grid_size() <= 10_000:
        grid_points(space)


# What the fuzzers found, kept as examples that always run (each was a traceback).
Q = b"study: {name: q, n_trials: 2}\n"
GRID = b"study: {name: q, sampler: {type: grid}}\n"


@example(("s.yaml", Q + b"params:\n  model.pool.type: {categorical: &a [1, *a]}\n"))  # a cycle
@example(("s.yaml", Q + b"base: {data: 5}\ndata: {path: d.h5}\n"))  # base's data not a mapping
@example(("s.yaml", b"study: !!int x\n"))  # a value its tag does not fit: a ValueError
@example(("s.yaml", Q + b"params: {model.filters: {categorical: ['']}}\n"))  # '' read as JSON
@example(("s.yaml", Q + b"preset: [report]\n"))  # an unhashable preset name
@example(("s.yaml", GRID + b"params: {model.filters: {int: [1, 9], step: 0.5}}\n"))  # range(0)
@example(("s.yaml", Q + b"params: {model.dropout.rate: {float: [-1.0e308, 1.0e308], step: 1}}\n"))
@example(("s.yaml", GRID + b"params: {model.filters: {int: [1, 1099511627776]}}\n"))  # 2**40
@example(("s.yaml", b"study: {name: q, n_trials: 2, enqueue: [{model.filters: .nan}]}\n"
          b"params: {model.filters: {int: [1, 9]}}\n"))  # int(nan)
@given(mutated_file(SPACES))
def test_a_mutated_search_space_is_accepted_or_one_line(folder, case):
    # Rule: load_space (and the budget and description --dry-run prints) of any mutation of a
    # shipped space either succeeds or raises one ConfigError line that names the file.
    path = _written(folder, case)
    accepted_or_one_line(lambda: _use_space(path), str(path))


ints = st.one_of(st.sampled_from(EDGE_INTS), st.integers(-5, 300))
numbers = st.one_of(ints, st.sampled_from(EDGE_FLOATS), st.floats(0, 1), st.floats())
options = {"step": numbers, "log": st.one_of(st.booleans(), numbers)}
distributions = st.one_of(
    st.fixed_dictionaries({"float": st.lists(numbers, min_size=2, max_size=2)}, optional=options),
    st.fixed_dictionaries({"int": st.lists(ints, min_size=2, max_size=2)}, optional=options),
    st.fixed_dictionaries({"categorical": st.lists(numbers | junk, min_size=1, max_size=4)}),
    st.fixed_dictionaries({}, optional={"float": junk, "int": junk, "categorical": junk,
                                        **options}),
)
PARAMS = ["model.dropout.rate", "model.kernel_size", "model.filters", "model.dense",
          "train.optimizer.learning_rate", "train.batch_size", "train.epochs", "train.seed",
          "model.pool.size", "model.pool.type"]


@given(
    params=st.dictionaries(st.sampled_from(PARAMS), distributions, min_size=1, max_size=3),
    sampler=st.sampled_from(["grid", "tpe", "random"]),
    repeats=st.one_of(st.just(1), numbers),
    enqueue=st.lists(st.dictionaries(st.sampled_from(PARAMS), numbers | junk, max_size=2),
                     max_size=2),
    engine=st.sampled_from(["optuna", "keras_tuner"]),
)
def test_any_distribution_is_accepted_or_one_line(params, sampler, repeats, enqueue, engine):
    # Rule: ranges, steps and choices of any value (huge, tiny, non-finite, of the wrong kind),
    # with a grid or another sampler, enqueued points and either engine, are a space whose
    # budget, description and corners (on a 64 x 64 x 2 image) can be had, or one ConfigError
    # line naming the file; a grid is never made bigger than GRID_MAX points.
    study = {"name": "fuzz", "n_trials": 5, "sampler": {"type": sampler}, "repeats": repeats,
             "engine": engine}
    if enqueue:
        study["enqueue"] = enqueue

    def use() -> None:
        space = parse_space({"study": study, "params": params}, source="fuzz.yaml")
        space.budget()
        space.describe()
        check_space(space, (1000, (64, 64, 2)))

    accepted_or_one_line(use, "fuzz.yaml")


@example(("r.yaml", b"preset: []\nmodel.dropout.rate: 0.1\n"))  # unhashable preset name
@example(("r.yaml", b"preset: \"report\\0\"\n"))  # a NUL byte in a path
@example(("r.yaml", b"model: {filters: {filters: 12}}\n"))  # a path below a value
@example(("r.yaml", b"model: 5\nmodel.dropout.rate: 0.1\n"))  # below a section given a value
@given(mutated_file(RUN_CONFIGS))
def test_a_mutated_run_config_is_accepted_or_one_line(folder, case):
    # Rule: a run config file (`hpo train run.yaml`: nested or dotted overrides, a preset) mutated
    # any way is a RunConfig or one ConfigError line naming the file.
    path = _written(folder, case)
    accepted_or_one_line(lambda: load_run_config(path), str(path))


@given(st.dictionaries(st.one_of(st.sampled_from(
    ["model.dropout.rate", "train.seed", "train", "model", "data.path", "train.optimizer",
     "model.dense.units", "train.epochs", "data", "model.conv", ""]), st.text(max_size=12)),
    junk, max_size=4))
@example({"\n": None})  # a key that breaks the line of its message
@example({"model": {}, "model.dropout.rate": None})  # an empty section, then a key inside it (KeyError)
def test_overrides_of_any_shape_are_applied_or_one_line(overrides):
    # Rule: apply_overrides of any mapping (a section given a value and a path below it, a value
    # where a section was, junk values) is a RunConfig or one ConfigError line naming `where`.
    result = accepted_or_one_line(lambda: apply_overrides(overrides, where="fuzz.yaml"),
                                  "fuzz.yaml")
    assert isinstance(result, (RunConfig, Exception))


@given(st.binary(max_size=300) | mutated_text("a: 1\nb: [1, 2]\n"))
def test_read_yaml_of_any_bytes_is_a_mapping_or_one_line(folder, data):
    # Rule: read_yaml of any bytes is a mapping or one ConfigError line naming the file.
    path = folder / "any.yaml"
    path.write_bytes(data)
    result = accepted_or_one_line(lambda: read_yaml(path), str(path))
    assert isinstance(result, (dict, Exception))


@given(mutated_file({k: SPACES[k] for k in ("quickstart.yaml", "combined.yaml")}))
def test_dry_run_of_a_mutated_space_exits_0_or_1_with_one_line(folder, case):
    # Rule: through the command line, `hpo launch X --dry-run` of a mutated space exits 0, or 1
    # with one line (an HpoError, which main() prints), never a traceback. The data file is
    # absent, so every space that passes its own checks stops at the data file's line.
    path = _written(folder, case)
    result = CliRunner().invoke(app, ["launch", str(path), "--dry-run"])
    cli_accepted_or_one_line(result, str(path), "data")
