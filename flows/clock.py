"""The one clock of the live side: wall time in epoch milliseconds, or a testing clock.

Rules of this interface (as arroyo's ``Clock`` / ``TestingClock``):

* Code that needs the time takes a :class:`Clock` and calls it; nothing in
  flows/ reads ``time.time()`` for decisions itself.
* :class:`TestClock` only moves when told (:meth:`TestClock.advance`,
  :meth:`TestClock.set`), so tests of timers and idle time are exact.
* Event time (what journeys run on) is not this clock: it comes from the
  events, bounded by it (:mod:`flows.pipeline.watermark`).
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    """Epoch milliseconds now."""

    def __call__(self) -> int: ...


def wall_ms() -> int:
    """The wall clock in epoch milliseconds."""
    return time.time_ns() // 1_000_000


class TestClock:
    """A clock that moves only when a test moves it (thread-safe)."""

    __test__ = False  # not a pytest test class

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self._now = start_ms
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            return self._now

    def advance(self, ms: int) -> int:
        with self._lock:
            self._now += ms
            return self._now

    def set(self, now_ms: int) -> None:
        with self._lock:
            self._now = now_ms
