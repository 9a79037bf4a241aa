"""Functions of the rules language over the long history (SPEC section 8), compiled.

Rules of this interface:

* All time, from the rollups of :mod:`engine.history`: ``count(TYPE)`` and
  ``exists(TYPE)`` (no WITHIN, no WHERE), ``sum(purchase, revenue)`` (no
  WITHIN, no WHERE), ``first(TYPE)`` (``ts`` of the first one, or ``null``),
  ``since_first(TYPE)`` and ``since(TYPE)`` (ms from the first / the last one
  to ``now``, or ``null``). With a WHERE and no WITHIN, ``count``/``exists``/
  ``sum`` read the records the window keeps (its retention), as before.
* ``date('2024-01-01')`` / ``date('2024-01-01T10:00')`` is a number (epoch ms)
  computed at load in the rules' time zone (:mod:`engine.rules.dates`); a bad
  date is an error at the string.
* ``between(FROM, TO)`` stands in place of WITHIN in ``count``, ``exists`` and
  ``sum``: the half-open range ``[FROM, TO)``, numbers (epoch ms) such as
  ``date(...)`` or ``now - 90d``; read by :mod:`engine.rules.ranges`. Anywhere
  else it is an error.
* Warnings (the load goes on; ``tetik rules validate`` prints them): a range
  that may be read from monthly buckets and so may be approximate, that is a
  ``between`` whose bound is not a constant month start in the rules' time
  zone (but not one that starts at ``it.ts`` of an enclosing WHERE's record
  that the window always covers, :func:`inside_window`), a WITHIN longer
  than the type's window keeps by default, and with such a range a WHERE on
  a field other than ``category`` (or on ``category`` of a type whose months
  keep no categories), or a ``sum`` of a field other than a purchase's
  ``revenue``.
"""

from __future__ import annotations

from typing import Final

from engine.durations import format_duration
from engine.errors import ExpressionError
from engine.history import DETAILED_TYPES, month_of, month_start
from engine.rules.dates import FORMS, parse_date
from engine.rules.nodes import Binary, Call, Literal, Name, Node, children
from engine.rules.typed import Checker, Fn, Typed, article, constant
from engine.windows import DEFAULT_CONFIG

WINDOW_FUNCTIONS: Final = frozenset({"count", "exists", "sum"})
BETWEEN_EXAMPLE: Final = "count(purchase, between(date('2023-01-01'), date('2024-01-01')))"


# -- all time -------------------------------------------------------------------------


def all_time_count(event_type: str) -> Fn:
    """``count(TYPE)``: every event of the type ever applied."""
    return lambda ctx: r.n if (r := ctx.state.rollups.get(event_type)) is not None else 0


def all_time_exists(event_type: str) -> Fn:
    """``exists(TYPE)``: whether one was ever applied."""
    return lambda ctx: (r := ctx.state.rollups.get(event_type)) is not None and r.n > 0


def all_time_revenue(event_type: str) -> Fn:
    """``sum(purchase, revenue)``: all-time revenue."""
    return lambda ctx: r.rev if (r := ctx.state.rollups.get(event_type)) is not None else 0


def since_last(event_type: str) -> Fn:
    """``since(TYPE)``: ms from the last one (all time) to ``now``."""
    return lambda ctx: ctx.now - r.last if (r := ctx.state.rollups.get(event_type)) else None


def first(cx: Checker, node: Call, event_type: str) -> Typed:
    """``first(TYPE)``: ``ts`` of the first one, or null."""
    return Typed(
        "number", lambda ctx: r.first if (r := ctx.state.rollups.get(event_type)) else None
    )


def since_first(cx: Checker, node: Call, event_type: str) -> Typed:
    """``since_first(TYPE)``: ms from the first one to ``now``, or null."""
    return Typed(
        "number",
        lambda ctx: ctx.now - r.first if (r := ctx.state.rollups.get(event_type)) else None,
    )


# -- dates and ranges -----------------------------------------------------------------


def date(cx: Checker, node: Call) -> Typed:
    """``date('2024-01-01')`` (one argument): a constant, epoch ms in the rules' time zone."""
    arg = node.args[0]
    if not (isinstance(arg, Literal) and isinstance(arg.value, str)):
        raise ExpressionError(
            f"date needs a quoted date, e.g. date('2024-01-01'); {FORMS}", arg.start
        )
    try:
        return constant(parse_date(arg.value, cx.timezone))
    except ValueError as exc:
        raise ExpressionError(f"date: {exc}", arg.start) from None


def is_between(node: Node) -> bool:
    """Whether an optional argument is a ``between(FROM, TO)`` range."""
    return isinstance(node, Call) and node.name == "between"


def misplaced_between(cx: Checker, node: Call) -> Typed:
    """``between`` anywhere but in place of WITHIN."""
    raise ExpressionError(
        "between(FROM, TO) is a range in place of WITHIN in count, exists or sum, "
        f"e.g. {BETWEEN_EXAMPLE}",
        node.offset,
    )


def between(cx: Checker, node: Call, event_type: str, warn: bool = True) -> tuple[Fn, Fn]:
    """FROM and TO of a ``between`` argument, compiled; warns (unless ``warn`` is false)
    when they are not exact month starts and FROM is not :func:`inside_window`."""
    if len(node.args) != 2:
        at = node.args[2].start if len(node.args) > 2 else node.end - 1
        raise ExpressionError(f"between takes two numbers, FROM and TO: {BETWEEN_EXAMPLE}", at)
    warn = warn and not inside_window(cx, node.args[0], event_type)
    fns = []
    for arg, what in zip(node.args, ("FROM", "TO"), strict=True):
        typed = cx.expr(arg)
        if typed.type not in ("number", "any"):
            raise ExpressionError(
                f"between's {what} must be a time (epoch ms) such as date('2024-01-01') or "
                f"now - 30d, but {cx.quote(arg)} is {article(typed.type)}",
                arg.start,
            )
        if warn:
            _warn_bound(cx, arg, typed, what, event_type)
        fns.append(typed.fn)
    return fns[0], fns[1]


def inside_window(cx: Checker, bound: Node, event_type: str) -> bool:
    """Whether FROM is always inside ``event_type``'s window (by default): ``it.ts`` or
    ``it.ts +/- D`` (D a number) of an enclosing WHERE's record whose own window, D
    included, reaches no further back, as in ``exists(engagement, 30d, it.kind ==
    'clicked' and exists(purchase, between(it.ts, it.ts + 3d)))``. Such a range is read
    from the window alone, exactly, so it deserves no warning."""
    offset = 0
    if isinstance(bound, Binary) and bound.op in ("+", "-"):
        right = bound.right
        if not (isinstance(right, Literal) and type(right.value) is int):
            return False
        offset = right.value if bound.op == "+" else -right.value
        bound = bound.left
    if not (isinstance(bound, Name) and bound.parts == ("it", "ts")) or not cx.record_type:
        return False
    reach = DEFAULT_CONFIG.limits(cx.record_type).max_age_ms - offset
    return reach <= DEFAULT_CONFIG.limits(event_type).max_age_ms


def _warn_bound(cx: Checker, arg: Node, typed: Typed, what: str, event_type: str) -> None:
    zone = cx.timezone
    if not typed.const:
        cx.warn(
            arg.start,
            f"between's {what} {cx.quote(arg)} is not a constant date: the part of the range "
            f"older than the {event_type} window ({_window_age(event_type)} by default) is read "
            f"from monthly buckets, exact only when both bounds are month starts in {zone}",
        )
        return
    value = typed.value
    if type(value) in (int, float) and month_start(month_of(int(value), zone), zone) != value:
        cx.warn(
            arg.start,
            f"between's {what} {cx.quote(arg)} is not the start of a month in {zone}: once the "
            f"range is older than the {event_type} window ({_window_age(event_type)} by "
            "default) it is read from monthly buckets in whole months, so it is approximate",
        )


def _window_age(event_type: str) -> str:
    return format_duration(DEFAULT_CONFIG.limits(event_type).max_age_ms)


def warn_range(
    cx: Checker,
    event_type: str,
    within: int | None,
    between_node: Node | None,
    where_node: Node | None,
    summed: str | None,
) -> None:
    """Warn about what monthly buckets cannot answer exactly (see the module rules)."""
    at = between_node
    if within is not None and within > DEFAULT_CONFIG.limits(event_type).max_age_ms:
        at = at or where_node
        cx.warn(
            0 if at is None else at.start,
            f"WITHIN {format_duration(within)} is longer than the {event_type} window keeps "
            f"({_window_age(event_type)} by default): the older part is read from monthly "
            "buckets in whole months, so it is approximate",
        )
    elif between_node is None or (
        isinstance(between_node, Call)
        and len(between_node.args) == 2
        and inside_window(cx, between_node.args[0], event_type)
    ):
        return
    if where_node is not None:
        fields = sorted(_it_fields(where_node) - {"category"})
        if fields:
            cx.warn(
                where_node.start,
                f"WHERE reads it.{fields[0]}: monthly buckets keep only categories, so the part "
                f"of the range older than the {event_type} window reads it as null (approximate)",
            )
        elif event_type not in DETAILED_TYPES and "category" in _it_fields(where_node):
            cx.warn(
                where_node.start,
                f"monthly buckets keep categories only for {', '.join(sorted(DETAILED_TYPES))}: "
                f"the part of the range older than the {event_type} window reads it.category "
                "as null (approximate)",
            )
    if summed is not None and not (summed == "revenue" and event_type in DETAILED_TYPES):
        cx.warn(
            0 if between_node is None else between_node.start,
            f"monthly buckets keep only the revenue of purchases: sum({event_type}, {summed}) "
            "adds nothing for the part of the range older than the window (approximate)",
        )


def buckets_answer(where_node: Node, event_type: str) -> bool:
    """Whether monthly buckets answer this WHERE exactly: it reads only ``it.category``
    (or no ``it`` field) and the type keeps categories in its months."""
    fields = _it_fields(where_node)
    return not fields or (fields == {"category"} and event_type in DETAILED_TYPES)


def _it_fields(node: Node) -> set[str]:
    """The ``it.F`` fields a WHERE reads (not those of a nested window function's WHERE)."""
    if isinstance(node, Name):
        return {node.parts[1]} if node.parts[0] == "it" and len(node.parts) > 1 else set()
    if isinstance(node, Call) and node.name in WINDOW_FUNCTIONS:
        return set()
    found: set[str] = set()
    for child in children(node):
        found |= _it_fields(child)
    return found


def field_name(node: Node) -> str | None:
    """The stored field a FIELD argument names (``revenue`` for ``it.revenue`` too)."""
    if not isinstance(node, Name):
        return None
    parts = node.parts[1:] if node.parts[0] == "it" and len(node.parts) > 1 else node.parts
    return ".".join(parts)
