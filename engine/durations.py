"""Durations as the rules language and window settings write them: ``30m``, ``400d``.

A duration is a whole number followed by one unit (``s``, ``m``, ``h``, ``d``,
``w``); its value is milliseconds, so durations compare with ``since()`` and
with epoch-ms arithmetic directly.
"""

from __future__ import annotations

import re
from typing import Final

SECOND: Final = 1000
MINUTE: Final = 60 * SECOND
HOUR: Final = 60 * MINUTE
DAY: Final = 24 * HOUR
WEEK: Final = 7 * DAY

UNITS: Final = {"s": SECOND, "m": MINUTE, "h": HOUR, "d": DAY, "w": WEEK}
_DURATION = re.compile(r"^(\d+)([smhdw])\Z")


def parse_duration(text: str) -> int:
    """Return the duration in ms; raise ValueError naming the accepted forms."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(
            f"{text!r} is not a duration; write a whole number and a unit: 30s, 15m, 2h, 7d, 1w"
        )
    return int(match.group(1)) * UNITS[match.group(2)]


def format_duration(ms: int) -> str:
    """The shortest exact form of a duration in ms (``86400000`` -> ``1d``)."""
    for unit, size in sorted(UNITS.items(), key=lambda kv: -kv[1]):
        if ms % size == 0 and ms >= size:
            return f"{ms // size}{unit}"
    return f"{ms // SECOND}s" if ms % SECOND == 0 else f"{ms}ms"
