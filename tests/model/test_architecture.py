"""The model family beyond the report's plain stack: model.block, model.head and model.width."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from hpo.config import apply_overrides
from hpo.config.tree import AugmentConfig
from hpo.errors import ConfigError
from hpo.inference.layers import load_network
from hpo.model import build_model
from hpo.model import InputStats

SHAPE = (16, 16, 2)
STATS = InputStats(np.zeros(2), np.ones(2), 14.0, 0.5, 0.5, 0.25)

# Computed with the builder as it was before model.block, model.head and model.width existed
# (commit 16e9f02): names, classes and parameter count of the networks it built.
_CONV = ("conv0_0 conv0_0_act conv0_1 conv0_1_act conv0_2 conv0_2_act pool0 "
         "conv1_0 conv1_0_act conv1_1 conv1_1_act pool1")
_DENSE = ("redshift flatten z_scale join_redshift dense0 dense0_act dropout0 dense1 dense1_act "
          "dropout1 dense2 dense2_act dropout2 dense3 dense3_act dropout3")
BEFORE = {
    "default": ({}, {}, 190469, f"images counts_transform standardize {_CONV} {_DENSE} mu"),
    "bn_valid_avg": (
        {"model.batch_norm": True, "model.padding": "valid", "model.pool.type": "avg"}, {}, 190869,
        "images counts_transform standardize conv0_0 bn0_0 conv0_0_act conv0_1 bn0_1 conv0_1_act "
        "conv0_2 bn0_2 conv0_2_act pool0 conv1_0 bn1_0 conv1_0_act conv1_1 bn1_1 conv1_1_act pool1 "
        f"{_DENSE} mu"),
    "sigma_calibrated_augmented": (
        {"model.filters": 7},
        {"sigma_head": "softplus", "augment": AugmentConfig(), "calibrate_sigma": True,
         "calibrate_bias_bins": 3}, 178096,
        f"images dihedral counts_transform standardize {_CONV} {_DENSE} sigma_raw mu sigma log_mass "
        "log_mass_shift sigma_scale"),
}
BEFORE_CLASSES = {"conv": "Conv2D", "bn": "BatchNormalization", "pool": "MaxPooling2D",
                  "dense": "Dense", "dropout": "Dropout", "flatten": "Flatten"}


def _build(overrides: dict, shape: tuple[int, int, int] = SHAPE, **kw) -> keras.Model:
    return build_model(apply_overrides(overrides).model, image_shape=shape, stats=STATS, **kw)


def _x(n: int, shape: tuple[int, int, int] = SHAPE, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"images": rng.poisson(2.0, (n, *shape)).astype("f4"),
            "redshift": rng.uniform(0.1, 0.8, (n, 1)).astype("f4")}


def _sources(model: keras.Model, name: str) -> list[str]:
    """Names of the layers whose outputs feed layer `name`."""
    inputs = model.get_layer(name).input
    inputs = inputs if isinstance(inputs, list) else [inputs]
    return [t._keras_history.operation.name for t in inputs]


@pytest.mark.parametrize("case", list(BEFORE))
def test_defaults_build_the_networks_built_before_the_new_keys(case):
    # Rule: model.block plain, head flatten and width 1 (the defaults) build exactly the layers,
    # names and weights of the builder before they existed, so saved and shipped models stand.
    overrides, kw, params, names = BEFORE[case]
    model = _build(overrides, **kw)
    assert [layer.name for layer in model.layers] == names.split()
    assert model.count_params() == params
    for layer in model.layers:
        prefix = layer.name.rstrip("0123456789_").split("_")[0]
        if prefix in BEFORE_CLASSES and not layer.name.endswith("_act"):
            expected = BEFORE_CLASSES[prefix]
            if case == "bn_valid_avg" and prefix == "pool":
                expected = "AveragePooling2D"
            assert type(layer).__name__ == expected, layer.name


def test_residual_blocks_add_a_shortcut_and_project_where_filters_change():
    # Rule: each residual block adds its input to its last conv layer's output, before that
    # layer's activation and the block's pooling; a 1x1 conv projects the input where the
    # channel count changes (images 2 -> 20 filters), the identity otherwise (20 -> 20).
    model = _build({"model.block": "residual"})
    adds = [layer.name for layer in model.layers if isinstance(layer, keras.layers.Add)]
    assert adds == ["add0", "add1"]
    assert sorted(_sources(model, "add0")) == ["conv0_2", "shortcut0"]
    assert sorted(_sources(model, "add1")) == ["conv1_1", "pool0"]
    assert _sources(model, "conv0_2_act") == ["add0"] and _sources(model, "pool0") == ["conv0_2_act"]
    proj = model.get_layer("shortcut0")
    assert proj.kernel_size == (1, 1) and proj.filters == 20
    assert "shortcut1" not in [layer.name for layer in model.layers]
    # Filters change between blocks: the second block projects too, and BN follows the 1x1 conv.
    model = _build({"model.block": "residual", "model.conv_blocks": [[4, 4], [8]],
                    "model.batch_norm": True})
    assert model.get_layer("shortcut1").filters == 8
    assert _sources(model, "shortcut1_bn") == ["shortcut1"]
    assert sorted(_sources(model, "add1")) == ["bn1_0", "shortcut1_bn"]


def test_the_shortcut_carries_the_input_when_the_branch_is_silenced():
    # Rule: the shortcut is really there: with every conv of the second block zeroed, the plain
    # block outputs act(0) = 0 whatever the image, the residual one its input.
    outs = {}
    for block in ("plain", "residual"):
        model = _build({"model.block": block, "model.conv_blocks": [[4], [4]]})
        conv = model.get_layer("conv1_0")
        conv.set_weights([np.zeros_like(w) for w in conv.get_weights()])
        probe = keras.Model(model.input, model.get_layer("conv1_0_act").output)
        outs[block] = np.asarray(probe(_x(3)))
    assert np.allclose(outs["plain"], 0.0)
    assert np.abs(outs["residual"]).max() > 1e-3


@pytest.mark.parametrize("batch_norm", [False, True])
def test_a_residual_block_starts_as_its_shortcut(batch_norm):
    # Rule: the branch's last conv kernel (its BN's gamma with batch_norm) starts at zero, so at
    # initialisation each block outputs act(shortcut) and the sums do not grow block by block;
    # the branch's other layers start as the plain stack's.
    model = _build({"model.block": "residual", "model.batch_norm": batch_norm})
    for b, last in ((0, 2), (1, 1)):
        zeroed = model.get_layer(f"bn{b}_{last}").gamma if batch_norm else model.get_layer(
            f"conv{b}_{last}").kernel
        assert not np.any(np.asarray(zeroed))
        assert np.any(np.asarray(model.get_layer(f"conv{b}_0").kernel))
    probe = keras.Model(model.input, [model.get_layer("add1").output, model.get_layer("pool0").output])
    added, shortcut = (np.asarray(t) for t in probe(_x(2)))
    np.testing.assert_allclose(added, shortcut, atol=1e-6)


@pytest.mark.parametrize("batch_norm", [False, True])
@pytest.mark.parametrize("kernel", [2, 3])
def test_residual_with_valid_padding_crops_the_shortcut_to_the_branch(batch_norm, kernel):
    # Rule: with padding valid a block's convs take (kernel - 1) pixels each; the shortcut is
    # centre-cropped by as many, so both sides of the Add have the same shape.
    model = _build({"model.block": "residual", "model.padding": "valid", "model.kernel_size": kernel,
                    "model.conv_blocks": [[4, 4], [4]], "model.batch_norm": batch_norm})
    crop = model.get_layer("shortcut0_crop")
    lost = 2 * (kernel - 1)
    assert crop.cropping == ((lost // 2, lost - lost // 2),) * 2
    assert model.get_layer("add0").output.shape[1:3] == (16 - lost, 16 - lost)
    assert model.predict(_x(2), verbose=0).shape == (2, 1)


def test_a_residual_network_trains_and_survives_saving(tmp_path):
    # Rule: a residual network with a global head trains (the loss falls over a few steps) and
    # its .keras file loads with hpo's custom objects alone and predicts the same.
    model = _build({"model.block": "residual", "model.head": "global_avg", "model.batch_norm": True,
                    "model.width": 0.5}, augment=AugmentConfig(), seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    x = _x(32)
    counts = x["images"].sum(axis=(1, 2, 3))
    y = (14.0 + 0.1 * counts / counts.mean()).astype("f4")
    history = model.fit(x, y, epochs=4, batch_size=8, verbose=0, shuffle=False)
    assert history.history["loss"][-1] < history.history["loss"][0]
    before = model.predict(x, verbose=0)
    model.save(tmp_path / "m.keras")
    again = load_network(tmp_path / "m.keras")
    np.testing.assert_allclose(again.predict(x, verbose=0), before, rtol=1e-5, atol=1e-6)
    assert {"add0", "add1", "shortcut0", "global_pool"} <= {layer.name for layer in again.layers}


@pytest.mark.parametrize(("head", "cls"), [("global_avg", keras.layers.GlobalAveragePooling2D),
                                           ("global_max", keras.layers.GlobalMaxPooling2D)])
def test_global_heads_make_the_dense_input_independent_of_image_size(head, cls):
    # Rule: a global head gives the dense part one number per filter of the last block (plus the
    # redshift), whatever the image size; flatten grows with the pixels.
    widths = {}
    for side in (16, 32):
        for h in ("flatten", head):
            model = _build({"model.head": h}, shape=(side, side, 2))
            widths[h, side] = model.get_layer("dense0").kernel.shape[0]
            if h == head:
                assert isinstance(model.get_layer("global_pool"), cls)
                assert "flatten" not in [layer.name for layer in model.layers]
    assert widths[head, 16] == widths[head, 32] == 20 + 1
    assert widths["flatten", 32] > widths["flatten", 16]


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"model.width": 0.5}, [[10, 10, 10], [10, 10]]),
    ({"model.width": 2.0, "model.conv_blocks": [[3, 5], [8]]}, [[6, 10], [16]]),
    ({"model.width": 1.5, "model.filters": 7}, [[11, 11, 11], [11, 11]]),  # 10.5 rounds up
    ({"model.width": 0.01}, [[1, 1, 1], [1, 1]]),  # at least one filter
])
def test_width_scales_every_conv_layers_filters(overrides, expected):
    # Rule: model.width multiplies each conv layer's filters (conv_blocks, or model.filters when
    # set), rounded half up, at least 1; the residual projections follow the scaled filters.
    cfg = apply_overrides(overrides).model
    assert cfg.layout() == expected
    model = _build({**overrides, "model.block": "residual"})
    convs = [layer for layer in model.layers
             if layer.name.startswith("conv") and not layer.name.endswith("_act")]
    assert [c.filters for c in convs] == [f for block in expected for f in block]
    assert model.get_layer("shortcut0").filters == expected[0][-1]


@pytest.mark.parametrize(("overrides", "key"), [
    ({"model.block": "dense"}, "model.block"),
    ({"model.head": "avg"}, "model.head"),
    ({"model.width": 0}, "model.width"),
    ({"model.width": 100}, "model.width"),
])
def test_bad_values_are_refused_in_one_line_naming_the_key(overrides, key):
    # Rule: a value outside a new key's range or choices is a one-line config error naming it.
    with pytest.raises(ConfigError) as err:
        apply_overrides(overrides)
    assert f"'{key}'" in str(err.value) and "\n" not in str(err.value)


def test_a_residual_valid_stack_that_leaves_no_pixels_is_refused_at_launch():
    # Rule: the launch's corner check covers residual blocks too: their shortcut takes no pixels
    # of its own, so the plain stack's arithmetic says when a valid stack leaves none (one line,
    # naming the params), and the residual network it passes builds.
    from hpo.config.space import parse_space
    from hpo.trial.corners import build_networks
    from hpo.trial.corners import check_space

    def space(kernels: list[int]) -> object:
        return parse_space({"study": {"name": "r", "n_trials": 1},
                            "base": {"model": {"padding": "valid", "block": "residual"}},
                            "params": {"model.kernel_size": {"categorical": kernels},
                                       "model.head": {"categorical": ["flatten", "global_max"]}}},
                           source="r.yaml")

    ok = space([2, 3])
    corners = check_space(ok, (100, (50, 50, 10)))
    assert build_networks(ok, corners, (50, 50, 10)) >= 1
    with pytest.raises(ConfigError) as err:
        check_space(space([2, 9]), (100, (50, 50, 10)))
    assert "model.kernel_size=9" in str(err.value) and "\n" not in str(err.value)
