"""Storage calls retried on transient database errors: which, how, and on a real PostgreSQL."""

from __future__ import annotations

import optuna
import pytest
import sqlalchemy.exc
from optuna.trial import TrialState

from hpo.store.retry import is_transient
from hpo.store.retry import retrying
from hpo.store.storage import make_storage
from tests._postgres import terminate_backends
from tests.conftest import FakeClock


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


def _retrying(method, window_s, settle=None, *, clock=None):
    """`retrying` on a fake clock (a fresh one unless given): no test waits for a real delay."""
    clock = clock or FakeClock()
    return retrying(method, window_s, settle, clock=clock, sleep=clock.sleep)


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
    # Rule: a call that fails on a dropped connection is retried after 0.25 s, then 0.5 s, ...
    # and its result returned.
    clock = FakeClock()
    flaky = _Flaky(2, _wrapped(_operational()))
    assert _retrying(_Flaky.call, lambda s: s.retry_window_s, clock=clock)(flaky, 21) == 42
    assert flaky.calls == 3 and clock.sleeps == [0.25, 0.5]


def test_other_errors_reach_the_caller_at_once():
    # Rule: a non-transient error is raised on the first attempt, without a wait.
    clock = FakeClock()
    flaky = _Flaky(1, ValueError("bad"))
    with pytest.raises(ValueError):
        _retrying(_Flaky.call, lambda s: 5.0, clock=clock)(flaky, 1)
    assert flaky.calls == 1 and clock.sleeps == []


def test_a_transient_error_reaches_the_caller_when_the_next_delay_would_pass_the_window():
    # Rule: delays double from 0.25 s up to 8 s; the error is raised instead of a delay that would
    # end past the window, so a call never waits longer than its window.
    clock = FakeClock()
    flaky = _Flaky(10**6, _operational())
    with pytest.raises(sqlalchemy.exc.OperationalError):
        _retrying(_Flaky.call, lambda s: 30.0, clock=clock)(flaky, 1)
    assert clock.sleeps == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert clock.now == 23.75 and flaky.calls == 8  # a further 8 s would end at 31.75 > 30


def test_a_zero_window_is_one_attempt():
    # Rule: a storage made with retry_window_s=0 raises the first transient error as it is.
    clock = FakeClock()
    flaky = _Flaky(1, _operational())
    with pytest.raises(sqlalchemy.exc.OperationalError):
        _retrying(_Flaky.call, lambda s: 0.0, clock=clock)(flaky, 1)
    assert flaky.calls == 1 and clock.sleeps == []


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

    assert _retrying(call, lambda s: 5.0, settle)(flaky, 1) == "settled"
    with pytest.raises(KeyError):  # on the first attempt there is nothing to settle
        _retrying(lambda self, x: (_ for _ in ()).throw(KeyError("k")), lambda s: 5.0, settle)(
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
