"""The one backoff of every retry loop: its delays, their cap, and where the window ends them."""

from __future__ import annotations

from hpo.backoff import Backoff
from tests.conftest import FakeClock


def _delays(backoff: Backoff) -> list[float]:
    """Every delay the backoff gives, each slept, until the window is over."""
    delays = []
    while (delay := backoff.next_delay()) is not None:
        backoff.sleep(delay)
        delays.append(delay)
    return delays


def test_delays_double_up_to_the_cap_and_stop_before_one_would_pass_the_window():
    # Rule: without clip, a delay that would end past the deadline is not given: the caller gives
    # up with time left rather than overrun its window.
    clock = FakeClock(100.0)
    backoff = Backoff(30, 0.25, 8, clock=clock, sleep=clock.sleep)
    assert _delays(backoff) == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert clock.sleeps == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert backoff.elapsed() == 23.75 and backoff.deadline == 130


def test_a_clipped_backoff_shortens_its_last_delay_to_end_on_the_deadline():
    # Rule: with clip, the last delay is what is left of the window, and then none is given.
    clock = FakeClock(100.0)
    backoff = Backoff(20, 1, 15, clip=True, clock=clock, sleep=clock.sleep)
    assert _delays(backoff) == [1.0, 2.0, 4.0, 8.0, 5.0]
    assert backoff.elapsed() == 20


def test_a_zero_window_gives_no_delay():
    # Rule: window 0 means one attempt: no delay, clipped or not.
    clock = FakeClock(100.0)
    assert Backoff(0, 0.5, 15, clock=clock, sleep=clock.sleep).next_delay() is None
    assert Backoff(0, 1, 15, clip=True, clock=clock, sleep=clock.sleep).next_delay() is None
    assert clock.sleeps == []


def test_time_spent_outside_the_sleeps_counts_against_the_window():
    # Rule: the window is measured on the clock, not summed from the delays: slow attempts use it
    # up too.
    clock = FakeClock(100.0)
    backoff = Backoff(10, 1, 8, clock=clock, sleep=clock.sleep)
    assert backoff.next_delay() == 1
    clock.now += 8.5  # a slow attempt (a connect timeout), no sleep
    assert backoff.next_delay() is None  # 8.5 s spent + 2 s would end past 10 s
