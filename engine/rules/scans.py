"""Scans of one state window for ``count``, ``exists`` and ``sum``, as closures.

Rules of this interface:

* A :class:`Range` says which records of a window a scan reads: those of one
  event type, with ``ts >= now - within`` when ``within`` is set (found by
  bisection, :func:`engine.windows.since_index`), for which ``where`` is
  ``true`` with ``ctx.it`` bound to the record. Without ``within``, every
  record the window keeps at ``now``.
* Retention (:mod:`engine.retention`): a record older than its type's cutoff
  at ``now`` is never read, whether or not the state was pruned. A ``within``
  that reaches before what the window covers, and a ``between`` range, are
  read by :mod:`engine.rules.ranges` (the window, then monthly buckets).
* ``equals`` is an optional fast form of ``where`` that the caller may give
  when WHERE is ``it.F == X`` and ``X`` does not depend on ``it``: ``X`` is
  then evaluated once per call instead of once per record, and the records are
  compared in C (``map`` and ``operator.countOf``). It must mean exactly what
  ``where`` means.
* Scans restore ``ctx.it`` when they finish, so WHEREs nest, and never raise.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import countOf
from typing import Any

from engine.rules import ranges
from engine.rules.typed import Fn, Reader
from engine.windows import Stored, since_index


@dataclass(frozen=True, slots=True)
class Range:
    """Which records of one window a scan reads (see the module rules)."""

    type: str
    within: int | None = None  # ms, or None for the whole window
    where: Fn | None = None  # a condition over ctx.it, or None for every record
    equals: tuple[Reader, Fn] | None = None  # (field of the record, value it must equal)
    between: tuple[Fn, Fn] | None = None  # FROM and TO (epoch ms): [FROM, TO) instead of within
    window_first: bool = False  # monthly buckets cannot answer `where` (engine.rules.ranges)


def start_of(
    ctx: Any, event_type: str, window: list[Stored] | None, within: int | None
) -> int | None:
    """The oldest ``ts`` a scan reads; None when ``within`` reaches before the window's cover.

    The same rule as :func:`engine.retention.covered_from`, with one lookup of the limits.
    """
    limits = ctx.windows.limits(event_type)
    now: int = ctx.now
    kept: int = now - limits.max_age_ms
    if within is None:
        return kept
    start = now - within
    if start < kept or (window and len(window) >= limits.max_count and start <= window[0].ts):
        return None
    return start


def recent(window: list[Stored], start: int) -> list[Stored]:
    """The records with ``ts >= start``."""
    if window[0].ts >= start:
        return window  # no bisect and no copy when every record qualifies
    # A slice, not itertools.islice: islice walks the skipped (older) records one by one.
    return window[since_index(window, start) :]


def counter(spec: Range) -> Fn:
    """``count``: how many records of the range match."""
    type_, within, where = spec.type, spec.within, spec.where
    reach = within or 0  # the span a too-long WITHIN reads (only used when it is set)
    first = spec.window_first
    if spec.between is not None:
        return ranges.between_counter(type_, spec.between, where, spec.window_first)
    if spec.equals is not None:
        key, value = spec.equals

        def count_equal(ctx: Any) -> int:
            window = ctx.state.windows.get(type_)
            start = start_of(ctx, type_, window, within)
            if start is None:
                return ranges.count_span(ctx, type_, ctx.now - reach, None, where, first)
            if not window:
                return 0
            return countOf(map(key, recent(window, start)), value(ctx))

        return count_equal
    if where is None:

        def count_all(ctx: Any) -> int:
            window = ctx.state.windows.get(type_)
            start = start_of(ctx, type_, window, within)
            if start is None:
                return ranges.count_span(ctx, type_, ctx.now - reach, None, None)
            if not window:
                return 0
            return len(window) - (0 if window[0].ts >= start else since_index(window, start))

        return count_all

    def count_where(ctx: Any) -> int:
        window = ctx.state.windows.get(type_)
        start = start_of(ctx, type_, window, within)
        if start is None:
            return ranges.count_span(ctx, type_, ctx.now - reach, None, where, first)
        if not window:
            return 0
        saved = ctx.it  # a WHERE may sit inside another one's: restore the outer `it`
        matched = 0
        try:
            for record in recent(window, start):
                ctx.it = record
                if where(ctx) is True:
                    matched += 1
        finally:
            ctx.it = saved
        return matched

    return count_where


def finder(spec: Range) -> Fn:
    """``exists``: whether any record of the range matches."""
    type_, within, where = spec.type, spec.within, spec.where
    reach = within or 0  # the span a too-long WITHIN reads (only used when it is set)
    first = spec.window_first
    if spec.between is not None:
        return ranges.between_finder(type_, spec.between, where, spec.window_first)
    if spec.equals is not None:
        key, value = spec.equals

        def exists_equal(ctx: Any) -> bool:
            window = ctx.state.windows.get(type_)
            start = start_of(ctx, type_, window, within)
            if start is None:
                return ranges.count_span(ctx, type_, ctx.now - reach, None, where, first) > 0
            return bool(window) and value(ctx) in map(key, recent(window, start))

        return exists_equal
    if where is None:

        def exists_any(ctx: Any) -> bool:
            window = ctx.state.windows.get(type_)
            start = start_of(ctx, type_, window, within)
            if start is None:
                return ranges.count_span(ctx, type_, ctx.now - reach, None, None) > 0
            # Windows are sorted by ts: only the latest record needs looking at.
            return bool(window) and window[-1].ts >= start

        return exists_any

    def exists_where(ctx: Any) -> bool:
        window = ctx.state.windows.get(type_)
        start = start_of(ctx, type_, window, within)
        if start is None:
            return ranges.count_span(ctx, type_, ctx.now - reach, None, where, first) > 0
        if not window:
            return False
        saved = ctx.it
        try:
            for record in recent(window, start):
                ctx.it = record
                if where(ctx) is True:
                    return True
        finally:
            ctx.it = saved
        return False

    return exists_where


def summer(spec: Range, read: Reader, revenue: bool = False) -> Fn:
    """``sum``: the total of a field over the matching records (non-numbers add nothing).

    A float total is rounded to 9 decimals: float noise (``33.33 + 33.33 +
    33.34 == 99.99999999999999``) would otherwise fail ``sum(...) >= 100``.
    ``revenue`` says the field is ``revenue``, which monthly buckets keep for
    purchases.
    """
    type_, within, where = spec.type, spec.within, spec.where
    reach = within or 0  # the span a too-long WITHIN reads (only used when it is set)
    first = spec.window_first
    if spec.between is not None:
        return ranges.between_summer(type_, spec.between, where, read, revenue, spec.window_first)

    def total(ctx: Any) -> int | float:
        window = ctx.state.windows.get(type_)
        start = start_of(ctx, type_, window, within)
        if start is None:
            return ranges.sum_span(ctx, type_, ctx.now - reach, None, where, read, revenue, first)
        if not window:
            return 0
        result = ranges.add_up(ctx, recent(window, start), where, read)
        return round(result, 9) if type(result) is float else result

    return total
