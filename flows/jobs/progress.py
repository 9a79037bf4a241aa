"""A live one-line view of the flow's counters, printed while a job runs."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

import redis


def stats_line(stats: dict[str, int], elapsed: float) -> str:
    """One human line: what the flow did so far and how fast."""
    done = events_done(stats)
    rate = done / elapsed if elapsed > 0 else 0.0
    return (
        f"events {done:>8,}  applied {stats.get('applied', 0):>8,}  "
        f"duplicate {stats.get('duplicate', 0):>6,}  stale {stats.get('stale', 0):>5,}  "
        f"invalid->dlq {stats.get('invalid', 0):>5,}  {rate:>9,.0f} ev/s"
    ) + _actions(stats)


def _actions(stats: dict[str, int]) -> str:
    """The live engine's part of the line (empty for the ingest job)."""
    if "actions.sent" not in stats and "actions.suppressed" not in stats:
        return ""
    return (
        f"  actions sent {stats.get('actions.sent', 0):>7,}  "
        f"suppressed {stats.get('actions.suppressed', 0):>6,}"
    )


def events_done(stats: dict[str, int]) -> int:
    """Events the flow has finished with, whatever the outcome."""
    names = ("applied", "duplicate", "stale", "invalid", "failed")
    return sum(stats.get(name, 0) for name in names)


class Monitor(threading.Thread):
    """Prints :func:`stats_line` every ``interval`` seconds until stopped."""

    def __init__(
        self,
        stats: Callable[[], dict[str, int]],
        interval: float = 1.0,
        out: TextIO = sys.stderr,
        extra: Callable[[], str] = lambda: "",
    ) -> None:
        super().__init__(daemon=True, name="tetik-progress")
        self._stats = stats
        self._interval = interval
        self._out = out
        self._extra = extra
        self._done = threading.Event()
        self._start = time.monotonic()

    def run(self) -> None:
        while not self._done.wait(self._interval):
            self.show(end="\r")

    def show(self, end: str = "\n") -> None:
        try:
            stats = self._stats()
        except redis.RedisError:
            return  # Redis is away; the engine's own lines say so
        line = stats_line(stats, time.monotonic() - self._start)
        print(f"{self._extra()}{line}", end=end, file=self._out, flush=True)

    def stop(self) -> None:
        self._done.set()
        self.join()
        self.show()
