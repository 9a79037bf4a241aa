"""Long history: all-time rollups per event type and calendar-month buckets (SPEC section 8).

Rules of this interface:

* ``UserState.rollups`` maps an event type to a :class:`TypeRollup`: how many
  events of that type were applied (all time), the ``ts`` of the first and
  the last, for ``purchase`` the sum of ``revenue``, and one row per calendar
  month. :func:`record` adds one applied event; nothing else changes a rollup,
  so it is a pure function of the events applied, whether or not the windows
  were pruned.
* Months are those of the rules' ``timezone`` (``WindowConfig.timezone``, set
  by the engine from the rules). A month is an index, months since 1970-01
  (:func:`month_of`); its start comes from a table per time zone, so a month
  costs a bisection per event (none for another event of the last month
  looked up), not a datetime. Months already recorded keep their index when
  the rules' zone changes: only events after the change follow the new zone.
* A month row is a list of ints: ``[offset, count]``, where ``offset`` is the
  month index minus the rollup's ``base``. For :data:`DETAILED_TYPES`
  (``purchase``) it goes on ``[offset, count, cents, (cat, count, cents)...]``:
  the month's revenue in cents, then per category (an index into the rollup's
  ``cats`` table) its count and revenue. Revenue is kept to the cent in months
  and exactly (float, rounded to 9 decimals) in the all-time sum.
* Bounds: months older than :data:`KEEP_MONTHS` (72, six years) before the
  newest month of the rollup are dropped when a newer month is added, and
  reads ignore months older than that before ``now``; at most
  :data:`CATS_PER_MONTH` (8) categories per month and :data:`CATS_MAX` (32)
  in a rollup's table, each at most :data:`CATEGORY_MAX_CHARS` (128) long:
  an event past those bounds counts in the month's total only, as if it had no
  category. Custom event types are bounded like the windows': past
  ``custom_types_max`` the custom type last seen longest ago is dropped.
* :func:`merge_rollups` adds another identity's rollups (counts and months
  add, first is the minimum, last the maximum), for identity stitching. It
  cannot tell an event counted on both sides: the caller merges each
  identity once (the identity merge remembers the ids it merged).
* :func:`backfill` builds rollups from the windows of a state written before
  rollups existed (its first event after the upgrade, or its first timer).
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Final
from zoneinfo import ZoneInfo

import msgspec

from engine.events import STANDARD_TYPES
from engine.windows import DEFAULT_CONFIG, Stored, WindowConfig

DETAILED_TYPES: Final = frozenset({"purchase"})
KEEP_MONTHS: Final = 72
CATS_PER_MONTH: Final = 8
CATS_MAX: Final = 32
CATEGORY_MAX_CHARS: Final = 128
CENTS_MAX: Final = 2**53  # one event's revenue in cents is clamped to it (sums to twice it)
LAST_MONTH: Final = (2100 - 1970) * 12  # 2100-01: events are dated before 2100 (engine.events)
# How long a shopper's state is worth keeping for its history (live state TTL).
RETENTION_MS: Final = (KEEP_MONTHS + 1) * 31 * 86_400_000

_OFF, _N, _CENTS, _DETAIL = 0, 1, 2, 3  # row layout; category triples start at _DETAIL


class TypeRollup(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    """All-time figures of one event type for one user (see the module rules)."""

    n: int = 0
    first: int = 0
    last: int = 0
    base: int = 0  # month index of offset 0
    months: list[list[int]] = []
    rev: float = 0.0  # all-time revenue (purchase)
    cats: list[str] = []  # category table of the months' detail (purchase)


# -- months ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def month_starts(timezone: str) -> tuple[int, ...]:
    """Epoch ms of the start of every month 1970-01 .. 2100-01 in ``timezone``."""
    zone = ZoneInfo(timezone)
    return tuple(
        int(datetime(1970 + i // 12, i % 12 + 1, 1, tzinfo=zone).timestamp() * 1000)
        for i in range(LAST_MONTH + 1)
    )


_LAST_HIT: dict[str, tuple[int, int, int]] = {}  # zone -> (start, end, index) last looked up


def month_of(ts: int, timezone: str) -> int:
    """The index (months since 1970-01) of the month holding ``ts`` in ``timezone``."""
    hit = _LAST_HIT.get(timezone)
    if hit is not None and hit[0] <= ts < hit[1]:
        return hit[2]  # the common case: the month of the previous event
    starts = month_starts(timezone)
    index = min(max(bisect.bisect_right(starts, ts) - 1, 0), LAST_MONTH)
    if 0 < index < LAST_MONTH:
        _LAST_HIT[timezone] = (starts[index], starts[index + 1], index)
    return index


def month_at_or_after(ts: int, timezone: str) -> int:
    """The first month (index) that starts at or after ``ts``."""
    return bisect.bisect_left(month_starts(timezone), ts)


def month_start(index: int, timezone: str) -> int:
    """Epoch ms of the start of month ``index`` in ``timezone``."""
    starts = month_starts(timezone)
    return starts[min(max(index, 0), LAST_MONTH)]


def month_label(index: int) -> str:
    """``YYYY-MM`` of a month index."""
    return f"{1970 + index // 12:04d}-{index % 12 + 1:02d}"


# -- recording ------------------------------------------------------------------------


def record(
    rollups: dict[str, TypeRollup],
    event_type: str,
    ts: int,
    category: str | None,
    revenue: float | None,
    config: WindowConfig,
) -> None:
    """Add one applied event to the rollup of its type."""
    roll = rollups.get(event_type)
    if roll is not None and event_type not in DETAILED_TYPES:
        hit = _LAST_HIT.get(config.timezone)
        months = roll.months
        if hit is not None and hit[0] <= ts < hit[1] and months:
            newest = months[-1]
            if roll.base + newest[_OFF] == hit[2]:  # the common case: the latest month again
                roll.n += 1
                if ts > roll.last:
                    roll.last = ts
                if ts < roll.first:
                    roll.first = ts
                newest[_N] += 1
                return
    if roll is None:
        if event_type not in STANDARD_TYPES:
            _make_room(rollups, config.custom_types_max)
        roll = rollups[event_type] = TypeRollup(first=ts, last=ts)
    roll.n += 1
    if ts > roll.last:
        roll.last = ts
    if ts < roll.first:
        roll.first = ts
    zone = config.timezone
    hit = _LAST_HIT.get(zone)
    month = hit[2] if hit is not None and hit[0] <= ts < hit[1] else month_of(ts, zone)
    if event_type in DETAILED_TYPES:
        if revenue:
            roll.rev = round(roll.rev + revenue, 9)
        _add(roll, month, 1, _cents(revenue) if revenue else 0, category, True)
        return
    months = roll.months
    if months and roll.base + months[-1][_OFF] == month:
        months[-1][_N] += 1  # the common case: another event of the latest month
    else:
        _add(roll, month, 1, 0, None, False)


def _cents(revenue: float) -> int:
    """Revenue in cents, bounded so that sums stay within msgpack's 64-bit integers."""
    return round(min(max(revenue * 100, -CENTS_MAX), CENTS_MAX))


def _bounded(total: int) -> int:
    return min(max(total, -2 * CENTS_MAX), 2 * CENTS_MAX)


def _add(
    roll: TypeRollup, month: int, n: int, cents: int, category: str | None, detailed: bool
) -> None:
    """Add ``n`` events (``cents`` of revenue) of one category to a month row."""
    row = _row(roll, month, detailed)
    if row is None:
        return
    row[_N] += n
    if not detailed:
        return
    row[_CENTS] = _bounded(row[_CENTS] + cents)
    if category is None:
        return
    cat = _category_index(roll, category)
    if cat is None:
        return
    for at in range(_DETAIL, len(row), 3):
        if row[at] == cat:
            row[at + 1] += n
            row[at + 2] = _bounded(row[at + 2] + cents)
            return
    if (len(row) - _DETAIL) // 3 < CATS_PER_MONTH:
        row.extend((cat, n, cents))


def _row(roll: TypeRollup, month: int, detailed: bool) -> list[int] | None:
    """The row of ``month``, made if needed; None when it is too old to keep."""
    months = roll.months
    fresh = [0, 0, 0] if detailed else [0, 0]
    if not months:
        roll.base = month
        months.append(fresh)
        return fresh
    newest = roll.base + months[-1][_OFF]
    if month == newest:
        return months[-1]  # the common case: events arrive in time order
    if month > newest:
        fresh[_OFF] = month - roll.base
        months.append(fresh)
        _drop_old(roll, month - KEEP_MONTHS)
        return fresh
    if month < newest - KEEP_MONTHS:
        return None
    offset = month - roll.base
    if offset < 0:  # older than every row: rebase so that offsets stay >= 0
        for row in months:
            row[_OFF] -= offset
        roll.base = month
        offset = 0
    at = bisect.bisect_left(months, offset, key=lambda row: row[_OFF])
    if at < len(months) and months[at][_OFF] == offset:
        return months[at]
    fresh[_OFF] = offset
    months.insert(at, fresh)
    return fresh


def _drop_old(roll: TypeRollup, oldest: int) -> None:
    """Drop months before ``oldest``; rebase offsets; forget unused categories."""
    months = roll.months
    keep = 0
    while keep < len(months) and roll.base + months[keep][_OFF] < oldest:
        keep += 1
    if keep == 0:
        return
    del months[:keep]
    shift = months[0][_OFF]
    roll.base += shift
    for row in months:
        row[_OFF] -= shift
    if roll.cats:
        _compact_categories(roll)


def _compact_categories(roll: TypeRollup) -> None:
    used = sorted({row[at] for row in roll.months for at in range(_DETAIL, len(row), 3)})
    if len(used) == len(roll.cats):
        return
    renumber = {old: new for new, old in enumerate(used)}
    roll.cats = [roll.cats[old] for old in used]
    for row in roll.months:
        for at in range(_DETAIL, len(row), 3):
            row[at] = renumber[row[at]]


def _category_index(roll: TypeRollup, category: str) -> int | None:
    try:
        return roll.cats.index(category)
    except ValueError:
        pass
    if len(roll.cats) >= CATS_MAX or len(category) > CATEGORY_MAX_CHARS:
        return None
    roll.cats.append(category)
    return len(roll.cats) - 1


def _make_room(rollups: dict[str, TypeRollup], limit: int) -> None:
    """Drop the custom types last seen longest ago until a new one fits under ``limit``."""
    custom = [name for name in rollups if name not in STANDARD_TYPES]
    if len(custom) < limit:
        return
    custom.sort(key=lambda name: rollups[name].last)
    for name in custom[: len(custom) - limit + 1]:
        del rollups[name]


# -- merging and backfilling ------------------------------------------------------------


def merge_rollups(
    into: dict[str, TypeRollup],
    other: Mapping[str, TypeRollup],
    config: WindowConfig = DEFAULT_CONFIG,
) -> None:
    """Add ``other``'s rollups to ``into`` (identity stitching); ``other`` is unchanged.

    Counts, revenue and months add; ``first`` is the minimum, ``last`` the
    maximum. The bounds of the module rules apply to the result.
    """
    for event_type, theirs in other.items():
        mine = into.get(event_type)
        if mine is None:
            if event_type not in STANDARD_TYPES:
                _make_room(into, config.custom_types_max)
            mine = into[event_type] = TypeRollup(first=theirs.first, last=theirs.last)
        mine.first = min(mine.first, theirs.first) if mine.n else theirs.first
        mine.last = max(mine.last, theirs.last)
        mine.n += theirs.n
        mine.rev = round(mine.rev + theirs.rev, 9)
        detailed = event_type in DETAILED_TYPES
        for month, n, cents, parts in _rows(theirs):
            rest_n, rest_cents = n, cents
            for category, part_n, part_cents in parts:
                _add(mine, month, part_n, part_cents, category, detailed)
                rest_n, rest_cents = rest_n - part_n, rest_cents - part_cents
            if rest_n or rest_cents:
                _add(mine, month, rest_n, rest_cents, None, detailed)


def backfill(
    rollups: dict[str, TypeRollup], windows: Mapping[str, list[Stored]], config: WindowConfig
) -> None:
    """Rollups from the windows of a state that has none yet (see the module rules)."""
    for event_type, window in windows.items():
        for item in window:
            record(rollups, event_type, item.ts, item.category, item.revenue, config)


# -- reading --------------------------------------------------------------------------


def _rows(roll: TypeRollup) -> Iterator[tuple[int, int, int, list[tuple[str, int, int]]]]:
    """Each month as (index, count, cents, [(category, count, cents)...])."""
    for row in roll.months:
        parts = [
            (roll.cats[row[at]], row[at + 1], row[at + 2]) for at in range(_DETAIL, len(row), 3)
        ]
        yield roll.base + row[_OFF], row[_N], row[_CENTS] if len(row) > _N + 1 else 0, parts


def months_total(
    roll: TypeRollup | None,
    first: int,
    end: int,
    test: Callable[[str | None], bool] | None = None,
) -> tuple[int, int]:
    """(count, revenue cents) over the months ``first <= index < end``.

    With ``test``, only the events whose category passes it count; events
    without a tracked category are tested as ``None`` (every event of a type
    without detail is).
    """
    if roll is None or not roll.months or first >= end:
        return 0, 0
    months = roll.months
    lo = bisect.bisect_left(months, first - roll.base, key=lambda row: row[_OFF])
    hi = bisect.bisect_left(months, end - roll.base, key=lambda row: row[_OFF])
    count = cents = 0
    for row in months[lo:hi]:
        row_cents = row[_CENTS] if len(row) > _CENTS else 0
        if test is None:
            count += row[_N]
            cents += row_cents
            continue
        rest_n, rest_cents = row[_N], row_cents
        for at in range(_DETAIL, len(row), 3):
            rest_n, rest_cents = rest_n - row[at + 1], rest_cents - row[at + 2]
            if test(roll.cats[row[at]]):
                count += row[at + 1]
                cents += row[at + 2]
        if (rest_n or rest_cents) and test(None):
            count += rest_n
            cents += rest_cents
    return count, cents


def rollups_view(rollups: Mapping[str, TypeRollup]) -> dict[str, object]:
    """A readable JSON-ready view of the rollups (``tetik state``)."""
    view: dict[str, object] = {}
    for event_type, roll in rollups.items():
        months: dict[str, object] = {}
        for month, n, cents, parts in _rows(roll):
            if event_type in DETAILED_TYPES:
                months[month_label(month)] = {
                    "count": n,
                    "revenue": cents / 100,
                    "categories": {c: {"count": k, "revenue": v / 100} for c, k, v in parts},
                }
            else:
                months[month_label(month)] = n
        entry: dict[str, object] = {"count": roll.n, "first": roll.first, "last": roll.last}
        if event_type in DETAILED_TYPES:
            entry["revenue"] = roll.rev
        entry["months"] = months
        view[event_type] = entry
    return view
