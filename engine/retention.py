"""Retention: the one rule that decides what a user's state keeps at clock ``now``.

Rules of this interface:

* :func:`kept_from` is the oldest ``ts`` a window of one event type keeps at
  ``now``: ``now - max_age`` of that type (:class:`~engine.windows.WindowConfig`;
  :func:`limits_kept_from` is the same from the type's limits already looked up).
  :func:`cart_kept_from` and :func:`favorites_kept_from` say the same for cart
  lines (by their latest change) and favorites; :func:`kept_cart` and
  :func:`kept_favorites` are what counts of them at ``now``. Everything that
  drops or reads by age uses them:
  :func:`engine.state.apply` (an older event is ``stale``),
  :func:`engine.state.prune` (drops what is older, to save memory) and every
  read of the rules language (a record, cart line or favorite older than the
  cutoff is ignored, pruned or not). So an answer never depends on whether
  or when :func:`~engine.state.prune` ran: live prunes after each batch,
  replay once a day of virtual time per user, and both read the same.
* That holds because a user's evaluations run at non-decreasing times (due
  timers fire before an event is applied; a wait or deferral is due after the
  step that set it), and ``prune`` runs at the latest of them: it only drops
  what every later read ignores anyway.
* :func:`check_not_stale` refuses, before it reaches a state, an event that
  :func:`engine.state.apply` would call ``stale`` for its age at clock
  ``now`` (older than its type's ``max_age``), with a one-line reason: live,
  the decode step dead-letters it at the clock the watermark would stamp it
  with; ``tetik replay`` reports it as a bad line at its virtual clock. A
  ``product_update`` is the catalog's, not a shopper's, and is not checked.
* :func:`state_ttl_ms` is how long an idle shopper's state is kept live (the
  Redis TTL): its longest age limit, and at least its long history.
* :func:`covered_from` is where a window's record of the past starts at
  ``now``: its retention cutoff, or, for a window full to ``max_count``, its
  oldest record when that is newer (older records may have been evicted by
  count; just after it, since a record of the same ``ts`` may have gone). It
  is the same whether or not the window was pruned. Reads of a
  range that starts earlier take the older part from the monthly buckets of
  :mod:`engine.history`.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

from engine.durations import format_duration
from engine.errors import InvalidEvent
from engine.events import PRODUCT_UPDATE, Event
from engine.history import RETENTION_MS
from engine.windows import Stored, WindowConfig, WindowLimits


class _Dated(Protocol):
    @property
    def ts(self) -> int: ...


Line = TypeVar("Line", bound=_Dated)


def kept_from(config: WindowConfig, event_type: str, now: int) -> int:
    """The oldest ``ts`` a window of ``event_type`` keeps at ``now`` (epoch ms)."""
    return limits_kept_from(config.limits(event_type), now)


def limits_kept_from(limits: WindowLimits, now: int) -> int:
    """:func:`kept_from` for a caller that already holds the type's limits."""
    return now - limits.max_age_ms


def check_not_stale(event: Event, now: int, config: WindowConfig) -> None:
    """Raise InvalidEvent when ``event`` is older than its type's ``max_age`` at ``now``."""
    if event.type == PRODUCT_UPDATE:
        return
    max_age = config.limits(event.type).max_age_ms
    if event.ts >= now - max_age:
        return
    behind_d = (now - event.ts) / 86_400_000
    raise InvalidEvent(
        f"ts {event.ts} is {behind_d:,.1f} days before the engine's clock ({now}); "
        f"{event.type} events older than {format_duration(max_age)} are refused as stale "
        "(restamp the log with `tetik produce --restamp`, or raise max_age in TETIK_WINDOWS)"
    )


def cart_kept_from(config: WindowConfig, now: int) -> int:
    """The oldest ``ts`` a cart line may have (its latest change) and still count."""
    return now - config.cart_max_age_ms


def favorites_kept_from(config: WindowConfig, now: int) -> int:
    """The oldest ``ts`` a favorite may have and still count."""
    return now - config.favorites_max_age_ms


def kept_cart(cart: dict[str, Line], config: WindowConfig, now: int) -> dict[str, Line]:
    """The cart lines that count at ``now`` (``cart`` itself when all of them do)."""
    cutoff = cart_kept_from(config, now)
    for line in cart.values():
        if line.ts < cutoff:
            return {pid: line for pid, line in cart.items() if line.ts >= cutoff}
    return cart


def kept_favorites(favorites: dict[str, int], config: WindowConfig, now: int) -> dict[str, int]:
    """The favorites that count at ``now`` (``favorites`` itself when all of them do)."""
    cutoff = favorites_kept_from(config, now)
    for ts in favorites.values():
        if ts < cutoff:
            return {pid: ts for pid, ts in favorites.items() if ts >= cutoff}
    return favorites


def covered_from(
    window: list[Stored] | None, config: WindowConfig, event_type: str, now: int
) -> int:
    """From when ``window`` holds every event of its type it was given (see module rules)."""
    limits = config.limits(event_type)
    start = now - limits.max_age_ms
    if window and len(window) >= limits.max_count and window[0].ts >= start:
        return window[0].ts + 1  # records at window[0].ts itself may have been evicted
    return start


def state_ttl_ms(windows: WindowConfig) -> int:
    """How long an idle shopper's state is worth keeping: its longest age limit, and at
    least its long history (:data:`engine.history.RETENTION_MS`, six years of months):
    replay never forgets a shopper, so live must not either while the history counts."""
    ages = [windows.default.max_age_ms, windows.cart_max_age_ms, windows.favorites_max_age_ms]
    ages.extend(limits.max_age_ms for limits in windows.types.values())
    return max(*ages, RETENTION_MS)
