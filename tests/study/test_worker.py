"""Worker loop on SQLite: a NaN loss fails only its trial, with the reason; the worker goes on."""

from __future__ import annotations

import contextlib

import pytest
from optuna.trial import TrialState

from tests.study.conftest import create_study
from tests.study.conftest import mlflow_client
from tests.study.conftest import trials_of
from tests.study.conftest import write_study_files

pytestmark = pytest.mark.slow


def test_nan_loss_fails_its_trial_with_the_reason_and_the_worker_goes_on(tmp_path):
    # Rule: a trial whose loss turns NaN ends FAIL with the reason (trial attr and MLflow tag), its
    # run
    # FAILED; the worker runs the next trial and spends the budget.
    from hpo.study.worker import run_worker

    write_study_files(
        tmp_path,
        "nan",
        n_trials=None,
        sampler={"type": "grid"},
        params={"train.optimizer.learning_rate": {"categorical": [1.0e30, 3.0e-3]}},
    )
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    create_study(tmp_path, storage)
    with contextlib.chdir(tmp_path):
        ran = run_worker("nan", storage, f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert ran == 2
    by_state = {t.state: t for t in trials_of(storage, "nan")}
    assert set(by_state) == {TrialState.FAIL, TrialState.COMPLETE}
    failed = by_state[TrialState.FAIL]
    assert failed.params["train.optimizer.learning_rate"] == 1.0e30
    assert failed.user_attrs["fail_reason"].startswith("training loss became nan")
    run = mlflow_client(tmp_path).get_run(failed.user_attrs["mlflow_run_id"])
    assert (
        run.info.status == "FAILED"
        and run.data.tags["hpo.fail_reason"] == failed.user_attrs["fail_reason"]
    )
