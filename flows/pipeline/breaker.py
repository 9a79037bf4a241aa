"""A circuit breaker on dead letters, and the reason the engine stopped on its own.

Rules of this interface:

* One bad event never stops the engine: it goes to the dead-letter topic with
  its reason and the others go on. A producer that sends nothing but bad
  events is another matter: dead-lettering the whole stream hides the fault
  and fills the DLQ. :class:`Breaker` (as arroyo's invalid-message ratio)
  counts the records of the last ``window_s`` seconds; once at least
  ``min_records`` were seen and more than ``max_share`` of them failed, it
  trips: it calls :meth:`Halt.request` with one line saying what happened and
  what to do, which stops the sources at their next batch (a graceful stop:
  what was read is finished, dead letters included, so nothing is lost).
* :class:`Halt` holds the first reason the engine stopped on its own;
  ``tetik run`` prints it as its last line and exits with status 3.
* Thread-safe: a process's workers share one breaker.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class BreakerConfig:
    """When dead letters mean the input itself is broken (``TETIK_DLQ_*``)."""

    max_share: float = 0.5
    window_s: float = 60.0
    min_records: int = 1000


class Halt:
    """Why the engine stopped on its own, and the event that stops its sources."""

    def __init__(self, stop: threading.Event | None = None) -> None:
        self.stop = stop if stop is not None else threading.Event()
        self.reason: str | None = None
        self._lock = threading.Lock()

    def request(self, reason: str) -> None:
        """Stop the sources at their next batch; the first reason wins."""
        with self._lock:
            if self.reason is None:
                self.reason = reason
        self.stop.set()


class Breaker:
    """Trips when the share of failed records in the last window is too high."""

    def __init__(
        self,
        halt: Halt,
        config: BreakerConfig = BreakerConfig(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._halt = halt
        self._config = config
        self._clock = clock
        self._lock = threading.Lock()
        # One bucket per second: [second, records, failed].
        self._buckets: deque[list[int]] = deque()
        self._records = 0
        self._failed = 0

    def record(self, failed: bool, records: int = 1) -> None:
        """Count ``records`` records (all failed, or all fine)."""
        now = int(self._clock())
        with self._lock:
            self._expire(now)
            if not self._buckets or self._buckets[-1][0] != now:
                self._buckets.append([now, 0, 0])
            bucket = self._buckets[-1]
            bucket[1] += records
            self._records += records
            if failed:
                bucket[2] += records
                self._failed += records
            tripped = self._tripped()
        if tripped:
            self._halt.request(self._reason())

    def _expire(self, now: int) -> None:
        while self._buckets and self._buckets[0][0] <= now - self._config.window_s:
            _, records, failed = self._buckets.popleft()
            self._records -= records
            self._failed -= failed

    def _tripped(self) -> bool:
        config = self._config
        if self._records < config.min_records:
            return False
        return self._failed > config.max_share * self._records

    def _reason(self) -> str:
        share = self._failed / max(self._records, 1)
        return (
            f"stopped: {self._failed:,} of the last {self._records:,} events "
            f"({share:.0%}) failed in {self._config.window_s:g} s, over the "
            f"{self._config.max_share:.0%} limit; the producer looks broken: fix it (the "
            "failed events are in the dead-letter topic with their reasons), then start "
            "tetik run again (TETIK_DLQ_MAX_SHARE changes the limit)"
        )
