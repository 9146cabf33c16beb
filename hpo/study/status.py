"""`hpo status`: the studies of a storage, or one study's trials, as rows for a table."""

from __future__ import annotations

from typing import Any

import optuna

from hpo.keys import EPOCHS_RUN_KEY
from hpo.keys import FAIL_REASON_KEY
from hpo.keys import LOST_WORKER_REASON
from hpo.keys import MLFLOW_RUN_ID_KEY
from hpo.keys import RESUMED_KEY


def study_rows(storage: optuna.storages.BaseStorage) -> list[dict[str, Any]]:
    """One row per study: name, trials by state, best value."""
    rows = []
    for s in optuna.get_all_study_summaries(storage, include_best_trial=True):
        study = optuna.load_study(study_name=s.study_name, storage=storage)
        states = [t.state.name for t in study.get_trials(deepcopy=False)]
        rows.append(
            {
                "study": s.study_name,
                "trials": len(states),
                "complete": states.count("COMPLETE"),
                "pruned": states.count("PRUNED"),
                "failed": states.count("FAIL"),
                "running": states.count("RUNNING"),
                "best": None if s.best_trial is None else s.best_trial.value,
            }
        )
    return rows


def status_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per trial: number, state, value, epochs run, duration, MLflow run, reason if failed.

    A FAIL trial without a reason lost its worker (no heartbeat); the note of a FAIL trial whose
    parameters were queued again (lost, interrupted) names its rerun, and a rerun that went on
    from the trial's checkpoint says from which epoch.
    """
    trials = study.get_trials(deepcopy=False)
    history = {t.number: t.system_attrs.get("retry_history") for t in trials}
    rerun = {h[-1]: number for number, h in history.items() if h}
    rows = []
    for t in trials:
        note = t.user_attrs.get(FAIL_REASON_KEY, "")
        if t.state.name == "FAIL":
            note = note or LOST_WORKER_REASON
            if t.number in rerun:
                note += f"; rerun as trial {rerun[t.number]}"
        resumed = t.user_attrs.get(RESUMED_KEY)
        if isinstance(resumed, dict):
            note = "; ".join(filter(None, [note, f"resumed trial {resumed.get('trial')} at "
                                                 f"epoch {resumed.get('epoch')}"]))
        duration = None
        if t.datetime_start and t.datetime_complete:
            duration = (t.datetime_complete - t.datetime_start).total_seconds()
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                "value": t.value,
                "epochs": t.user_attrs.get(EPOCHS_RUN_KEY),
                "duration": None if duration is None else human_duration(duration),
                "mlflow_run": t.user_attrs.get(MLFLOW_RUN_ID_KEY),
                "note": note,
            }
        )
    return rows


def human_duration(seconds: float) -> str:
    """'42 s', '1 m 05 s', '2 h 03 m': the two largest units, the second zero-padded."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} m {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} m"
