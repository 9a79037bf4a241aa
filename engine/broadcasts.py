"""Broadcasts (SPEC section 9): ``trigger: {schedule: T, segment: S, local: true|false}``.

Rules of this interface:

* A broadcast's instant for a user is its wall time ``T`` in the rules'
  ``timezone`` (``local: false``) or in the user's own zone
  (``profile.timezone``, else the rules' zone; ``local: true``), read when the
  engine reaches that user. A wall time that daylight saving skips or repeats
  is taken as zoneinfo does with ``fold=0`` (the earlier reading).
* :meth:`Broadcasts.due` names the broadcasts whose instant lies in (the
  user's clock, until]: :meth:`engine.journeys.Engine.advance` runs each at its
  instant, like a timer, so replay fires it and a live sweep that advances
  idle shoppers fires it too. At the instant, the user is enrolled once when
  known (at least one applied event) and a member of ``S`` evaluated at that
  instant (without ``segment``: every known user), when the journey's
  ``audience`` holds. The enrollment's key is the schedule text, so its
  re-entry history remembers it: a crash halfway through a broadcast, a
  state saved and loaded, or a second pass cannot send it twice; a new
  schedule for the same journey is another broadcast.
* A user first seen after the instant is not enrolled (their clock starts at
  their first event), and neither is anyone whose instant is before the
  engine's ``activated_at`` (the moment a live engine switched to the rules
  version: a broadcast already past when its rules were pushed is not sent
  late to the shoppers the engine meets afterwards). Replay has no
  ``activated_at``: a backtest fires every broadcast its log spans.
* :func:`passed` lists the broadcasts whose time has passed at a moment, as
  warnings for ``tetik rules validate``.
"""

from __future__ import annotations

import functools
import zoneinfo
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from engine.policies import user_zone, zone
from engine.rules.model import Journey, Rules, Schedule
from engine.segments import user_clock
from engine.state import UserState

if TYPE_CHECKING:
    from collections.abc import Sequence

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


@functools.lru_cache(maxsize=4096)
def instant(wall: datetime, tz: zoneinfo.ZoneInfo) -> int:
    """Epoch ms of a naive wall time in ``tz``."""
    return (wall.replace(tzinfo=tz) - _EPOCH) // _MS


class Broadcasts:
    """The broadcast journeys of one rules version, in file order."""

    def __init__(self, rules: Rules, activated_at: int | None = None) -> None:
        self.rules = rules
        self.journeys: tuple[Journey, ...] = tuple(
            j for j in rules.journeys if j.trigger.schedule is not None
        )
        self.activated_at = activated_at
        home = zone(rules.timezone)
        self.fixed: dict[str, int] = {
            j.id: instant(_schedule(j).wall, home) for j in self.journeys if not _schedule(j).local
        }

    def instant_for(self, journey: Journey, state: UserState) -> int:
        """When ``journey`` broadcasts to this user (epoch ms)."""
        fixed = self.fixed.get(journey.id)
        if fixed is not None:
            return fixed
        return instant(_schedule(journey).wall, user_zone(state, self.rules))

    def due(self, state: UserState, until: int) -> tuple[int, list[Journey]] | None:
        """The earliest broadcast instant in (user clock, until] and its journeys."""
        clock = user_clock(state)
        best: int | None = None
        found: list[Journey] = []
        for journey in self.journeys:
            when = self.instant_for(journey, state)
            if not clock < when <= until:
                continue
            if self.activated_at is not None and when < self.activated_at:
                continue
            if best is None or when < best:
                best, found = when, [journey]
            elif when == best:
                found.append(journey)
        return None if best is None else (best, found)


def _schedule(journey: Journey) -> Schedule:
    schedule = journey.trigger.schedule
    assert schedule is not None  # only broadcast journeys are kept
    return schedule


def passed(rules: Rules, now: int, filename: str) -> Sequence[str]:
    """``FILE:LINE:COL: warning: ...`` for each broadcast whose time is before ``now``
    (in the rules' zone; a local one once it has passed in the first zone, UTC+14)."""
    warnings = []
    for journey in rules.journeys:
        schedule = journey.trigger.schedule
        if schedule is None:
            continue
        # UTC+14 is the first place on earth where a local wall time comes round.
        tz = zoneinfo.ZoneInfo("Pacific/Kiritimati") if schedule.local else zone(rules.timezone)
        if instant(schedule.wall, tz) >= now:
            continue
        where = " in the first time zones" if schedule.local else ""
        warnings.append(
            f"{filename}:{schedule.line + 1}:{schedule.column + 1}: warning: journey "
            f"{journey.id}: schedule {schedule.text} has passed{where}; a live engine does not "
            "send a broadcast whose time came before its rules were pushed (a backtest over a "
            "log that spans it still fires it)"
        )
    return warnings
