"""Bounded retries of tracking calls: transient errors wait, the rest fail at once and clearly."""

from __future__ import annotations

import logging

import pytest
import requests
from mlflow.exceptions import MlflowException
from mlflow.exceptions import RestException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST
from mlflow.protos.databricks_pb2 import UNAUTHENTICATED

from hpo.errors import TrackingError
from hpo.errors import TrialFailed
from hpo.tracking import retry
from hpo.tracking.retry import is_transient
from hpo.tracking.retry import RetryingClient
from hpo.tracking.retry import TrackingUnavailable
from tests.conftest import FakeClock

URI = "http://127.0.0.1:1"


class Flaky:
    """Stands in for an MlflowClient method: fails `failures` times with `error`, then answers."""

    def __init__(self, failures: int, error: BaseException) -> None:
        self.failures, self.error, self.calls = failures, error, 0

    def log_batch(self, run_id: str) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return f"logged {run_id}"


def _refused() -> MlflowException:
    # What MLflow's HTTP client raises when nothing listens: the requests error as __context__.
    try:
        raise requests.exceptions.ConnectionError("Connection refused")
    except requests.exceptions.ConnectionError as exc:
        try:
            raise MlflowException(f"API request to {URI}/api/2.0/mlflow/runs/log-batch failed with exception {exc}")
        except MlflowException as wrapped:
            return wrapped


def _client(target, window_s: float, clock: FakeClock) -> RetryingClient:
    return RetryingClient(target, URI, window_s=window_s, clock=clock, sleep=clock.sleep)


def test_transient_errors_are_retried_until_the_call_succeeds(caplog):
    # Rule: a server away for less than the window costs nothing but a logged warning per retry,
    # after delays of 0.5 s doubling.
    clock = FakeClock()
    flaky = Flaky(3, _refused())
    with caplog.at_level(logging.WARNING, logger="hpo.tracking.retry"):
        assert _client(flaky, 5, clock).log_batch("r1") == "logged r1"
    assert flaky.calls == 4 and clock.sleeps == [0.5, 1.0, 2.0]
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == 3 and "retry 3 in 2.0 s" in retries[-1]


def test_a_server_gone_for_good_fails_the_trial_within_the_window():
    # Rule: delays double from 0.5 s up to 15 s; TrackingUnavailable (a TrialFailed) comes instead
    # of a delay that would end past the window, naming the URI, the call, the attempts, the fix.
    clock = FakeClock()
    flaky = Flaky(10**6, _refused())
    with pytest.raises(TrackingUnavailable) as info:
        _client(flaky, 60, clock).log_batch("r1")
    assert clock.sleeps == [0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0]
    assert clock.now == 45.5 and flaky.calls == 8  # a further 15 s would end at 60.5 > 60
    assert isinstance(info.value, TrialFailed) and isinstance(info.value, TrackingError)
    message = str(info.value)
    assert URI in message and "log_batch" in message and "HPO_TRACKING_RETRY_S" in message
    assert "for 60 s (8 attempts)" in message


def test_a_zero_window_is_one_attempt():
    # Rule: a client with window_s=0 (a local store) raises TrackingUnavailable on the first
    # transient error, without a wait.
    clock = FakeClock()
    flaky = Flaky(1, _refused())
    with pytest.raises(TrackingUnavailable, match="log_batch for 0 s"):
        _client(flaky, 0, clock).log_batch("r1")
    assert flaky.calls == 1 and clock.sleeps == []


def test_after_a_window_ran_out_calls_try_once_until_one_succeeds():
    # Rule: a failed trial's clean-up does not wait a second window; a success restores retries.
    clock = FakeClock()
    flaky = Flaky(10**6, _refused())
    client = _client(flaky, 10, clock)
    with pytest.raises(TrackingUnavailable):
        client.log_batch("r1")
    before, slept = flaky.calls, len(clock.sleeps)
    with pytest.raises(TrackingUnavailable):
        client.log_batch("r1")
    assert flaky.calls == before + 1 and len(clock.sleeps) == slept
    flaky.failures = 0
    assert client.log_batch("r1") == "logged r1"
    flaky.failures, flaky.calls, clock.sleeps = 2, 0, []
    assert client.log_batch("r1") == "logged r1" and flaky.calls == 3
    assert clock.sleeps == [0.5, 1.0]


def test_other_errors_are_not_retried():
    # Rule: a bad request is a bug or a user error, raised at once as it is.
    bad = Flaky(1, RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "bad key"}))
    with pytest.raises(RestException):
        RetryingClient(bad, URI, window_s=5).log_batch("r1")
    assert bad.calls == 1


def test_a_refused_login_is_one_clear_message(monkeypatch):
    # Rule: HTTP 401 names the user and the two variables to set, without the password, unretried.
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret")
    denied = Flaky(1, MlflowException("API request to endpoint /api/2.0/mlflow/runs/log-batch failed with "
                                      "error code 401 != 200", error_code=UNAUTHENTICATED))
    with pytest.raises(TrackingError) as info:
        RetryingClient(denied, URI, window_s=5).log_batch("r1")
    message = str(info.value)
    assert not isinstance(info.value, TrialFailed) and denied.calls == 1
    assert "'alice'" in message and "HTTP 401" in message and "MLFLOW_TRACKING_PASSWORD" in message
    assert "s3cret" not in message and "\n" not in message


@pytest.mark.parametrize(("error", "transient"), [
    (requests.exceptions.ConnectionError("refused"), True),
    (RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "restarting"}), True),
    (RestException({"error_code": "INTERNAL_ERROR", "message": "database is locked"}), True),
    (MlflowException("API request to endpoint /x failed with error code 502 != 200"), True),
    (MlflowException("API request to endpoint /x failed with error code 404 != 200"), False),
    (MlflowException("Run 'abc' not found", error_code=RESOURCE_DOES_NOT_EXIST), False),
    (MlflowException("a bug in our code"), False),
    (ValueError("not a tracking error"), False),
])
def test_which_errors_are_transient(error, transient):
    # Rule: only "no connection", timeouts and 408/429/5xx answers are worth waiting for.
    assert is_transient(error) is transient


def test_the_window_comes_from_the_environment(monkeypatch):
    # Rule: HPO_TRACKING_RETRY_S sets the window; a bad value names the variable and the value.
    monkeypatch.setenv("HPO_TRACKING_RETRY_S", "7.5")
    assert retry.default_window_s() == 7.5
    monkeypatch.setenv("HPO_TRACKING_RETRY_S", "soon")
    with pytest.raises(TrackingError, match="HPO_TRACKING_RETRY_S.*'soon'"):
        retry.default_window_s()


class Searches:
    """Stands in for MlflowClient.search_experiments: refused `failures` times, then answers."""

    def __init__(self, failures: int) -> None:
        self.failures, self.calls = failures, 0

    def search_experiments(self, max_results: int) -> list:
        self.calls += 1
        if self.calls <= self.failures:
            raise _refused()
        return []


def test_a_worker_waits_for_a_server_gone_away_with_backoff_and_says_so(caplog):
    # Rule: once a window ran out, wait_until_up polls with backoff (1 s doubling, capped), logs
    # one line naming the limit, one when the server is back, and clears the down state.
    clock = FakeClock()
    client = RetryingClient(Searches(6), URI, window_s=1)
    client._down = "refused"
    with caplog.at_level(logging.WARNING, logger="hpo.tracking.retry"):
        waited = client.wait_until_up(600, clock=clock, sleep=clock.sleep)
    assert clock.sleeps == [1.0, 2.0, 4.0, 8.0, 15.0, 15.0] and waited == sum(clock.sleeps)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and "up to 600 s (HPO_TRACKING_WAIT_S)" in messages[0]
    assert "answers again after 45 s" in messages[1]
    assert client.down is None


def test_a_server_away_past_the_wait_limit_stops_the_worker_with_one_line():
    # Rule: past HPO_TRACKING_WAIT_S the wait ends in a TrackingError (not a TrialFailed: the
    # worker stops) naming the server and the variable; it never sleeps past the limit.
    clock = FakeClock()
    client = _client(Searches(10**6), 1, clock)  # the client's clock serves its waits too
    with pytest.raises(TrackingError) as info:
        client.wait_until_up(20)
    assert clock.sleeps == [1.0, 2.0, 4.0, 8.0, 5.0] and not isinstance(info.value, TrialFailed)
    message = str(info.value)
    assert URI in message and "20 s (HPO_TRACKING_WAIT_S)" in message and "\n" not in message


def test_the_wait_limit_comes_from_the_environment(monkeypatch):
    # Rule: HPO_TRACKING_WAIT_S sets the limit (default 1800 s); a bad value names the variable.
    monkeypatch.delenv("HPO_TRACKING_WAIT_S", raising=False)
    assert retry.default_wait_s() == 1800
    monkeypatch.setenv("HPO_TRACKING_WAIT_S", "30")
    assert retry.default_wait_s() == 30
    monkeypatch.setenv("HPO_TRACKING_WAIT_S", "-1")
    with pytest.raises(TrackingError, match="HPO_TRACKING_WAIT_S.*'-1'"):
        retry.default_wait_s()
