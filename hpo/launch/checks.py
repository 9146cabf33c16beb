"""What a launch checks before it touches a study, a tracking store or a worker.

    hpo launch search_spaces/dropout.yaml --dry-run     # these checks, then the network built

`check_launch` is the one place they run: `launch` calls it first, and `hpo launch --dry-run`
calls it through `dry_run`. It loads only the space and its data file's header, so a bad space
or a missing file is answered before optuna, MLflow or TensorFlow load.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from hpo.config.space import load_space
from hpo.config.space import SearchSpace
from hpo.data.lazy import data_header
from hpo.data.lazy import open_dataset
from hpo.data.recipe import require_calibration_file
from hpo.data.recipe import require_data_file
from hpo.errors import DataContractError
from hpo.outputs import check_writable_folder
from hpo.trial.corners import build_networks
from hpo.trial.corners import check_space
from hpo.trial.corners import Corner


@dataclass(frozen=True)
class CheckedSpace:
    """A search space that passed check_launch, with what the checks read."""

    space: SearchSpace
    clusters: int  # in its data file
    image_shape: tuple[int, int, int]  # (H, W, C) of one image
    corners: list[Corner]


def check_launch(spec: str | Path) -> CheckedSpace:
    """Loads the space of `spec` and refuses it when no trial of it could run.

    In this order: the space itself, its budget, its data file (a missing one names the `hpo
    simulate` line that makes it), data.calibration_path, the data file's image header, every
    corner of the space on that shape (a kernel wider than what is left of the images, dropout
    after a dense layer that is not there), then study.checkpoint_dir, which must be writable.

    Raises:
        ConfigError: a malformed space, no budget, or a corner no trial could train on.
        OutputError: study.checkpoint_dir cannot be written.
        DataContractError: the data or calibration file is missing or broken.
    """
    space = load_space(spec)
    space.budget()  # a space without a budget says so before its data is looked for
    data = space.resolved_base().data
    require_data_file(data.path, spec)
    require_calibration_file(data.calibration_path)
    header = data_header(data.path)
    if header is None:  # the full contract check says what is wrong with it
        open_dataset(data.path, max_in_memory_gb=data.max_in_memory_gb)
        raise DataContractError(f"{data.path}: no 'images' array of shape (N, H, W, C)")
    corners = check_space(space, header)
    if space.study.engine == "optuna" and space.study.checkpoint != "off":
        # Every worker writes there; one that cannot is refused at its start too (worker.py).
        check_writable_folder(space.study.checkpoint_dir, option="study.checkpoint_dir")
    n, shape = header
    return CheckedSpace(space, n, shape, corners)


def dry_run(spec: str | Path) -> list[str]:
    """`hpo launch --dry-run`: check_launch, then the network built (shapes only, no training)
    at the extremes of the space; returns the space with its budget and what was checked.

    Starts nothing: no database, no MLflow, no training.

    Raises:
        HpoError: what check_launch raises, or a network Keras refuses to build.
    """
    checked = check_launch(spec)
    space = checked.space
    # Shapes only: Keras's numpy backend builds the same layers without loading TensorFlow or
    # taking memory on a GPU that workers use.
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "numpy"
        os.environ["JAX_PLATFORMS"] = "cpu"
    built = build_networks(space, checked.corners, checked.image_shape)
    path = space.resolved_base().data.path
    shape = " x ".join(map(str, checked.image_shape))
    return [
        space.describe(),
        f"checked: {len(checked.corners)} corners of the space on {path} ({checked.clusters} "
        f"clusters of {shape}); the network built at {built} of them",
    ]
