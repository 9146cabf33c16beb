"""The one configuration tree of a training run, and dotted-path overrides of it."""

from hpo.config.overrides import apply_overrides
from hpo.config.overrides import flatten
from hpo.config.presets import load_run_config
from hpo.config.tree import RunConfig

__all__ = ["RunConfig", "apply_overrides", "flatten", "load_run_config"]
