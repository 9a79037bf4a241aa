"""Functions of the expression language over a user's state (SPEC section 2).

Rules of this interface:

* ``count(TYPE [, WITHIN] [, WHERE])`` -> number, ``exists(...)`` -> bool,
  ``sum(TYPE, FIELD [, WITHIN] [, WHERE])`` -> number (records whose field is
  not a number add nothing; float noise below 1e-9 is rounded away, so
  ``33.33 + 33.33 + 33.34`` is ``100``), ``last(TYPE, FIELD)`` -> the field of
  the latest record or ``null``, ``since(TYPE)`` -> ms from the latest record
  to ``now`` or ``null``, ``engaged(CHANNEL [, KIND])`` -> bool,
  ``in_cart(PRODUCT)`` / ``favorited(PRODUCT)`` -> bool.
* ``sum_items(FIELD [, WITHIN or between(FROM, TO)] [, WHERE])`` -> number:
  FIELD over the lines (items) of the purchases the window keeps, each line a
  record for WHERE (:mod:`engine.rules.item_scans`), e.g. the spend in a
  category: ``sum_items(revenue, 90d, it.category == 'shoes')``.
* Long history (SPEC section 8, :mod:`engine.rules.history_calls`):
  ``count(TYPE)``, ``exists(TYPE)``, ``sum(purchase, revenue)`` and
  ``since(TYPE)`` are all-time; ``first(TYPE)``, ``since_first(TYPE)``,
  ``date('2024-01-01')``, and ``between(FROM, TO)`` in place of WITHIN.
* Reads honour retention (:mod:`engine.retention`): ``last`` ignores a latest
  record older than its type's cutoff at ``now``; see :mod:`engine.rules.scans`.
* TYPE is a bare event type name (dots allowed: ``checkout.step``) or a quoted
  one. A bare name that is not standard but close to a standard type
  (``add_to_crt``) is refused with a suggestion; quoting it (``'signup_done'``)
  says it is meant as a custom type. Names with ``:`` or ``-`` must be quoted.
* WITHIN is a duration literal (``24h``): records with ``ts >= now - WITHIN``
  count, found by bisection. WHERE is a condition with ``it`` bound to each
  record; a record counts when it is ``true``.
* FIELD is a bare stored field (``revenue``, ``price``, ``props.size``...);
  ``sum`` needs a number field (or a ``props`` path).
* CHANNEL and KIND are names or strings from the contract's channels and
  engagement kinds; without KIND, ``engaged`` means opened or clicked. It is
  true when the engagement window holds a record of that channel and kind
  whose ``action_id`` is one of this enrollment's actions (``ctx.actions``).
* ``most_used_channel([WITHIN])`` -> the channel with the most engagement
  records of kind opened or clicked (in the last WITHIN, else all the window
  keeps), ties to the one engaged with last; ``null`` without any. It is what
  ``send: {expr: "most_used_channel()"}`` sends on (SPEC section 11).
* ``engaged_in(JOURNEY [, KIND])`` -> bool: the engagement window holds a
  record of that kind (default opened or clicked) for one of the shopper's
  latest sent actions of journey JOURNEY (a name or a string), wherever it is
  evaluated (:func:`engine.experiments.engaged_in`), e.g. a goal's
  ``if: engaged_in(abandoned_cart, clicked)``.
* ``rfm()`` -> a record with fields ``r``, ``f``, ``m`` (numbers 1-5) and
  ``score`` (the string ``"545"``), scored by :func:`engine.rfm.score` against
  the boundaries in force at ``now`` (``ctx.rfm``); ``null`` without purchases
  or boundaries, and so are its fields (``rfm().r``).
* The catalog (SPEC section 10, ``ctx.catalog``): ``product(PRODUCT)`` -> a
  record with the product's latest ``name``, ``url``, ``image``, ``category``,
  ``price``, ``stock`` and ``props`` (``product(event.product_id).stock``);
  ``null`` for a product the catalog has not seen, and so are its fields.
  ``bought_together(PRODUCT, N)`` -> the list of up to N product ids most often
  bought in the same orders (:mod:`engine.bought_together`; N at most 100).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from operator import attrgetter
from typing import Any, Final

from engine import experiments
from engine.errors import ExpressionError
from engine.events import CHANNELS, ENGAGEMENT_KINDS, STANDARD_TYPES, TYPE_PATTERN, suggest
from engine.history import DETAILED_TYPES
from engine.retention import cart_kept_from, favorites_kept_from, kept_from
from engine.rfm import RfmScore, rfm_inputs, score
from engine.rules import history_calls, item_scans, scans
from engine.rules.context import NOT_YET
from engine.rules.names import FUNCTIONS, RECORD_FIELDS, ROOTS, Field, field_path
from engine.rules.nodes import Binary, Call, Literal, Name, Node, Unary, children
from engine.rules.typed import NUMBERS, Checker, Fn, Reader, Type, Typed, article, cut

SIGNATURES: Final = {
    "count": "count(TYPE [, WITHIN or between(FROM, TO)] [, WHERE])",
    "exists": "exists(TYPE [, WITHIN or between(FROM, TO)] [, WHERE])",
    "sum": "sum(TYPE, FIELD [, WITHIN or between(FROM, TO)] [, WHERE])",
    "sum_items": "sum_items(FIELD [, WITHIN or between(FROM, TO)] [, WHERE])",
    "last": "last(TYPE, FIELD)",
    "since": "since(TYPE)",
    "first": "first(TYPE)",
    "since_first": "since_first(TYPE)",
    "date": "date('YYYY-MM-DD')",
    "between": "between(FROM, TO)",
    "engaged": "engaged(CHANNEL [, KIND])",
    "in_cart": "in_cart(PRODUCT)",
    "favorited": "favorited(PRODUCT)",
    "rfm": "rfm()",
    "in_segment": "in_segment('NAME')",  # compiled by engine.rules.segment_refs
    "product": "product(PRODUCT)",
    "bought_together": "bought_together(PRODUCT, N)",
    "most_used_channel": "most_used_channel([WITHIN])",
    "engaged_in": "engaged_in(JOURNEY [, KIND])",
}
RFM_FIELDS: Final[dict[str, tuple[Type, Reader]]] = {
    "r": ("number", attrgetter("r")),
    "f": ("number", attrgetter("f")),
    "m": ("number", attrgetter("m")),
    "score": ("string", attrgetter("score")),
}
PRODUCT_FIELDS: Final[dict[str, tuple[Type, Reader]]] = {
    **{name: ("string", attrgetter(name)) for name in ("name", "url", "image", "category")},
    "price": ("number", attrgetter("price")),
    "stock": ("number", attrgetter("stock")),
    "props": ("any", attrgetter("props")),
}
DEFAULT_KINDS: Final = frozenset({"opened", "clicked"})
_TYPE = re.compile(TYPE_PATTERN)


def call(cx: Checker, node: Call) -> Typed:
    """Compile a function call, checking its name and arguments."""
    compile_call = _COMPILERS.get(node.name)
    if compile_call is None:
        raise ExpressionError(
            f"unknown function {cut(node.name)}{suggest(node.name, FUNCTIONS)}", node.offset
        )
    return compile_call(cx, node)


def _arity(node: Call, least: int, most: int) -> None:
    args = node.args
    if len(args) > most:
        raise ExpressionError(f"too many arguments: {SIGNATURES[node.name]}", args[most].start)
    if len(args) < least:
        raise ExpressionError(f"missing argument: {SIGNATURES[node.name]}", node.end - 1)


# -- arguments -----------------------------------------------------------------


def event_type(node: Node, function: str) -> str:
    """The event type a TYPE argument names (see the module rules)."""
    if isinstance(node, Literal) and isinstance(node.value, str):
        if not _TYPE.match(node.value):
            raise ExpressionError(
                f"{cut(node.value)!r} is not an event type name ([a-z][a-z0-9_.:-]*)", node.start
            )
        return node.value
    if not isinstance(node, Name):
        raise ExpressionError(
            f"the first argument of {function} is an event type, e.g. {function}(view_product)",
            node.start,
        )
    name = ".".join(node.parts)
    if name in STANDARD_TYPES:
        return name
    if len(node.parts) > 1 and node.parts[0] in ROOTS:
        # `count(event.type)` reads like a value; TYPE is a name fixed at load.
        raise ExpressionError(
            f"the first argument of {function} is an event type name, not a value like "
            f"{cut(name)}; quote it, {function}('{cut(name)}'), if it is a custom event",
            node.start,
        )
    close = suggest(name, STANDARD_TYPES)
    if close:
        raise ExpressionError(
            f"unknown event type {cut(name)!r}{close}; quote it, {function}('{cut(name)}'), "
            "if it is a custom event",
            node.start,
        )
    if not _TYPE.match(name):
        raise ExpressionError(
            f"{cut(name)!r} is not an event type name ([a-z][a-z0-9_.:-]*)", node.start
        )
    return name


def _field(node: Node, function: str) -> Field:
    """A FIELD argument: a stored field such as ``revenue`` or ``props.size``."""
    if not isinstance(node, Name):
        raise ExpressionError(
            f"the second argument of {function} is a field name, e.g. revenue", node.start
        )
    first = 1 if node.parts[0] == "it" and len(node.parts) > 1 else 0
    return field_path(node, first, RECORD_FIELDS, "")


def _is_within(node: Node) -> bool:
    """Whether an optional argument is meant as WITHIN: a number, perhaps negated."""
    if isinstance(node, Unary) and node.op == "-":
        return _is_within(node.operand)
    return isinstance(node, Literal) and type(node.value) in NUMBERS


def _within(node: Node) -> int:
    if not (isinstance(node, Literal) and node.duration and isinstance(node.value, int)):
        raise ExpressionError(
            "WITHIN must be a duration such as 24h or 30d (a whole number and a unit)",
            node.start,
        )
    return node.value


def _where(cx: Checker, node: Node, function: str, record_type: str) -> Fn:
    typed = cx.where(node, record_type)
    if typed.type not in ("bool", "any"):
        raise ExpressionError(
            f"WHERE of {function} must be a condition over it, e.g. it.price > 100, but "
            f"{cx.quote(node)} is {article(typed.type)}; WITHIN, if any, comes first and is "
            "a duration such as 24h",
            node.start,
        )
    return typed.fn


def _range(
    cx: Checker, node: Call, type_: str, optional: tuple[Node, ...], summed: str | None = None
) -> scans.Range:
    """WITHIN (or ``between``) and WHERE from the optional arguments, in that order."""
    rest = list(optional)
    within = between = between_node = None
    if rest and history_calls.is_between(rest[0]):
        between_node = rest.pop(0)
        assert isinstance(between_node, Call)
        between = history_calls.between(cx, between_node, type_)
    elif rest and _is_within(rest[0]):
        within = _within(rest.pop(0))
    where_node = rest.pop(0) if rest else None
    if rest:
        raise ExpressionError(f"too many arguments: {SIGNATURES[node.name]}", rest[0].start)
    history_calls.warn_range(cx, type_, within, between_node, where_node, summed)
    window_first = summed is not None and not (summed == "revenue" and type_ in DETAILED_TYPES)
    if where_node is None:
        return scans.Range(type_, within, between=between, window_first=window_first)
    where = _where(cx, where_node, node.name, type_)  # type-checks the whole WHERE first
    window_first = window_first or not history_calls.buckets_answer(where_node, type_)
    return scans.Range(type_, within, where, _key_match(cx, where_node), between, window_first)


def _all_time(spec: scans.Range) -> bool:
    return spec.within is None and spec.between is None and spec.where is None


def _key_match(cx: Checker, node: Node) -> tuple[Reader, Fn] | None:
    """For WHERE ``it.F == X`` with X free of ``it``: the reader of F and X, for a fast scan.

    Only when Python's ``==`` is the language's here: F a string, or F and X of
    one scalar type (``same`` differs from ``==`` only for bools against numbers
    and for lists).
    """
    if not (isinstance(node, Binary) and node.op == "=="):
        return None
    for side, other in ((node.left, node.right), (node.right, node.left)):
        if not (_is_it_field(side) and not _mentions_it(other)):
            continue
        assert isinstance(side, Name)
        field = field_path(side, 1, RECORD_FIELDS, "it")
        value = cx.expr(other)
        if field.type == "string" or (
            field.type in ("number", "bool") and value.type in (field.type, "null")
        ):
            return field.read, value.fn
    return None


def _is_it_field(node: Node) -> bool:
    return isinstance(node, Name) and node.parts[0] == "it" and len(node.parts) > 1


def _mentions_it(node: Node) -> bool:
    if isinstance(node, Name):
        return node.parts[0] == "it"
    return any(_mentions_it(child) for child in children(node))


# -- window functions ----------------------------------------------------------


def _count(cx: Checker, node: Call) -> Typed:
    _arity(node, 1, 3)
    spec = _range(cx, node, event_type(node.args[0], "count"), node.args[1:])
    if _all_time(spec):
        return Typed("number", history_calls.all_time_count(spec.type), sure=True)
    return Typed("number", scans.counter(spec), sure=True)


def _exists(cx: Checker, node: Call) -> Typed:
    _arity(node, 1, 3)
    spec = _range(cx, node, event_type(node.args[0], "exists"), node.args[1:])
    if _all_time(spec):
        return Typed("bool", history_calls.all_time_exists(spec.type), sure=True)
    return Typed("bool", scans.finder(spec), sure=True)


def _sum(cx: Checker, node: Call) -> Typed:
    _arity(node, 2, 4)
    type_ = event_type(node.args[0], "sum")
    field = _field(node.args[1], "sum")
    if field.type not in ("number", "any"):
        raise ExpressionError(
            f"sum needs a number field (price, quantity, revenue, ts or props.NAME), "
            f"but {cx.quote(node.args[1])} is {article(field.type)}",
            node.args[1].start,
        )
    summed = history_calls.field_name(node.args[1])
    spec = _range(cx, node, type_, node.args[2:], summed)
    revenue = summed == "revenue" and type_ in DETAILED_TYPES
    if revenue and _all_time(spec):
        return Typed("number", history_calls.all_time_revenue(type_), sure=True)
    return Typed("number", scans.summer(spec, field.read, revenue), sure=True)


def _sum_items(cx: Checker, node: Call) -> Typed:
    """``sum_items(FIELD [, WITHIN or between(FROM, TO)] [, WHERE])`` over purchase lines."""
    _arity(node, 1, 3)
    field = _field(node.args[0], "sum_items")
    if field.type not in ("number", "any"):
        raise ExpressionError(
            f"sum_items needs a number field of a purchase line (revenue, price, quantity or "
            f"props.NAME), but {cx.quote(node.args[0])} is {article(field.type)}",
            node.args[0].start,
        )
    rest = list(node.args[1:])
    within = between = bounds = None
    if rest and history_calls.is_between(rest[0]):
        between_node = rest.pop(0)
        assert isinstance(between_node, Call)
        between = history_calls.between(cx, between_node, item_scans.PURCHASE, warn=False)
        bounds = (between_node.args[0], between_node.args[1])
    elif rest and _is_within(rest[0]):
        within = _within(rest.pop(0))
    where = _where(cx, rest.pop(0), "sum_items", item_scans.PURCHASE) if rest else None
    if rest:
        raise ExpressionError(f"too many arguments: {SIGNATURES['sum_items']}", rest[0].start)
    item_scans.warn_range(cx, within, bounds)
    return Typed("number", item_scans.summer(field.read, within, between, where), sure=True)


def _last(cx: Checker, node: Call) -> Typed:
    _arity(node, 2, 2)
    type_ = event_type(node.args[0], "last")
    field = _field(node.args[1], "last")
    read = field.read

    def last(ctx: Any) -> Any:
        window = ctx.state.windows.get(type_)
        if not window or window[-1].ts < kept_from(ctx.windows, type_, ctx.now):
            return None
        return read(window[-1])

    return Typed(field.type, last)


def _since(cx: Checker, node: Call) -> Typed:
    _arity(node, 1, 1)
    type_ = event_type(node.args[0], "since")
    return Typed("number", history_calls.since_last(type_))


def _first(cx: Checker, node: Call) -> Typed:
    _arity(node, 1, 1)
    return history_calls.first(cx, node, event_type(node.args[0], "first"))


def _since_first(cx: Checker, node: Call) -> Typed:
    _arity(node, 1, 1)
    return history_calls.since_first(cx, node, event_type(node.args[0], "since_first"))


def _date(cx: Checker, node: Call) -> Typed:
    _arity(node, 1, 1)
    return history_calls.date(cx, node)


def _between(cx: Checker, node: Call) -> Typed:
    _arity(node, 2, 2)
    return history_calls.misplaced_between(cx, node)


# -- engagement, cart, favorites -----------------------------------------------


def _choice(node: Node, choices: tuple[str, ...], what: str) -> str:
    """A CHANNEL or KIND argument: a bare name or a string among ``choices``."""
    if isinstance(node, Name) and len(node.parts) == 1:
        value = node.parts[0]
    elif isinstance(node, Literal) and isinstance(node.value, str):
        value = node.value
    else:
        raise ExpressionError(f"expected {what} name, one of {', '.join(choices)}", node.start)
    if value not in choices:
        raise ExpressionError(f"unknown {what} {cut(value)!r}{suggest(value, choices)}", node.start)
    return value


def _engaged(cx: Checker, node: Call) -> Typed:
    _arity(node, 1, 2)
    channel = _choice(node.args[0], CHANNELS, "channel")
    kinds = (
        frozenset({_choice(node.args[1], ENGAGEMENT_KINDS, "engagement kind")})
        if len(node.args) == 2
        else DEFAULT_KINDS
    )

    def engaged(ctx: Any) -> bool:
        window = ctx.state.windows.get("engagement")
        actions = ctx.actions
        if not window or not actions:
            return False
        return any(
            record.channel == channel and record.kind in kinds and record.action_id in actions
            for record in reversed(window)  # recent engagement first: it is the likely match
        )

    return Typed("bool", engaged, sure=True)


def _most_used_channel(cx: Checker, node: Call) -> Typed:
    _arity(node, 0, 1)
    within = _within(node.args[0]) if node.args else None

    def most_used_channel(ctx: Any) -> str | None:
        window = ctx.state.windows.get("engagement")
        if not window:
            return None
        since = kept_from(ctx.windows, "engagement", ctx.now)
        if within is not None:
            since = max(since, ctx.now - within)
        counts: dict[str, int] = {}
        for record in window:  # oldest first: a later record of a tie wins below
            if record.ts >= since and record.kind in DEFAULT_KINDS and record.channel:
                counts[record.channel] = counts.pop(record.channel, 0) + 1
        if not counts:
            return None
        most = max(counts.values())
        return [channel for channel, n in counts.items() if n == most][-1]

    return Typed("string", most_used_channel)


def _engaged_in(cx: Checker, node: Call) -> Typed:
    _arity(node, 1, 2)
    arg = node.args[0]
    if isinstance(arg, Name) and len(arg.parts) == 1:
        journey = arg.parts[0]
    elif isinstance(arg, Literal) and isinstance(arg.value, str):
        journey = arg.value
    else:
        raise ExpressionError("expected a journey id, e.g. engaged_in(abandoned_cart)", arg.start)
    kinds = (
        frozenset({_choice(node.args[1], ENGAGEMENT_KINDS, "engagement kind")})
        if len(node.args) == 2
        else DEFAULT_KINDS
    )

    def engaged(ctx: Any) -> bool:
        since = kept_from(ctx.windows, "engagement", ctx.now)
        return experiments.engaged_in(ctx.state, journey, kinds, since)

    return Typed("bool", engaged, sure=True)


def _product(cx: Checker, node: Call) -> Fn:
    _arity(node, 1, 1)
    return _product_id(cx, node, node.args[0])


def _product_id(cx: Checker, node: Call, arg: Node) -> Fn:
    product = cx.expr(arg)
    if product.type not in ("string", "any"):
        raise ExpressionError(
            f"{node.name} needs a product id (a string), but {cx.quote(arg)} is "
            f"{article(product.type)}",
            arg.start,
        )
    return product.fn


def _in_cart(cx: Checker, node: Call) -> Typed:
    find = _product(cx, node)

    def in_cart(ctx: Any) -> bool:
        product = find(ctx)
        line = ctx.state.cart.get(product) if type(product) is str else None
        return line is not None and line.ts >= cart_kept_from(ctx.windows, ctx.now)

    return Typed("bool", in_cart, sure=True)


def _favorited(cx: Checker, node: Call) -> Typed:
    find = _product(cx, node)

    def favorited(ctx: Any) -> bool:
        product = find(ctx)
        ts = ctx.state.favorites.get(product) if type(product) is str else None
        return ts is not None and ts >= favorites_kept_from(ctx.windows, ctx.now)

    return Typed("bool", favorited, sure=True)


# -- the customer base ---------------------------------------------------------------


def _rfm(cx: Checker, node: Call) -> Typed:
    _arity(node, 0, 0)

    def rfm(ctx: Any) -> RfmScore | None:
        found = ctx.rfm_score
        if found is not NOT_YET:  # segments and conditions asking again in one evaluation
            return found  # type: ignore[no-any-return]
        book = ctx.rfm
        bounds = None if book is None else book.at(ctx.now)
        found = None if bounds is None else score(bounds, rfm_inputs(ctx.state))
        ctx.rfm_score = found
        return found

    return Typed("record", rfm, fields=RFM_FIELDS)


# -- the catalog ---------------------------------------------------------------------


def _catalog_product(cx: Checker, node: Call) -> Typed:
    find = _product(cx, node)

    def product(ctx: Any) -> Any:
        catalog = ctx.catalog
        pid = find(ctx)
        return None if catalog is None or type(pid) is not str else catalog.product(pid)

    return Typed("record", product, fields=PRODUCT_FIELDS)


def _bought_together(cx: Checker, node: Call) -> Typed:
    _arity(node, 2, 2)
    find = _product_id(cx, node, node.args[0])
    count = cx.expr(node.args[1])
    if count.type not in ("number", "any"):
        raise ExpressionError(
            f"bought_together's N is how many product ids to return (a number), but "
            f"{cx.quote(node.args[1])} is {article(count.type)}",
            node.args[1].start,
        )
    how_many = count.fn

    def bought_together(ctx: Any) -> list[str]:
        catalog = ctx.catalog
        pid = find(ctx)
        n = how_many(ctx)
        if catalog is None or type(pid) is not str or not isinstance(n, int | float):
            return []
        return catalog.bought_together(pid, int(n))  # type: ignore[no-any-return]

    return Typed("list", bought_together, sure=True)


_COMPILERS: Final[dict[str, Callable[[Checker, Call], Typed]]] = {
    "count": _count,
    "exists": _exists,
    "sum": _sum,
    "sum_items": _sum_items,
    "last": _last,
    "since": _since,
    "first": _first,
    "since_first": _since_first,
    "date": _date,
    "between": _between,
    "engaged": _engaged,
    "in_cart": _in_cart,
    "favorited": _favorited,
    "rfm": _rfm,
    "product": _catalog_product,
    "bought_together": _bought_together,
    "most_used_channel": _most_used_channel,
    "engaged_in": _engaged_in,
}
