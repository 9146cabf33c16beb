"""Where an Optuna study's trials keep their checkpoints, and their removal once nothing can resume them.

    <study.checkpoint_dir>/<study>/trial-<n>/checkpoint.npz

A trial and every copy of it that a lost worker or a stop queued again share one folder, named
by the number of the first (Optuna's retry callback records it as `failed_trial`): a copy resumes
what the last attempt saved. Like Ray Tune's `storage_path`, the folder must be one that every
worker can write (a shared file system on a cluster, a volume for containers), and it is
written directly, not through MLflow: a checkpoint is replaced every epoch and removed at the
trial's end, which an artifact store is not made for (no atomic replace, no delete on most).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import optuna
from optuna.trial import TrialState

from hpo.config.space import SearchSpace

_logger = logging.getLogger(__name__)

RETRIED_KEY = "failed_trial"  # Optuna's system attribute: the first trial of a retried series


def first_of(system_attrs: dict, number: int) -> int:
    """The number of the first trial of the series `number` belongs to (itself, if not a copy)."""
    return int(system_attrs.get(RETRIED_KEY, number))


def study_folder(space: SearchSpace, study_name: str) -> Path:
    """The folder of a study's trials' checkpoint folders."""
    return Path(space.study.checkpoint_dir) / study_name


def checkpoint_folder(space: SearchSpace, study_name: str, first: int) -> Path:
    """The folder of the checkpoints of trial `first` and its copies."""
    return study_folder(space, study_name) / f"trial-{first}"


def remove_stranded(study: optuna.Study, space: SearchSpace) -> list[int]:
    """Removes the checkpoints that no trial will resume: those of series with no trial RUNNING
    or WAITING (a lost trial whose retries are used up, or queued when the budget was spent).

    Returns:
        The series (first trial numbers) whose checkpoints were removed.
    """
    if space.study.checkpoint == "off":
        return []
    root = study_folder(space, study.study_name)
    if not root.is_dir():
        return []
    alive = {first_of(t.system_attrs, t.number)
             for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))}
    removed = []
    for folder in sorted(root.glob("trial-*")):
        try:
            first = int(folder.name.removeprefix("trial-"))
        except ValueError:
            continue  # not ours
        if first in alive:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(first)
    try:
        root.rmdir()
    except OSError:
        pass  # checkpoints of running trials, or files not ours
    if removed:
        _logger.info("study %s: removed the checkpoints no trial resumes (series %s)",
                     study.study_name, removed)
    return removed
