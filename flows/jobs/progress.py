"""How every long-running command shows progress: live on a terminal, plain lines in a file.

Rules of this interface (the one progress display of tetik: jobs, bench and chaos):

* :class:`Line` is one line of progress on a stream (stderr by default). On a
  terminal it is redrawn in place by rich (``rich.live.Live``), at most every
  ``refresh_s``; log lines written meanwhile appear above it. Anywhere else
  (a file, a pipe, CI) it writes a plain line at most every ``every_s``
  (:data:`PLAIN_EVERY_S` by default), never a carriage return or an escape
  code; :meth:`Line.close` always writes the last state. Off a terminal
  with ``TETIK_LOG_FORMAT=json``, a line on stderr is a log record (logger
  ``tetik.progress``), so stderr stays one JSON object per line.
* :class:`Bar` is a :class:`Line` that draws a fraction done; :class:`Monitor`
  a thread that shows a job's counters (:func:`stats_line`) until stopped.
* A rate (``ev/s``) is over the interval since the last line shown, not since
  the start, so a stall shows at once.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

import redis
from rich.console import Console
from rich.live import Live
from rich.text import Text

from flows import logs

PROGRESS = logging.getLogger("tetik.progress")
PLAIN_EVERY_S = 10.0  # off a terminal: one line this often
LIVE_REFRESH_S = 0.25  # on a terminal: redrawn at most this often
WIDTH = 24  # a Bar's width in characters


class Line:
    """One line of progress: :meth:`update` as often as you like, :meth:`close` at the end."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        every_s: float | None = None,
        refresh_s: float = LIVE_REFRESH_S,
    ) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._every = refresh_s if self.tty else PLAIN_EVERY_S if every_s is None else every_s
        self._shown_at = -math.inf
        self._text = ""  # the last update, until it is shown
        self._live: Live | None = None
        self._log = stream is None and not self.tty and logs.writes_json()
        if self.tty:
            console = Console(file=self.stream, highlight=False)
            self._live = Live(console=console, auto_refresh=False, redirect_stdout=False)
            self._live.start()

    def due(self) -> bool:
        """Whether an :meth:`update` now would be shown (callers skip building the text)."""
        return time.monotonic() - self._shown_at >= self._every

    def update(self, text: str, *, force: bool = False) -> None:
        """Show ``text`` if due (or ``force``); else keep it for :meth:`close`."""
        self._text = text
        if not (force or self.due()):
            return
        self._text, self._shown_at = "", time.monotonic()
        if self._live is not None:
            self._live.update(Text(text), refresh=True)
        elif self._log:
            PROGRESS.info(text.removeprefix("tetik: "))
        else:
            self.stream.write(f"{text}\n")
            self.stream.flush()

    def close(self, text: str | None = None) -> None:
        """Show the last state (``text``, else an update not shown yet) and end the line."""
        if text is not None or self._text:
            self.update(self._text if text is None else text, force=True)
        if self._live is not None:
            self._live.stop()
            self._live = None


class Bar:
    """``Bar(label).update(fraction, detail)``; :meth:`close` ends the line.

    Off a terminal: a line when it starts, then at most every ``every_s``, and the last.
    """

    def __init__(
        self, label: str, stream: TextIO | None = None, every_s: float | None = None
    ) -> None:
        self.label = label
        self._line = Line(stream, every_s=every_s)
        self._started = time.monotonic()
        self.update(0.0, force=True)

    def update(self, fraction: float, detail: str = "", *, force: bool = False) -> None:
        if force or self._line.due():
            self._line.update(self._text(fraction, detail), force=force)

    def close(self, detail: str = "") -> None:
        self._line.close(self._text(1.0, detail))

    def _text(self, fraction: float, detail: str) -> str:
        fraction = min(1.0, max(0.0, fraction))
        filled = int(fraction * WIDTH)
        elapsed = time.monotonic() - self._started
        return (
            f"tetik: {self.label} [{'#' * filled}{'.' * (WIDTH - filled)}] "
            f"{fraction:4.0%} {elapsed:5.1f}s {detail}"
        ).rstrip()


class Rate:
    """Events per second over the interval since the last reading."""

    def __init__(self, done: int = 0) -> None:
        self._at = time.monotonic()
        self._done = done

    def read(self, done: int) -> float:
        now = time.monotonic()
        elapsed, gained = now - self._at, done - self._done
        self._at, self._done = now, done
        return gained / elapsed if elapsed > 0 else 0.0


def stats_line(stats: dict[str, int], rate: float) -> str:
    """One human line: what the flow did so far, and ``rate`` (events/s lately)."""
    done = events_done(stats)
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
    """Shows :func:`stats_line` until stopped: every second on a terminal, every
    ``interval`` seconds (:data:`PLAIN_EVERY_S`) elsewhere."""

    def __init__(
        self,
        stats: Callable[[], dict[str, int]],
        interval: float | None = None,
        out: TextIO | None = None,
        extra: Callable[[], str] = lambda: "",
    ) -> None:
        super().__init__(daemon=True, name="tetik-progress")
        self._stats = stats
        self._out = out  # None: stderr, as a log record when the log writes JSON
        tty = (out or sys.stderr).isatty()
        self._interval = (1.0 if tty else PLAIN_EVERY_S) if interval is None else interval
        self._extra = extra
        self._done = threading.Event()
        self._line: Line | None = None
        self._rate = Rate()

    def run(self) -> None:
        self._line = Line(self._out, every_s=0.0, refresh_s=0.0)
        while not self._done.wait(self._interval):
            self.show()

    def show(self) -> None:
        try:
            stats = self._stats()
        except redis.RedisError:
            return  # Redis is away; the engine's own lines say so
        line = stats_line(stats, self._rate.read(events_done(stats)))
        if self._line is None:  # never started: a plain last line
            self._line = Line(self._out, every_s=0.0, refresh_s=0.0)
        self._line.update(f"{self._extra()}{line}", force=True)

    def stop(self) -> None:
        self._done.set()
        if self.is_alive():
            self.join()
        self.show()
        if self._line is not None:
            self._line.close()
