"""Shoppers' time zones chosen by the local hour they should be at now.

Rules of this interface:

* :data:`ZONES` are real IANA zones, at least one for every whole hour of
  UTC offset from -11 to +14 in winter and in summer (daylight saving as
  zoneinfo has it), each with a mobile phone prefix of its country for the
  generator's profiles.
* :func:`zones_at` picks those whose local time at ``now_ms`` is within
  :data:`NEAR_MIN` minutes of a wall-clock time (``HH:MM``), closest first;
  some zone is always within 30 minutes of any time of day, so the result
  is never empty. ``tetik demo --at`` uses it so its shoppers' local time,
  which decides quiet hours, is the same whatever the hour it runs at.
* :func:`parse_clock` reads ``HH:MM`` (24-hour) into minutes of the day, or
  raises ValueError saying what to write.
"""

from __future__ import annotations

import re
import zoneinfo
from datetime import UTC, datetime
from typing import Final

Zone = tuple[str, str, float]  # zone, phone prefix, share (clickstream.generator.TIMEZONES)

ZONES: Final[tuple[tuple[str, str], ...]] = (
    ("Pacific/Pago_Pago", "+1684"),
    ("Pacific/Honolulu", "+1808"),
    ("Pacific/Gambier", "+68987"),
    ("America/Anchorage", "+1907"),
    ("America/Los_Angeles", "+1213"),
    ("America/Denver", "+1303"),
    ("America/Chicago", "+1312"),
    ("America/New_York", "+1212"),
    ("America/Halifax", "+1902"),
    ("America/Sao_Paulo", "+5511"),
    ("Atlantic/South_Georgia", "+500"),
    ("Atlantic/Cape_Verde", "+2389"),
    ("Atlantic/Azores", "+35191"),
    ("Europe/London", "+447"),
    ("Europe/Berlin", "+4915"),
    ("Europe/Athens", "+3069"),
    ("Europe/Istanbul", "+905"),
    ("Asia/Dubai", "+97150"),
    ("Asia/Karachi", "+9230"),
    ("Asia/Kolkata", "+9198"),
    ("Asia/Dhaka", "+8801"),
    ("Asia/Bangkok", "+668"),
    ("Asia/Singapore", "+659"),
    ("Asia/Tokyo", "+8190"),
    ("Australia/Brisbane", "+614"),
    ("Pacific/Noumea", "+687"),
    ("Pacific/Fiji", "+6797"),
    ("Pacific/Auckland", "+642"),
    ("Pacific/Tongatapu", "+676"),
    ("Pacific/Kiritimati", "+686"),
)
NEAR_MIN: Final = 90
_DAY_MIN: Final = 24 * 60
_CLOCK = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)\Z")


def parse_clock(text: str) -> int:
    """``HH:MM`` as minutes of the day."""
    match = _CLOCK.match(text.strip())
    if not match:
        raise ValueError(f"--at {text!r} is not a time of day; write HH:MM, e.g. 12:00 or 23:30")
    return int(match[1]) * 60 + int(match[2])


def local_minute(zone: str, now_ms: int) -> int:
    """The minute of the day in ``zone`` at ``now_ms``."""
    moment = datetime.fromtimestamp(now_ms / 1000, UTC).astimezone(zoneinfo.ZoneInfo(zone))
    return moment.hour * 60 + moment.minute


def _apart(a: int, b: int) -> int:
    gap = abs(a - b) % _DAY_MIN
    return min(gap, _DAY_MIN - gap)


def zones_at(minute: int, now_ms: int) -> list[Zone]:
    """The zones whose local time at ``now_ms`` is near ``minute``, closest first,
    with equal shares."""
    by_gap = sorted((_apart(local_minute(z, now_ms), minute), z, p) for z, p in ZONES)
    near = [(zone, prefix) for gap, zone, prefix in by_gap if gap <= NEAR_MIN]
    near = near or [(by_gap[0][1], by_gap[0][2])]
    return [(zone, prefix, 1.0 / len(near)) for zone, prefix in near]
