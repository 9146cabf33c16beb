"""How much of a study's budget is spent: COMPLETE + PRUNED trials across all workers.

hpo status dropout
"""

from __future__ import annotations

from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from hpo.config.space import SearchSpace


@dataclass(frozen=True)
class Progress:
    """Counts of a study's trials by state, and its best value so far."""

    complete: int
    pruned: int
    failed: int
    running: int
    waiting: int
    budget: int
    best: float | None

    @property
    def done(self) -> int:
        return self.complete + self.pruned

    @property
    def spent(self) -> bool:
        return self.done >= self.budget


def progress(study: optuna.Study, space: SearchSpace) -> Progress:
    """The study's trials counted by state, against the space's budget."""
    trials = study.get_trials(deepcopy=False)
    count = {s: 0 for s in TrialState}
    for t in trials:
        count[t.state] += 1
    values = [t.value for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    return Progress(
        complete=count[TrialState.COMPLETE],
        pruned=count[TrialState.PRUNED],
        failed=count[TrialState.FAIL],
        running=count[TrialState.RUNNING],
        waiting=count[TrialState.WAITING],
        budget=space.budget(),
        best=min(values) if values else None,
    )


def grid_exhausted(study: optuna.Study, space: SearchSpace) -> bool:
    """True when every grid point has a finished trial (a failed point is not retried) and no
    lost trial waits to be run again (its point has a FAIL already, its re-queued copy not yet)."""
    if space.study.sampler.type != "grid":
        return False
    if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        return False
    finished = study.get_trials(
        deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    )
    seen = {tuple(sorted((k, str(v)) for k, v in t.params.items())) for t in finished}
    return len(seen) >= space.grid_size()
