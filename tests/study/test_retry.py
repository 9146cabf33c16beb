"""Storage calls retried on transient database errors: which, how, and on a real PostgreSQL."""

from __future__ import annotations

import optuna
import pytest
import sqlalchemy.exc
from optuna.trial import TrialState

from hpo.study.retry import is_transient
from hpo.study.retry import retrying
from hpo.study.storage import make_storage
from tests.study.conftest import terminate_backends


def _operational() -> sqlalchemy.exc.OperationalError:
    return sqlalchemy.exc.OperationalError(
        "SELECT 1", {}, Exception("server closed the connection unexpectedly")
    )


def _wrapped(exc: Exception) -> optuna.exceptions.StorageInternalError:
    try:
        raise optuna.exceptions.StorageInternalError(
            "An exception is raised during the commit."
        ) from exc
    except optuna.exceptions.StorageInternalError as wrapped:
        return wrapped


def test_connection_errors_are_transient_data_errors_are_not():
    # Rule: lost connections (bare or wrapped by Optuna) are retried; bad data and logic errors are
    # not.
    assert is_transient(_operational())
    assert is_transient(_wrapped(_operational()))
    assert is_transient(
        sqlalchemy.exc.InterfaceError("SELECT 1", {}, Exception("connection already closed"))
    )
    assert not is_transient(
        _wrapped(sqlalchemy.exc.DataError("INSERT", {}, Exception("value too long")))
    )
    assert not is_transient(optuna.exceptions.UpdateFinishedTrialError("finished"))
    assert not is_transient(ValueError("x"))


class _Flaky:
    retry_window_s = 5.0

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures, self.error, self.calls = failures, error, 0

    def call(self, x: int) -> int:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return x * 2


def test_transient_errors_are_retried_until_the_call_succeeds():
    # Rule: a call that fails on a dropped connection is retried and its result returned.
    flaky = _Flaky(2, _wrapped(_operational()))
    assert retrying(_Flaky.call, lambda s: s.retry_window_s)(flaky, 21) == 42
    assert flaky.calls == 3


def test_other_errors_and_an_exhausted_window_reach_the_caller():
    # Rule: a non-transient error is raised at once; a transient one once the retry window is over.
    flaky = _Flaky(1, ValueError("bad"))
    with pytest.raises(ValueError):
        retrying(_Flaky.call, lambda s: 5.0)(flaky, 1)
    assert flaky.calls == 1
    flaky = _Flaky(100, _operational())
    with pytest.raises(sqlalchemy.exc.OperationalError):
        retrying(_Flaky.call, lambda s: 0.5)(flaky, 1)
    assert 1 < flaky.calls < 10


def test_a_retried_state_change_that_had_landed_counts_as_done():
    # Rule: if a retry finds the trial already in the state asked for, the first commit landed:
    # success.
    def settle(storage, exc, x):
        assert isinstance(exc, KeyError)
        return "settled"

    flaky = _Flaky(1, _operational())
    flaky.error_after = KeyError("finished")

    def call(self, x):
        self.calls += 1
        raise self.error if self.calls == 1 else self.error_after

    assert retrying(call, lambda s: 5.0, settle)(flaky, 1) == "settled"
    with pytest.raises(KeyError):  # on the first attempt there is nothing to settle
        retrying(lambda self, x: (_ for _ in ()).throw(KeyError("k")), lambda s: 5.0, settle)(
            flaky, 1
        )


@pytest.mark.postgres
def test_storage_survives_terminated_connections(pg_url):
    # Rule: after pg_terminate_backend of every connection, the next storage calls reconnect and
    # succeed.
    storage = make_storage(pg_url)
    study = optuna.create_study(study_name="terminated", storage=storage)
    trial = study.ask()
    assert terminate_backends(pg_url) >= 1
    trial.suggest_float("x", 0.0, 1.0)
    terminate_backends(pg_url)
    study.tell(trial, 0.5)
    terminate_backends(pg_url)
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE]
