"""Optuna pruners by the names a search space uses: none, median, percentile, hyperband, ..."""

from __future__ import annotations

from collections.abc import Callable

import optuna

from hpo.config.space import PrunerSpec
from hpo.errors import ConfigError


def _none(spec: PrunerSpec) -> optuna.pruners.BasePruner:
    return optuna.pruners.NopPruner()


def _median(spec: PrunerSpec) -> optuna.pruners.BasePruner:
    return optuna.pruners.MedianPruner(
        n_startup_trials=spec.n_startup_trials, n_warmup_steps=spec.n_warmup_steps, **spec.options
    )


def _percentile(spec: PrunerSpec) -> optuna.pruners.BasePruner:
    options = {"percentile": 25.0, **spec.options}
    return optuna.pruners.PercentilePruner(
        n_startup_trials=spec.n_startup_trials, n_warmup_steps=spec.n_warmup_steps, **options
    )


def _hyperband(spec: PrunerSpec) -> optuna.pruners.BasePruner:
    return optuna.pruners.HyperbandPruner(**spec.options)


def _successive_halving(spec: PrunerSpec) -> optuna.pruners.BasePruner:
    return optuna.pruners.SuccessiveHalvingPruner(**spec.options)


PRUNERS: dict[str, Callable[[PrunerSpec], optuna.pruners.BasePruner]] = {
    "none": _none,
    "median": _median,
    "percentile": _percentile,
    "hyperband": _hyperband,
    "successive_halving": _successive_halving,
}


def make_pruner(spec: PrunerSpec, source: str = "search space") -> optuna.pruners.BasePruner:
    try:
        return PRUNERS[spec.type](spec)
    except TypeError as exc:
        raise ConfigError(f"{source}: key 'study.pruner.options': {exc}") from None
