"""Corners of a search space: which points are checked, and the conv-stack arithmetic they use."""

from __future__ import annotations

import numpy as np
import pytest

from hpo.config.space import load_space
from hpo.config.space import parse_space
from hpo.config.tree import ModelConfig
from hpo.trial.corners import check_space
from hpo.trial.corners import corner_points
from hpo.trial.corners import stack_sizes
from tests.config.test_space import SPACES


@pytest.mark.parametrize("path", SPACES, ids=[p.stem for p in SPACES])
def test_every_shipped_space_passes_its_corners_on_the_shipped_data_shape(path, tmp_path,
                                                                          monkeypatch):
    # Rule: `hpo launch` refuses none of search_spaces/ on the mock data (10 000 clusters of
    # 50 x 50 x 10; a calibration file that a space names: 4 000 clusters, as its comment says).
    import h5py

    space = load_space(path)
    calibration = space.resolved_base().data.calibration_path
    if calibration is not None:  # read from its header: one without data will do
        monkeypatch.chdir(tmp_path)
        calibration.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(calibration, "w") as f:
            f.create_dataset("images", shape=(4000, 50, 50, 10), dtype="f4")
    corners = check_space(space, (10_000, (50, 50, 10)))
    assert corners and all(c.pixels >= 1 for c in corners)


def test_corners_are_ends_pairs_and_whole_groups():
    # Rule: a range contributes its ends (the top of its grid with a step), a categorical every
    # choice; every pair of params is combined, and a group of keys that constrain each other
    # (here dense layers, dropout placement and index) in every combination.
    space = parse_space({"study": {"name": "c", "n_trials": 1}, "params": {
        "model.kernel_size": {"int": [1, 8], "step": 2},
        "model.dense": {"categorical": [[16], [16, 8]]},
        "model.dropout.placement": {"categorical": ["every_dense", "one_dense"]},
        "model.dropout.index": {"int": [0, 1]}}}, source="c.yaml")
    points = corner_points(space)
    assert {"model.kernel_size": 7} in points and {"model.kernel_size": 8} not in points
    assert {"model.kernel_size": 7, "model.dropout.index": 0} in points
    assert {"model.dense": [16], "model.dropout.placement": "one_dense",
            "model.dropout.index": 1} in points
    assert not any("model.kernel_size" in p and len(p) == 3 for p in points)


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize(("kernel", "pool"), [(1, ("max", 4)), (3, ("avg", 3)), (5, ("none", 2)),
                                               (4, ("max", 1))])
def test_stack_arithmetic_matches_the_built_network(padding, kernel, pool):
    # Rule: the pixels the corner check computes are those of the network Keras builds.
    from hpo.model.builder import InputStats
    from hpo.model.builder import build_model

    cfg = ModelConfig(conv_blocks=[[2, 2], [2]], kernel_size=kernel, padding=padding,
                      pool={"type": pool[0], "size": pool[1]}, dense=[4])
    stats = InputStats(np.zeros(2), np.ones(2), 14.0, 0.3, 0.3, 0.2)
    model = build_model(cfg, image_shape=(23, 19, 2), stats=stats)
    built = model.get_layer("flatten").input.shape[1:3]
    assert (stack_sizes(cfg, 23)[-1][1], stack_sizes(cfg, 19)[-1][1]) == tuple(built)


def test_a_corner_that_calibrates_on_too_few_clusters_is_refused(tmp_path):
    # Rule: a point with train.calibrate_bias whose calibration clusters (the validation split,
    # or data.calibration_path's file, read from its header) are too few for its bins is refused
    # at launch, naming the params; enough clusters pass.
    from hpo.errors import ConfigError
    from tests.conftest import make_signal_data
    from tests.conftest import write_h5

    spec = {"study": {"name": "c", "n_trials": 1}, "base": {"model": {"use_exposure": True}},
            "params": {"train.calibrate_bias": {"categorical": [False, True]}}}
    with pytest.raises(ConfigError, match=r"c.yaml: params train.calibrate_bias=True: .*5 bin\(s\) needs "
                                          r"2000 calibration clusters and the validation split holds 1000"):
        check_space(parse_space(spec, source="c.yaml"), (10_000, (50, 50, 10)))
    assert check_space(parse_space(spec, source="c.yaml"), (20_000, (50, 50, 10)))
    small = write_h5(tmp_path / "cal.h5", make_signal_data(500, exposure=(150.0, 2500.0)))
    spec["base"]["data"] = {"calibration_path": str(small)}
    with pytest.raises(ConfigError, match=r"cal.h5 holds 500"):
        check_space(parse_space(spec, source="c.yaml"), (20_000, (50, 50, 10)))
    spec["base"]["train"] = {"calibrate_bias_bins": 1}
    assert check_space(parse_space(spec, source="c.yaml"), (20_000, (50, 50, 10)))
