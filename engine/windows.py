"""Per-type event windows: bounded, time-ordered lists of stored events.

Rules of this interface:

* A window holds :class:`Stored` records of one event type, ordered by ``ts``
  (ties keep arrival order).
* A window never holds more than its limit's ``max_count`` records after
  :func:`insert`, and :func:`evict_older` drops records older than
  ``now - max_age_ms``; together they bound a user's state.
* Window functions of the rules language (``count``, ``sum``, ``last``...)
  read ranges with :func:`since_index`, so a query is a bisect, not a scan.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Mapping
from typing import Any, Final

import msgspec

from engine.durations import DAY, parse_duration
from engine.errors import ConfigError
from engine.events import Event, Item


class Stored(msgspec.Struct, array_like=True, omit_defaults=True, frozen=True, gc=False):
    """The fields of one event that window functions read, stored compactly.

    ``h`` is a 64-bit hash of the ``event_id``: it detects duplicates at a
    fraction of the id's size (a false match needs a 2**-64 collision).
    """

    ts: int
    h: int
    product_id: str | None = None
    category: str | None = None
    price: float | None = None
    quantity: int | None = None
    query: str | None = None
    order_id: str | None = None
    revenue: float | None = None
    items: tuple[Item, ...] | None = None
    channel: str | None = None
    granted: bool | None = None
    kind: str | None = None
    action_id: str | None = None
    props: dict[str, Any] | None = None
    # price_drop / back_in_stock (SPEC section 10)
    old_price: float | None = None
    drop_pct: float | None = None
    via: str | None = None


class WindowLimits(msgspec.Struct, frozen=True, kw_only=True):
    """How much of one event type a user's state keeps."""

    max_count: int = 1000
    max_age_ms: int = 30 * DAY


def _default_types() -> dict[str, WindowLimits]:
    return {"purchase": WindowLimits(max_age_ms=400 * DAY)}


class WindowConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Bounds of every part of a user's state (SPEC section 1 defaults)."""

    default: WindowLimits = WindowLimits()
    types: dict[str, WindowLimits] = msgspec.field(default_factory=_default_types)
    cart_max_lines: int = 200
    cart_max_age_ms: int = 30 * DAY
    favorites_max: int = 500
    favorites_max_age_ms: int = 400 * DAY
    profile_max_keys: int = 100
    # Distinct custom (non-standard) event types per user; past it the type whose
    # newest record is oldest is dropped whole (engine.state counts it).
    custom_types_max: int = 50
    # The rules' time zone: calendar months of the long history (engine.history).
    # The engine sets it from the rules; it is not a TETIK_WINDOWS setting.
    timezone: str = "UTC"

    def limits(self, event_type: str) -> WindowLimits:
        """The limits for one event type (its override, else the default)."""
        return self.types.get(event_type, self.default)


DEFAULT_CONFIG: Final = WindowConfig()


def with_timezone(config: WindowConfig, timezone: str) -> WindowConfig:
    """``config`` with the rules' time zone (itself when it already has it)."""
    if config.timezone == timezone:
        return config
    return msgspec.structs.replace(config, timezone=timezone)


def event_hash(event_id: str) -> int:
    """Stable 64-bit hash of an event id (the same in every process)."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "little")


def stored(event: Event, h: int, revenue: float | None) -> Stored:
    """The stored form of an event (``revenue`` already defaulted for purchases)."""
    return Stored(
        ts=event.ts,
        h=h,
        product_id=event.product_id,
        category=event.category,
        price=event.price,
        quantity=event.quantity,
        query=event.query,
        order_id=event.order_id,
        revenue=revenue,
        items=event.items,
        channel=event.channel,
        granted=event.granted,
        kind=event.kind,
        action_id=event.action_id,
        props=event.props,
        old_price=event.old_price,
        drop_pct=event.drop_pct,
        via=event.via,
    )


def _ts(record: Stored) -> int:
    return record.ts


def insert(window: list[Stored], record: Stored, limits: WindowLimits) -> list[Stored]:
    """Insert in ts order; return the records dropped to respect ``max_count``."""
    if not window or window[-1].ts <= record.ts:
        window.append(record)  # the common case: events arrive in time order
    else:
        bisect.insort_right(window, record, key=_ts)
    excess = len(window) - limits.max_count
    if excess <= 0:
        return []
    dropped = window[:excess]
    del window[:excess]
    return dropped


def since_index(window: list[Stored], cutoff: int) -> int:
    """Index of the first record with ``ts >= cutoff``."""
    return bisect.bisect_left(window, cutoff, key=_ts)


def evict_older(window: list[Stored], cutoff: int) -> list[Stored]:
    """Drop and return the records with ``ts < cutoff``."""
    if not window or window[0].ts >= cutoff:
        return []
    index = since_index(window, cutoff)
    dropped = window[:index]
    del window[:index]
    return dropped


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _limits_from(raw: Any, base: WindowLimits, where: str) -> WindowLimits:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected an object like {{max_count: 1000, max_age: 30d}}")
    unknown = set(raw) - {"max_count", "max_age"}
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {sorted(unknown)}; use max_count, max_age")
    count = raw.get("max_count", base.max_count)
    if not _positive_int(count):
        raise ConfigError(f"{where}.max_count: {count!r} is not a whole number >= 1")
    age = base.max_age_ms
    if "max_age" in raw:
        try:
            age = parse_duration(str(raw["max_age"]))
        except ValueError as exc:
            raise ConfigError(f"{where}.max_age: {exc}") from None
    return WindowLimits(max_count=count, max_age_ms=age)


def config_from_mapping(raw: Mapping[str, Any]) -> WindowConfig:
    """Build a WindowConfig from user settings such as the TETIK_WINDOWS JSON.

    Accepted keys: ``default`` and ``types.<event type>`` (each with
    ``max_count`` / ``max_age``), ``cart``, ``favorites`` (same keys),
    ``profile_max_keys`` and ``custom_types_max``. Omitted settings keep their
    defaults.
    """
    known = {"default", "types", "cart", "favorites", "profile_max_keys", "custom_types_max"}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"windows: unknown setting(s) {sorted(unknown)}")
    default = _limits_from(raw.get("default", {}), DEFAULT_CONFIG.default, "windows.default")
    types = dict(DEFAULT_CONFIG.types)
    overrides = raw.get("types", {})
    if not isinstance(overrides, Mapping):
        raise ConfigError("windows.types: expected an object of event type -> limits")
    for name, limits in overrides.items():
        types[name] = _limits_from(limits, types.get(name, default), f"windows.types.{name}")
    cart = _limits_from(
        raw.get("cart", {}),
        WindowLimits(
            max_count=DEFAULT_CONFIG.cart_max_lines, max_age_ms=DEFAULT_CONFIG.cart_max_age_ms
        ),
        "windows.cart",
    )
    favorites = _limits_from(
        raw.get("favorites", {}),
        WindowLimits(
            max_count=DEFAULT_CONFIG.favorites_max, max_age_ms=DEFAULT_CONFIG.favorites_max_age_ms
        ),
        "windows.favorites",
    )
    return WindowConfig(
        default=default,
        types=types,
        cart_max_lines=cart.max_count,
        cart_max_age_ms=cart.max_age_ms,
        favorites_max=favorites.max_count,
        favorites_max_age_ms=favorites.max_age_ms,
        profile_max_keys=_whole(raw, "profile_max_keys", DEFAULT_CONFIG.profile_max_keys),
        custom_types_max=_whole(raw, "custom_types_max", DEFAULT_CONFIG.custom_types_max),
    )


def _whole(raw: Mapping[str, Any], name: str, default: int) -> int:
    value = raw.get(name, default)
    if not _positive_int(value):
        raise ConfigError(f"windows.{name}: {value!r} is not a whole number >= 1")
    return int(value)
