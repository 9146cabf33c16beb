"""Objective: the search-space file, trial-to-config sampling, pruning and the Optuna objective."""

from hpo.objective.space import SearchSpace
from hpo.objective.space import load_space

__all__ = ["SearchSpace", "load_space"]
