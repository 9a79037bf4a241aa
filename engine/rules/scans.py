"""Scans of one state window for ``count``, ``exists`` and ``sum``, as closures.

Rules of this interface:

* A :class:`Range` says which records of a window a scan reads: those of one
  event type, with ``ts >= now - within`` when ``within`` is set (found by
  bisection, :func:`engine.windows.since_index`), for which ``where`` is
  ``true`` with ``ctx.it`` bound to the record.
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

from engine.rules.typed import NUMBERS, Fn, Reader
from engine.windows import Stored, since_index


@dataclass(frozen=True, slots=True)
class Range:
    """Which records of one window a scan reads (see the module rules)."""

    type: str
    within: int | None = None  # ms, or None for the whole window
    where: Fn | None = None  # a condition over ctx.it, or None for every record
    equals: tuple[Reader, Fn] | None = None  # (field of the record, value it must equal)


def recent(window: list[Stored], now: int, within: int | None) -> list[Stored]:
    """The records with ``ts >= now - within`` (all of them when ``within`` is None)."""
    if within is None or window[0].ts >= now - within:
        return window  # no bisect and no copy when every record qualifies
    # A slice, not itertools.islice: islice walks the skipped (older) records one by one.
    return window[since_index(window, now - within) :]


def counter(spec: Range) -> Fn:
    """``count``: how many records of the range match."""
    type_, within, where = spec.type, spec.within, spec.where
    if spec.equals is not None:
        key, value = spec.equals

        def count_equal(ctx: Any) -> int:
            window = ctx.state.windows.get(type_)
            if not window:
                return 0
            return countOf(map(key, recent(window, ctx.now, within)), value(ctx))

        return count_equal
    if where is None:

        def count_all(ctx: Any) -> int:
            window = ctx.state.windows.get(type_)
            if not window:
                return 0
            if within is None:
                return len(window)
            cutoff = ctx.now - within
            return len(window) - (0 if window[0].ts >= cutoff else since_index(window, cutoff))

        return count_all

    def count_where(ctx: Any) -> int:
        window = ctx.state.windows.get(type_)
        if not window:
            return 0
        saved = ctx.it  # a WHERE may sit inside another one's: restore the outer `it`
        matched = 0
        try:
            for record in recent(window, ctx.now, within):
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
    if spec.equals is not None:
        key, value = spec.equals

        def exists_equal(ctx: Any) -> bool:
            window = ctx.state.windows.get(type_)
            return bool(window) and value(ctx) in map(key, recent(window, ctx.now, within))

        return exists_equal
    if where is None:

        def exists_any(ctx: Any) -> bool:
            window = ctx.state.windows.get(type_)
            # Windows are sorted by ts: only the latest record needs looking at.
            return bool(window) and (within is None or window[-1].ts >= ctx.now - within)

        return exists_any

    def exists_where(ctx: Any) -> bool:
        window = ctx.state.windows.get(type_)
        if not window:
            return False
        saved = ctx.it
        try:
            for record in recent(window, ctx.now, within):
                ctx.it = record
                if where(ctx) is True:
                    return True
        finally:
            ctx.it = saved
        return False

    return exists_where


def summer(spec: Range, read: Reader) -> Fn:
    """``sum``: the total of a field over the matching records (non-numbers add nothing).

    A float total is rounded to 9 decimals: float noise (``33.33 + 33.33 +
    33.34 == 99.99999999999999``) would otherwise fail ``sum(...) >= 100``.
    """
    type_, within, where = spec.type, spec.within, spec.where

    def total(ctx: Any) -> int | float:
        window = ctx.state.windows.get(type_)
        if not window:
            return 0
        saved = ctx.it
        result: int | float = 0
        try:
            for record in recent(window, ctx.now, within):
                ctx.it = record
                if where is None or where(ctx) is True:
                    value = read(record)
                    if type(value) in NUMBERS:
                        result += value
        finally:
            ctx.it = saved
        return round(result, 9) if type(result) is float else result

    return total
