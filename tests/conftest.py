"""Shared fixtures: tiny contract files with a learnable signal, temporary stores."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")


def make_signal_data(n: int, *, size: int = 16, channels: int = 2, seed: int = 0,
                     exposure: tuple[float, float] | None = None) -> dict:
    """Images whose total counts grow with mass: a signal a small CNN must learn.

    With `exposure` (low, high) s, each cluster gets an exposure drawn log-uniformly in it
    (key exposure_s) and counts in proportion to it (x t / 1000 s).
    """
    rng = np.random.default_rng(seed)
    log_mass = rng.uniform(13.0, 15.0, n).astype(np.float32)
    redshift = rng.uniform(0.05, 1.0, n).astype(np.float32)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    profile = np.exp(-(xx**2 + yy**2) / (2 * (size / 6) ** 2))
    profile /= profile.sum()
    total = 10 ** (1.2 * (log_mass - 13.0) + 1.0) / (1 + redshift) ** 2
    extra = {}
    if exposure is not None:
        t = np.exp(rng.uniform(np.log(exposure[0]), np.log(exposure[1]), n)).astype(np.float32)
        total = total * t / 1000.0
        extra["exposure_s"] = t
    lam = total[:, None, None, None] * profile[None, :, :, None] * np.ones(channels) / channels
    images = rng.poisson(lam).astype(np.int32)
    return {"images": images, "redshift": redshift, "log_mass": log_mass, **extra}


def write_h5(path: Path, arrays: dict) -> Path:
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)
    return path


@pytest.fixture(scope="session")
def signal_h5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 clusters of 16 x 16 x 2 with counts ~ mass."""
    path = tmp_path_factory.mktemp("data") / "signal.h5"
    return write_h5(path, make_signal_data(300))
