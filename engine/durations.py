"""Durations as the rules language and window settings write them: ``30m``, ``400d``.

A duration is a whole number followed by one unit (``ms``, ``s``, ``m``,
``h``, ``d``, ``w``); its value is milliseconds, so durations compare with
``since()`` and with epoch-ms arithmetic directly. ``ms`` is accepted
everywhere a duration is (waits, caps, windows, expressions, channel options)
so one spelling means one thing in rules and channel config alike: a retry
delay of ``500ms`` is sensible and a wait of ``500ms`` is harmless.

Every duration is at most :data:`MAX_DURATION_MS`, 10 years counted as 3650
days (``3650d``, ``521w``): :func:`parse_duration` refuses a longer one, and
:func:`check_duration` applies the same bound to a value parsed elsewhere
(the expression lexer). Timers, windows and the action ledger's Redis expiry
(the longest journey plus a day) all stay far inside what ``datetime`` and
Redis accept, whatever a rules file says.
"""

from __future__ import annotations

import re
from typing import Final

SECOND: Final = 1000
MINUTE: Final = 60 * SECOND
HOUR: Final = 60 * MINUTE
DAY: Final = 24 * HOUR
WEEK: Final = 7 * DAY
MAX_DURATION_MS: Final = 3650 * DAY  # 10 years: the bound of every duration

UNITS: Final = {"ms": 1, "s": SECOND, "m": MINUTE, "h": HOUR, "d": DAY, "w": WEEK}
_DURATION = re.compile(r"^(\d{1,20})(ms|[smhdw])\Z")
_LONG = re.compile(r"^\d{21,}(?:ms|[smhdw])\Z")


def parse_duration(text: str) -> int:
    """Return the duration in ms; raise ValueError naming the accepted forms or the bound."""
    stripped = text.strip()
    match = _DURATION.match(stripped)
    if not match:
        if _LONG.match(stripped):
            raise ValueError(_too_long(stripped))
        raise ValueError(
            f"{text!r} is not a duration; write a whole number and a unit: "
            "30s, 15m, 2h, 7d, 1w, 500ms"
        )
    ms = int(match.group(1)) * UNITS[match.group(2)]
    check_duration(ms, stripped)
    return ms


def check_duration(ms: int, text: str) -> None:
    """Raise ValueError when ``ms`` (written ``text``) is over :data:`MAX_DURATION_MS`."""
    if ms > MAX_DURATION_MS:
        raise ValueError(_too_long(text))


def _too_long(text: str) -> str:
    limit = format_duration(MAX_DURATION_MS)
    if len(text) > 24:
        text = f"{text[:20]}...{text[-1]}"
    return f"{text!r} is longer than the limit of {limit} (10 years); write at most {limit}"


def format_duration(ms: int) -> str:
    """The shortest exact form of a duration in ms (``86400000`` -> ``1d``)."""
    for unit, size in sorted(UNITS.items(), key=lambda kv: -kv[1]):
        if ms % size == 0 and ms >= size:
            return f"{ms // size}{unit}"
    return f"{ms // SECOND}s" if ms % SECOND == 0 else f"{ms}ms"
