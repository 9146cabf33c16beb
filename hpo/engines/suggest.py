"""An Optuna trial's point of the space: suggest_* per dotted path; SearchSpace.config_for makes it a config."""

from __future__ import annotations

from typing import Any

import optuna

from hpo.config.space import decode_choice
from hpo.config.space import SearchSpace
from hpo.config.tree import RunConfig
from hpo.errors import ConfigError
from hpo.errors import TrialFailed


def suggest_overrides(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """{dotted path: sampled value} for every param of the space (plus train.seed with repeats)."""
    if space.study.sampler.type == "grid":
        # A grid names exact values: suggest them as categories so no float step rounds them.
        return {
            path: decode_choice(trial.suggest_categorical(path, values))
            for path, values in space.grid().items()
        }
    values: dict[str, Any] = {}
    for path, dist in space.params.items():
        if dist.categorical is not None:
            choices = dist.grid() or []
            values[path] = decode_choice(trial.suggest_categorical(path, choices))
        elif dist.int_ is not None:
            lo, hi = dist.int_
            values[path] = trial.suggest_int(path, lo, hi, step=int(dist.step or 1), log=dist.log)
        else:
            lo, hi = dist.float_  # type: ignore[misc]
            values[path] = trial.suggest_float(path, lo, hi, step=dist.step, log=dist.log)
    if space.study.repeats > 1:
        values["train.seed"] = trial.suggest_categorical("train.seed", list(range(space.study.repeats)))
    return values


def config_for_trial(trial: optuna.Trial, space: SearchSpace) -> RunConfig:
    """The resolved config of `trial`; an impossible combination fails only this trial."""
    overrides = suggest_overrides(trial, space)
    try:
        return space.config_for(overrides, where=f"trial {trial.number}")
    except ConfigError as exc:
        raise TrialFailed(str(exc), kind="config") from None
