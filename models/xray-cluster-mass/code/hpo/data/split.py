"""The deterministic train/validation/test split; the test part is never seen by a study."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hpo.errors import ConfigError


@dataclass(frozen=True)
class Split:
    """Indices into a data set, disjoint, each sorted."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def split_indices(n: int, *, val_fraction: float, test_fraction: float, seed: int) -> Split:
    """Shuffles range(n) with `seed` and cuts it into train, validation and test.

    The same (n, fractions, seed) always gives the same split, so a study, its workers and
    `hpo promote` agree on which clusters are held out.
    """
    if not 0 < val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ConfigError(
            f"split fractions must be in (0, 1) and sum below 1, got {val_fraction=}, "
            f"{test_fraction=}"
        )
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_fraction))
    n_val = max(1, int(round(n * val_fraction)))
    if n - n_test - n_val < 2:
        raise ConfigError(f"{n} clusters are too few to split into train, validation and test")
    test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    return Split(np.sort(train), np.sort(val), np.sort(test))
