"""Scans over the items of the purchases a window keeps: ``sum_items`` of the rules language.

Rules of this interface:

* ``sum_items(FIELD [, WITHIN or between(FROM, TO)] [, WHERE])`` adds FIELD
  over every line of every ``purchase`` the window keeps at ``now`` whose
  ``ts`` is in the range (``ts >= now - WITHIN``; ``FROM <= ts < TO``; no
  range: the whole window). Each line is a stored record (:func:`lines`), so
  a WHERE reads it with the usual ``it.F`` fields:
  ``sum_items(revenue, 90d, it.category == 'shoes') > 1000``.
* A line of an item: the item's ``product_id``, ``category`` (the purchase's
  ``category`` when the item has none), ``price`` and ``quantity`` (default
  1), ``revenue`` = price x quantity (``null`` without a price), and the
  purchase's ``ts``, ``order_id`` and ``props``. A purchase without ``items``
  is one line: its ``category``, ``quantity`` (default 1), ``revenue``.
* Items are read from the purchase window only (400 days by default): the
  monthly buckets of :mod:`engine.history` keep no items, so the part of a
  range older than the window adds nothing (the compiler warns when a range
  can reach there: :func:`warn_range`).
* A non-number FIELD adds nothing; float noise is rounded to 9 decimals as
  ``sum`` does. Nothing raises; ``ctx.it`` is restored, so WHEREs nest.
"""

from __future__ import annotations

from typing import Any, Final

from engine.durations import format_duration
from engine.retention import kept_from
from engine.rules import history_calls
from engine.rules.nodes import Node
from engine.rules.ranges import add_up
from engine.rules.typed import NUMBERS, Checker, Fn, Reader
from engine.windows import DEFAULT_CONFIG, Stored, since_index

PURCHASE: Final = "purchase"


def lines(record: Stored) -> list[Stored]:
    """The lines of one stored purchase (see the module rules)."""
    items = record.items
    if not items:
        return [
            Stored(
                ts=record.ts,
                h=record.h,
                category=record.category,
                quantity=record.quantity or 1,
                order_id=record.order_id,
                revenue=record.revenue,
                props=record.props,
            )
        ]
    return [
        Stored(
            ts=record.ts,
            h=record.h,
            product_id=item.product_id,
            category=item.category if item.category is not None else record.category,
            price=item.price,
            quantity=item.qty,
            order_id=record.order_id,
            revenue=None if item.price is None else round(item.price * item.qty, 9),
            props=record.props,
        )
        for item in items
    ]


def summer(read: Reader, within: int | None, between: tuple[Fn, Fn] | None, where: Fn | None) -> Fn:
    """``sum_items``: the total of ``read`` over the matching lines."""

    def sum_items(ctx: Any) -> int | float:
        window = ctx.state.windows.get(PURCHASE)
        if not window:
            return 0
        lo = kept_from(ctx.windows, PURCHASE, ctx.now)
        hi: Any = None
        if between is not None:
            start, hi = between[0](ctx), between[1](ctx)
            if type(start) not in NUMBERS or type(hi) not in NUMBERS:
                return 0
            lo = max(lo, start)
        elif within is not None:
            lo = max(lo, ctx.now - within)
        records = window[since_index(window, lo) : None if hi is None else since_index(window, hi)]
        result = add_up(ctx, (line for record in records for line in lines(record)), where, read)
        return round(result, 9) if type(result) is float else result

    return sum_items


def warn_range(cx: Checker, within: int | None, bounds: tuple[Node, Node] | None) -> None:
    """Warn when the range can reach before the purchase window (items are not in buckets)."""
    kept = DEFAULT_CONFIG.limits(PURCHASE).max_age_ms
    if within is not None and within > kept:
        cx.warn(
            0,
            f"sum_items: WITHIN {format_duration(within)} is longer than the purchase window "
            f"keeps ({format_duration(kept)} by default); items are not kept in monthly buckets, "
            "so older purchases add nothing",
        )
    if bounds is None or history_calls.inside_window(cx, bounds[0], PURCHASE):
        return
    cx.warn(
        bounds[0].start,
        f"sum_items: once FROM {cx.quote(bounds[0])} is older than the purchase window "
        f"({format_duration(kept)} by default), the purchases before the window add nothing: "
        "items are not kept in monthly buckets",
    )
