"""Exponential backoff within a time window, for every retry loop; its clock a test can fake."""

from __future__ import annotations

import time
from collections.abc import Callable


class Backoff:
    """Delays doubling from `first_s` up to `max_s`, given for `window_s` seconds from creation.

    Args:
        window_s: seconds, from now, after which no delay is given (0: none at all).
        first_s: the first delay; each next one doubles, up to `max_s`.
        max_s: the longest delay.
        clip: a delay that would end past the deadline is shortened to end on it (a wait that
            must not overrun its limit); without, it is not given (the window is over).
        clock, sleep: time.monotonic and time.sleep, replaced by a test's fake clock.
    """

    def __init__(
        self,
        window_s: float,
        first_s: float,
        max_s: float,
        *,
        clip: bool = False,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._clock, self._sleep, self._clip = clock, sleep, clip
        self._next, self._max_s = first_s, max_s
        self.start = clock()
        self.deadline = self.start + window_s

    def elapsed(self) -> float:
        """Seconds since this backoff was made."""
        return self._clock() - self.start

    def next_delay(self) -> float | None:
        """The seconds to wait before the next attempt, or None: the window is over."""
        delay, now = self._next, self._clock()
        if self._clip:
            left = self.deadline - now
            if left <= 0:
                return None
            delay = min(delay, left)
        elif now + delay > self.deadline:
            return None
        self._next = min(self._next * 2, self._max_s)
        return delay

    def sleep(self, seconds: float) -> None:
        """Waits `seconds` (a delay given by next_delay) on this backoff's sleep."""
        self._sleep(seconds)
