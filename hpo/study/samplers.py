"""Optuna samplers by the names a search space uses: grid, random, qmc, tpe, cmaes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna

from hpo.config.space import SearchSpace
from hpo.errors import ConfigError


def _grid(space: SearchSpace, seed: int | None, options: dict[str, Any]) -> optuna.samplers.BaseSampler:
    return optuna.samplers.GridSampler(space.grid(), seed=seed, **options)


def _random(space: SearchSpace, seed: int | None, options: dict[str, Any]) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed, **options)


def _qmc(space: SearchSpace, seed: int | None, options: dict[str, Any]) -> optuna.samplers.BaseSampler:
    return optuna.samplers.QMCSampler(seed=seed, **options)


def _tpe(space: SearchSpace, seed: int | None, options: dict[str, Any]) -> optuna.samplers.BaseSampler:
    # constant_liar keeps parallel workers from proposing the same point while trials run.
    return optuna.samplers.TPESampler(seed=seed, **{"constant_liar": True, **options})


def _cmaes(space: SearchSpace, seed: int | None, options: dict[str, Any]) -> optuna.samplers.BaseSampler:
    return optuna.samplers.CmaEsSampler(seed=seed, **options)


SAMPLERS: dict[str, Callable[[SearchSpace, int | None, dict[str, Any]], optuna.samplers.BaseSampler]] = {
    "grid": _grid,
    "random": _random,
    "qmc": _qmc,
    "tpe": _tpe,
    "cmaes": _cmaes,
}


# Samplers whose seed must be the same in every worker: GridSampler shuffles its grid with the
# seed and workers share grid ids through the storage, so two seeds mean two meanings of "grid
# point 3" (duplicated points, others never run); QMCSampler indexes one scrambled sequence.
SHARED_SEED = {"grid", "qmc"}


def make_sampler(space: SearchSpace, worker_index: int = 0) -> optuna.samplers.BaseSampler:
    """The space's sampler; workers of a random, TPE or CMA-ES study get their own seed offset
    so that they do not draw alike."""
    spec = space.study.sampler
    offset = 0 if spec.type in SHARED_SEED else worker_index
    seed = None if spec.seed is None else spec.seed + offset
    try:
        return SAMPLERS[spec.type](space, seed, spec.options)
    except TypeError as exc:
        raise ConfigError(f"{space.source}: key 'study.sampler.options': {exc}") from None
