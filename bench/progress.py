"""A progress bar on stderr for the long benchmark phases.

On a terminal it redraws one line in place; elsewhere (CI logs, pipes) it
prints a line when a phase starts and at each quarter, so logs stay short.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

WIDTH = 24


class Bar:
    """``Bar(label).update(fraction, detail)``; :meth:`close` ends the line."""

    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        self.label = label
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty()
        self._started = time.monotonic()
        self._quarter = -1
        self.update(0.0)

    def update(self, fraction: float, detail: str = "") -> None:
        fraction = min(1.0, max(0.0, fraction))
        filled = int(fraction * WIDTH)
        elapsed = time.monotonic() - self._started
        line = (
            f"tetik: {self.label} [{'#' * filled}{'.' * (WIDTH - filled)}] "
            f"{fraction:4.0%} {elapsed:5.1f}s {detail}"
        )
        if self._tty:
            self._stream.write("\r\x1b[K" + line)
        elif int(fraction * 4) > self._quarter:
            self._quarter = int(fraction * 4)
            self._stream.write(line + "\n")
        self._stream.flush()

    def close(self, detail: str = "") -> None:
        self._quarter = -1  # always print the last state
        self.update(1.0, detail)
        if self._tty:
            self._stream.write("\n")
            self._stream.flush()
