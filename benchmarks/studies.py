"""Shared by the benchmark and results scripts: a search space at a smaller budget, run for real.

    space = derive_space("search_spaces/dropout.yaml", work / "dropout.yaml",
                         {"study.name": "dropout-cpu", "base.train.epochs": 20})
    study = run_study(space, work)

A derived space is the original file with dotted-key changes, written next to the results so a
reader sees exactly what ran; it then goes through `hpo launch` as any user's file would.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from hpo.keys import EPOCHS_RUN_KEY
from hpo.launch.launcher import launch

ROOT = Path(__file__).resolve().parents[1]


def derive_space(src: str | Path, out: str | Path, changes: dict[str, Any]) -> Path:
    """Writes `src` with `changes` ({"base.train.epochs": 20, ...}; None deletes a key) to `out`."""
    src, out = Path(src), Path(out)
    raw = yaml.safe_load(src.read_text())
    derived = copy.deepcopy(raw)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = derived
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    out.parent.mkdir(parents=True, exist_ok=True)
    shown = ", ".join(f"{k}={v}" for k, v in changes.items())
    header = f"# {_rel(src)} at a smaller budget ({shown})\n"
    out.write_text(header + yaml.safe_dump(derived, sort_keys=False))
    return out


def run_study(space: Path, work: Path, *, workers: int = 2) -> optuna.Study:
    """Runs the study of `space` to its budget (SQLite storage and MLflow store in `work`)."""
    work.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{work / 'hpo.db'}"
    result = launch(space, workers=workers, storage_url=storage,
                    tracking_uri=f"sqlite:///{work / 'mlflow.db'}", echo=lambda line: None)
    return optuna.load_study(study_name=result.study_name, storage=storage)


def finished(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def epochs_spent(trials: list[FrozenTrial]) -> int:
    """Epochs trained over `trials`, pruned ones included (each trial records its own)."""
    return sum(int(t.user_attrs.get(EPOCHS_RUN_KEY, 0)) for t in trials)


def best_value(study: optuna.Study) -> float | None:
    values = [t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    return min(values) if values else None  # type: ignore[type-var]


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)
