"""The checks a ``send`` passes, in SPEC order: quiet hours, consent, caps.

Rules of this interface:

* Pure functions of the rules, the user's state and the clock (epoch ms).
* Quiet hours are a half-open local-time window ``[start, end)`` in the
  user's zone (``profile.timezone``, else the rules' zone); a window whose
  end is before its start spans midnight. Daylight saving is zoneinfo's.
* Consent: the user's latest decision for the channel wins; without one, the
  rules' default (``opt_out``: allowed; ``opt_in``, and unlisted channels:
  not allowed until granted).
* Caps are rolling windows ``(now - per, now]`` over *sent* actions.
"""

from __future__ import annotations

import functools
import zoneinfo
from datetime import UTC, datetime, timedelta

from engine.rules.model import Cap, QuietHours, Rules
from engine.state import Sent, UserState


@functools.lru_cache(maxsize=512)
def zone(name: str) -> zoneinfo.ZoneInfo:
    """A cached ZoneInfo (the loader and the contract validated the name)."""
    return zoneinfo.ZoneInfo(name)


def user_zone(state: UserState, rules: Rules) -> zoneinfo.ZoneInfo:
    """The user's time zone: profile ``timezone``, else the rules' default."""
    name = state.profile.get("timezone")
    if isinstance(name, str):
        try:
            return zone(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            pass  # validated at ingest; an old state may still hold a bad one
    return zone(rules.timezone)


def _local(now: int, tz: zoneinfo.ZoneInfo) -> datetime:
    return datetime.fromtimestamp(now / 1000, UTC).astimezone(tz)


def _inside(minute: int, quiet: QuietHours) -> bool:
    if quiet.start < quiet.end:
        return quiet.start <= minute < quiet.end
    return minute >= quiet.start or minute < quiet.end


def quiet_until(quiet: QuietHours | None, tz: zoneinfo.ZoneInfo, now: int) -> int | None:
    """The end of the quiet hours ``now`` falls in (epoch ms), or None if outside."""
    if quiet is None:
        return None
    local = _local(now, tz)
    if not _inside(local.hour * 60 + local.minute, quiet):
        return None
    end = local.replace(hour=quiet.end // 60, minute=quiet.end % 60, second=0, microsecond=0)
    if end <= local:
        end = (end.replace(tzinfo=None) + timedelta(days=1)).replace(tzinfo=tz)
    # A wall time inside a spring-forward gap maps past the gap, still outside the window.
    return int(end.timestamp() * 1000)


def consented(state: UserState, rules: Rules, channel: str) -> bool:
    """Whether the user may be contacted on ``channel`` now."""
    decision = state.consent.get(channel)
    if decision is not None:
        return decision.granted
    return rules.consent.get(channel, "opt_in") == "opt_out"


def first_allowed(state: UserState, rules: Rules, channels: tuple[str, ...]) -> str | None:
    """The first channel, in order, the user consented to; None if none."""
    for channel in channels:
        if consented(state, rules, channel):
            return channel
    return None


def capped(sends: list[Sent], caps: tuple[Cap, ...], channel: str, now: int) -> bool:
    """True when a cap of ``channel`` or of ``any`` is full at ``now``."""
    for cap in caps:
        if cap.channel not in ("any", channel):
            continue
        cutoff = now - cap.per_ms
        used = sum(1 for s in sends if s.ts > cutoff and cap.channel in ("any", s.channel))
        if used >= cap.max:
            return True
    return False


def record_send(state: UserState, rules: Rules, channel: str, now: int) -> None:
    """Remember a sent action for caps, forgetting what no cap can see any more."""
    if not rules.caps:
        return
    horizon = now - max(cap.per_ms for cap in rules.caps)
    state.sends = [s for s in state.sends if s.ts > horizon]
    state.sends.append(Sent(now, channel))
