"""The corners of a search space: points no trial could train on are refused before a study exists.

    hpo launch search_spaces/combined.yaml --dry-run

A config's validators see one point at a time, and a trial meets one point at a time; a launch
sees the space. Corners are the points at the ends of each range (every choice of a categorical):
each param alone, every pair of params, all at their low and all at their high ends, and every
combination within a group of keys that constrain each other (the conv stack's shape, dense
layers and where dropout goes). Each corner must be a valid config whose conv stack leaves pixels
of the data's images and whose data split leaves clusters to train on; `build_networks` (the dry
run) also builds the Keras network at the extremes, shape only, no training.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpo.config.space import decode_choice
from hpo.config.space import Distribution
from hpo.config.space import SearchSpace
from hpo.config.tree import DataConfig
from hpo.config.tree import ModelConfig
from hpo.config.tree import RunConfig
from hpo.errors import ConfigError
from hpo.errors import first_line

# Keys that constrain each other beyond pairs: every combination of their params' ends is checked.
GROUPS = (
    ("model.conv_blocks", "model.kernel_size", "model.padding", "model.pool"),
    ("model.dense", "model.dropout"),
)
MAX_GROUP_POINTS = 4096  # a group larger than this is checked pairwise only


@dataclass(frozen=True)
class Corner:
    """One corner: the params it sets (the others at base) and the config they give."""

    point: dict[str, Any]
    cfg: RunConfig
    pixels: int  # height x width left after the conv stack

    def names(self) -> str:
        """'params model.kernel_size=9 with model.padding=valid', or 'the base config'."""
        return f"params {_names(self.point)}" if self.point else "the base config"


def ends(dist: Distribution) -> list[Any]:
    """The values a corner takes for one param: every choice, or the low and high end of a range
    (the top of its grid when it has a step)."""
    if dist.categorical is not None:
        return [decode_choice(v) for v in dist.grid() or []]
    lo, hi = dist.int_ or dist.float_  # type: ignore[misc]
    if dist.step is not None and dist.int_ is not None:  # whole numbers: no float to overflow
        hi = lo + (hi - lo) // int(dist.step) * int(dist.step)
    elif dist.step is not None:
        hi = round(lo + math.floor((hi - lo) / dist.step + 1e-9) * dist.step, 12)
    return [lo] if lo == hi else [lo, hi]


def corner_points(space: SearchSpace) -> list[dict[str, Any]]:
    """The corners of `space` as {param path: value}, each once (the base config first)."""
    values = {path: ends(dist) for path, dist in space.params.items()}
    points: list[dict[str, Any]] = [{}]
    if values:
        points.append({p: v[0] for p, v in values.items()})
        points.append({p: v[-1] for p, v in values.items()})
    points += [{p: v} for p, vs in values.items() for v in vs]
    for p, q in itertools.combinations(values, 2):
        points += [{p: a, q: b} for a in values[p] for b in values[q]]
    for group in GROUPS:
        members = [p for p in values if any(_overlaps(p, key) for key in group)]
        size = math.prod(len(values[p]) for p in members)
        if len(members) > 2 and size <= MAX_GROUP_POINTS:
            points += [dict(zip(members, combo, strict=True))
                       for combo in itertools.product(*(values[p] for p in members))]
    seen: set[str] = set()
    unique = []
    for point in points:
        key = json.dumps(point, sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            unique.append(point)
    return unique


def check_space(space: SearchSpace, data: tuple[int, tuple[int, int, int]] | None) -> list[Corner]:
    """Refuses a space that has a point no trial could train on; returns its corners.

    Args:
        space: the validated search space.
        data: (clusters, (H, W, C) of one image) of its data file, or None to check the configs
            alone.

    Raises:
        ConfigError: one line naming the file, the params and the values that break, and why.
    """
    base = space.resolved_base()
    if data is not None:
        _check_split(space, base, data[0])
    corners = []
    calibration_files: dict[Path, int | None] = {}  # clusters per file, each header read once
    for point in corner_points(space):
        where = f"{space.source}: params {_names(point)}" if point else f"{space.source}: base"
        cfg = space.config_for(point, where, base=base)
        pixels = 1
        if data is not None:
            pixels = _check_pixels(space.source, point, cfg.model, data[1])
            _check_calibration(where, cfg, data[0], calibration_files)
        corners.append(Corner(point, cfg, pixels))
    return corners


def build_networks(
    space: SearchSpace, corners: list[Corner], image_shape: tuple[int, int, int]
) -> int:
    """Builds the Keras network (shape only, no training) at the extremes of the space: all params
    low, all high, and the corner that leaves the fewest pixels. Returns how many were built.

    Raises:
        ConfigError: Keras refuses one, naming the params of that corner.
    """
    import keras
    import numpy as np

    from hpo.model.builder import InputStats
    from hpo.model.builder import build_model

    extremes = corners[1:3] if len(corners) > 2 else corners[:1]
    extremes += [min(corners, key=lambda c: c.pixels)]
    channels = image_shape[-1]
    stats = InputStats(np.zeros(channels), np.ones(channels), 14.0, 0.3, 0.3, 0.2)
    built: set[str] = set()
    # The numpy backend computes on placeholder inputs (log1p, sqrt of garbage): not our concern.
    with np.errstate(all="ignore"):
        try:
            for corner in extremes:
                cfg, loss = corner.cfg, corner.cfg.train.loss
                sigma = loss.sigma_param if loss.type == "gaussian_nll" else None
                key = json.dumps([cfg.model.model_dump(mode="json"), sigma,
                                  cfg.train.augment.model_dump(mode="json")], sort_keys=True)
                if key in built:
                    continue
                try:
                    build_model(cfg.model, image_shape=image_shape, stats=stats,
                                sigma_head=sigma, augment=cfg.train.augment, seed=0)
                except Exception as exc:  # Keras says why in its own exception types
                    raise ConfigError(
                        f"{space.source}: the network cannot be built with {corner.names()} on "
                        f"{_image(image_shape)} images: {first_line(exc)}"
                    ) from None
                built.add(key)
        finally:
            keras.backend.clear_session()
    return len(built)


def stack_sizes(model: ModelConfig, size: int) -> list[tuple[str, int]]:
    """The image side after each conv layer and pooling of `model`'s conv stack, as the builder
    lays it out (Keras: a valid conv leaves n - k + 1, a same-padded pooling ceil(n / p))."""
    out = []
    for block in model.conv_blocks:
        for _ in block:
            if model.padding == "valid":
                size = size - model.kernel_size + 1
            out.append(("conv", size))
            if size < 1:
                return out
        if model.pool.type != "none" and model.pool.size > 1:
            size = -(-size // model.pool.size)
            out.append(("pool", size))
    return out


def _check_pixels(source: str, point: dict[str, Any], model: ModelConfig,
                  image_shape: tuple[int, int, int]) -> int:
    h, w, _ = image_shape
    rows, cols = stack_sizes(model, h), stack_sizes(model, w)
    left = min(rows[-1][1], cols[-1][1]) if rows else min(h, w)
    if left >= 1:
        return rows[-1][1] * cols[-1][1] if rows else h * w
    trace = rows if rows[-1][1] < 1 else cols
    start = h if trace is rows else w
    steps = " -> ".join([str(start), *(f"{kind} {max(n, 0)}" for kind, n in trace)])
    layers = sum(len(b) for b in model.conv_blocks)
    shape_keys = {"model.kernel_size": model.kernel_size, "model.padding": model.padding,
                  "model.pool.size": model.pool.size}
    named = [f"{k}={_show(v)}" for k, v in point.items()]
    named += [f"{k}={_show(v)}" for k, v in shape_keys.items() if k not in point]
    cause = named[0] + (f" with {', '.join(named[1:])}" if len(named) > 1 else "")
    raise ConfigError(
        f"{source}: {cause} and {layers} conv layers leaves no pixels of the "
        f"{_image(image_shape)} images ({steps}); lower model.kernel_size, use model.padding "
        "same, or fewer conv layers"
    )


def _check_split(space: SearchSpace, base: RunConfig, n_file: int) -> None:
    from hpo.data.split import split_indices

    d = base.data
    n = _in_use(d, n_file)
    try:
        split_indices(n, val_fraction=d.val_fraction, test_fraction=d.test_fraction, seed=0)
    except ConfigError as exc:
        raise ConfigError(
            f"{space.source}: data.val_fraction={d.val_fraction}, data.test_fraction="
            f"{d.test_fraction} of {n} clusters ({d.path}): {exc}"
        ) from None


def _check_calibration(where: str, cfg: RunConfig, n_file: int, files: dict[Path, int | None]) -> None:
    """A corner with train.calibrate_bias needs enough calibration clusters for its bins (`files`:
    the clusters of each calibration file read so far)."""
    from hpo.data.lazy import data_header
    from hpo.data.split import split_indices
    from hpo.training.calibrate import too_few

    if not cfg.train.calibrate_bias:
        return
    d = cfg.data
    if d.calibration_path is None:
        n_cal = len(split_indices(_in_use(d, n_file), val_fraction=d.val_fraction,
                                  test_fraction=d.test_fraction, seed=0).val)
        holder = "the validation split holds"
    else:
        if d.calibration_path not in files:
            header = data_header(d.calibration_path)
            files[d.calibration_path] = None if header is None else header[0]
        n_cal, holder = files[d.calibration_path], f"{d.calibration_path} holds"
        if n_cal is None:  # training reads it whole and says what is wrong with it
            return
    why = too_few(cfg, n_cal, holder)
    if why:
        raise ConfigError(f"{where}: {why}")


def _in_use(d: DataConfig, n_file: int) -> int:
    """The clusters of a file a run uses (data.max_clusters keeps the first N)."""
    return n_file if d.max_clusters is None else min(d.max_clusters, n_file)


def _overlaps(path: str, key: str) -> bool:
    return path == key or path.startswith(key + ".") or key.startswith(path + ".")


def _names(point: dict[str, Any]) -> str:
    """'a=1', 'a=1 with b=2', 'a=1, b=2 and c=3'."""
    shown = [f"{k}={_show(v)}" for k, v in point.items()]
    if len(shown) <= 2:
        return " with ".join(shown)
    return f"{', '.join(shown[:-1])} and {shown[-1]}"


def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _image(shape: tuple[int, int, int]) -> str:
    return " x ".join(str(d) for d in shape)
