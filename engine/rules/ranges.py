"""Reads of a time range ``[lo, hi)`` of one event type: the window, then the monthly buckets.

Rules of this interface:

* A range the window still covers (``lo`` at or after
  :func:`engine.retention.covered_from`) is read from the window alone: every
  record with ``lo <= ts < hi`` (``hi`` None: no end), WHERE as written.
* An older range is read in two parts that never overlap: whole calendar
  months (in the rules' time zone) from the monthly buckets of
  :mod:`engine.history`, for the months that start at or after ``lo`` and
  before both ``hi`` and the first month the window covers whole; then the
  window from the end of the last such month. So a range whose bounds are
  month starts is exact; otherwise the month holding ``lo`` counts only from
  the window (which no longer has its older days), and a month holding ``hi``
  counts whole when it started before ``hi``. When no whole month fits, the
  window alone answers from ``max(lo, retention cutoff)``.
* ``window_first``: when the buckets cannot answer the question exactly (a
  WHERE on a field other than a purchase's ``category``, a ``sum`` of another
  field than a purchase's ``revenue``), the month in which the window's cover
  starts is read from the window (from its retention cutoff) rather than from
  the buckets, so that whatever the window still holds is answered exactly.
* In the bucket part a WHERE sees each event as a record whose only field is
  ``category`` (known for purchases, up to the bounds of
  :mod:`engine.history`; ``null`` otherwise): ``it.category == 'shoes'``,
  ``!=``, ``in [...]``, ``contains`` and ``'shoes' in it.category`` are exact
  there, a condition on another field reads it as ``null``. ``sum`` adds, in
  the bucket part, only the revenue of purchases (to the cent).
* Months older than :data:`engine.history.KEEP_MONTHS` before ``now`` are not
  read. Nothing here raises; ``ctx.it`` is restored.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from engine.history import (
    DETAILED_TYPES,
    KEEP_MONTHS,
    month_at_or_after,
    month_of,
    month_start,
    months_total,
)
from engine.retention import covered_from, kept_from
from engine.rules.typed import NUMBERS, Fn, Reader
from engine.windows import Stored, since_index

_NO_MONTHS = (0, 0)


def split(
    ctx: Any,
    event_type: str,
    window: list[Stored] | None,
    lo: int,
    hi: int | None,
    window_first: bool = False,
) -> tuple[tuple[int, int], int]:
    """((first month, end month) from buckets, start of the window part); see module rules."""
    config, now = ctx.windows, ctx.now
    covered = covered_from(window, config, event_type, now)
    if lo >= covered:
        return _NO_MONTHS, lo
    zone = config.timezone
    kept = kept_from(config, event_type, now)
    first = max(month_at_or_after(lo, zone), month_of(now, zone) - KEEP_MONTHS)
    # The month the cover starts in comes whole from buckets, unless they cannot
    # answer the question (window_first): then the window reads it, from its cutoff.
    end = month_of(covered, zone) if window_first else month_at_or_after(covered, zone)
    if hi is not None:
        end = min(end, month_at_or_after(hi, zone))
    if first >= end:
        return _NO_MONTHS, max(lo, kept)
    return (first, end), max(month_start(end, zone), kept)


def _records(window: list[Stored], lo: int, hi: int | None) -> list[Stored]:
    start = 0 if window[0].ts >= lo else since_index(window, lo)
    if hi is None or window[-1].ts < hi:
        return window[start:] if start else window
    return window[start : since_index(window, hi)]


def _category_test(ctx: Any, where: Fn | None, lo: int) -> Any:
    """WHERE over a bucket's category (None: every event passes)."""
    if where is None:
        return None

    def test(category: str | None) -> bool:
        saved = ctx.it
        ctx.it = Stored(ts=int(lo), h=0, category=category)
        try:
            return where(ctx) is True
        finally:
            ctx.it = saved

    return test


def count_span(
    ctx: Any,
    event_type: str,
    lo: int,
    hi: int | None,
    where: Fn | None,
    window_first: bool = False,
) -> int:
    """How many events of ``event_type`` in ``[lo, hi)`` match ``where``."""
    if hi is not None and hi <= lo:
        return 0
    window = ctx.state.windows.get(event_type)
    (first, end), start = split(ctx, event_type, window, lo, hi, window_first)
    total = 0
    if first < end:
        roll = ctx.state.rollups.get(event_type)
        total = months_total(roll, first, end, _category_test(ctx, where, lo))[0]
    if not window:
        return total
    records = _records(window, start, hi)
    if where is None:
        return total + len(records)
    saved = ctx.it
    try:
        for record in records:
            ctx.it = record
            if where(ctx) is True:
                total += 1
    finally:
        ctx.it = saved
    return total


def sum_span(
    ctx: Any,
    event_type: str,
    lo: int,
    hi: int | None,
    where: Fn | None,
    read: Reader,
    revenue: bool,
    window_first: bool = False,
) -> int | float:
    """The total of a field over ``[lo, hi)``; ``revenue``: the field is a purchase's revenue."""
    if hi is not None and hi <= lo:
        return 0
    window = ctx.state.windows.get(event_type)
    exact = revenue and event_type in DETAILED_TYPES
    (first, end), start = split(ctx, event_type, window, lo, hi, window_first or not exact)
    result: int | float = 0
    if first < end and exact:
        roll = ctx.state.rollups.get(event_type)
        cents = months_total(roll, first, end, _category_test(ctx, where, lo))[1]
        result = cents / 100 if cents else 0
    if window:
        result += add_up(ctx, _records(window, start, hi), where, read)
    return round(result, 9) if type(result) is float else result


def add_up(ctx: Any, records: Iterable[Stored], where: Fn | None, read: Reader) -> int | float:
    """The total of ``read`` over the ``records`` ``where`` holds for (non-numbers add
    nothing), ``it`` bound to each record in turn."""
    saved = ctx.it
    result: int | float = 0
    try:
        for record in records:
            ctx.it = record
            if where is None or where(ctx) is True:
                value = read(record)
                if type(value) in NUMBERS:
                    result += value
    finally:
        ctx.it = saved
    return result


def bounds(ctx: Any, between: tuple[Fn, Fn]) -> tuple[int, int] | None:
    """FROM and TO of a ``between`` at run time; None unless both are numbers."""
    lo, hi = between[0](ctx), between[1](ctx)
    if type(lo) not in NUMBERS or type(hi) not in NUMBERS:
        return None
    return lo, hi


def between_counter(
    event_type: str, between: tuple[Fn, Fn], where: Fn | None, window_first: bool
) -> Fn:
    """``count(TYPE, between(FROM, TO) [, WHERE])``."""

    def count_between(ctx: Any) -> int:
        span = bounds(ctx, between)
        if span is None:
            return 0
        return count_span(ctx, event_type, span[0], span[1], where, window_first)

    return count_between


def between_finder(
    event_type: str, between: tuple[Fn, Fn], where: Fn | None, window_first: bool
) -> Fn:
    """``exists(TYPE, between(FROM, TO) [, WHERE])``."""

    def exists_between(ctx: Any) -> bool:
        span = bounds(ctx, between)
        if span is None:
            return False
        return count_span(ctx, event_type, span[0], span[1], where, window_first) > 0

    return exists_between


def between_summer(
    event_type: str,
    between: tuple[Fn, Fn],
    where: Fn | None,
    read: Reader,
    revenue: bool,
    window_first: bool,
) -> Fn:
    """``sum(TYPE, FIELD, between(FROM, TO) [, WHERE])``."""

    def sum_between(ctx: Any) -> int | float:
        span = bounds(ctx, between)
        if span is None:
            return 0
        return sum_span(ctx, event_type, span[0], span[1], where, read, revenue, window_first)

    return sum_between
