"""Names of the expression language and how each one is read, resolved at compile time.

Rules of this interface:

* Roots: ``event.F``, ``entry.F`` (event fields, :data:`EVENT_FIELDS`),
  ``it.F`` (stored-record fields, :data:`RECORD_FIELDS`, only inside a WHERE
  argument), ``profile.F`` (one attribute, type ``any``), ``cart.total``,
  ``cart.count``, ``cart.items``, ``favorites``, ``now`` and ``anonymous``
  (true while no event of the user carried a ``user_id``: a guest, known only
  by ``anon_id``; ``UserState.identified``). Which of
  ``event``, ``entry`` and ``it`` a place allows is the caller's ``allowed``.
* ``props`` (and a profile event's ``attributes``) are objects: ``event.props``
  reads the whole object and ``event.props.a.b`` digs into it; both are ``any``.
* Field reads follow the event contract's defaults: ``quantity`` is 1 when a
  product event omits it, a purchase's ``revenue`` is the sum of its items when
  omitted (as the state windows store it), and ``items`` reads as the list of
  the items' product ids, like ``cart.items``.
* A read never raises: a missing event, field or attribute is ``None``.
* ``cart.*`` and ``favorites`` read the lines and favorites that count at
  ``now`` (:mod:`engine.retention`), whether or not the state was pruned.
* Unknown names raise :class:`~engine.errors.ExpressionError` at the bad part,
  with a "did you mean" suggestion when one is close.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Final

from engine.errors import ExpressionError
from engine.events import STANDARD_TYPES, suggest
from engine.retention import kept_cart, kept_favorites
from engine.rules.nodes import Name
from engine.rules.typed import Reader, Type, Typed, article, cut
from engine.state import _revenue as purchase_revenue  # one rule for the revenue default
from engine.state import lines_count, lines_total

ROOTS: Final = ("event", "entry", "it", "profile", "cart", "favorites", "now", "anonymous")
FUNCTIONS: Final = (
    "count", "exists", "sum", "sum_items", "last", "since", "first", "since_first", "date",
    "between", "engaged", "in_cart", "favorited", "rfm", "in_segment", "product",
    "bought_together", "most_used_channel", "engaged_in",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Field:
    """One readable field: its static type, how to read it, whether it is an object."""

    type: Type
    read: Reader
    nested: bool = False  # an object: `F.a.b` digs into it


def _quantity_of_record(record: Any) -> Any:
    quantity = record.quantity
    if quantity is None and record.product_id is not None:
        return 1  # the contract's default for product events
    return quantity


def _item_ids(source: Any) -> list[str] | None:
    items = source.items
    return None if items is None else [item.product_id for item in items]


_SHARED: Final[Mapping[str, Field]] = {
    **{
        name: Field("string", attrgetter(name))
        for name in (
            "product_id",
            "category",
            "query",
            "order_id",
            "channel",
            "kind",
            "action_id",
            "via",
        )
    },
    "ts": Field("number", attrgetter("ts")),
    "price": Field("number", attrgetter("price")),
    "old_price": Field("number", attrgetter("old_price")),
    "drop_pct": Field("number", attrgetter("drop_pct")),
    "quantity": Field("number", _quantity_of_record),
    "granted": Field("bool", attrgetter("granted")),
    "items": Field("list", _item_ids),
    "props": Field("any", attrgetter("props"), nested=True),
}

EVENT_FIELDS: Final[Mapping[str, Field]] = {
    **_SHARED,
    **{
        name: Field("string", attrgetter(name))
        for name in ("event_id", "type", "user_id", "anon_id", "name", "url", "image")
    },
    "stock": Field("number", attrgetter("stock")),
    "revenue": Field("number", purchase_revenue),
    "attributes": Field("any", attrgetter("attributes"), nested=True),
}

# Event fields an expression reads as exactly `getattr(event, F)`, always a hashable
# scalar or None: what an index may key on. Not quantity and revenue (defaulted),
# items (ids), props and attributes (objects).
PLAIN_EVENT_FIELDS: Final = frozenset(
    name
    for name, field in EVENT_FIELDS.items()
    if field.type in ("string", "number", "bool") and name not in ("quantity", "revenue")
)

# Stored records already hold the defaulted revenue (engine.windows.stored).
RECORD_FIELDS: Final[Mapping[str, Field]] = {
    **_SHARED,
    "revenue": Field("number", attrgetter("revenue")),
}

# Read from the cart lines that count at `now` (engine.retention.kept_cart).
CART_FIELDS: Final[Mapping[str, Field]] = {
    "total": Field("number", lines_total),
    "count": Field("number", lines_count),
    "items": Field("list", list),
}


def field_path(node: Name, first: int, fields: Mapping[str, Field], label: str) -> Field:
    """The field that ``node.parts[first:]`` names in ``fields``.

    ``label`` is the root as messages show it (``event``), or "" for a bare field.
    """
    if len(node.parts) <= first:
        example = "price" if "price" in fields else next(iter(fields))
        raise ExpressionError(f"{label} needs a field, e.g. {label}.{example}", node.end)
    name = node.parts[first]
    qualified = f"{label}.{cut(name)}" if label else cut(name)
    field = fields.get(name)
    if field is None:
        raise ExpressionError(
            f"unknown field {qualified}{suggest(name, fields)}", node.offsets[first]
        )
    keys = node.parts[first + 1 :]
    if not keys:
        return field
    if not field.nested:
        raise ExpressionError(
            f"{qualified} is {article(field.type)}, it has no field {cut(keys[0])!r}",
            node.offsets[first + 1],
        )
    return Field("any", _dig(field.read, keys))


def _dig(read: Reader, keys: tuple[str, ...]) -> Reader:
    """A reader of ``keys`` inside the object ``read`` returns (None once it is not one)."""
    if len(keys) == 1:
        key = keys[0]
        return lambda source: value.get(key) if type(value := read(source)) is dict else None

    def dig(source: Any) -> Any:
        value = read(source)
        for key in keys:
            if type(value) is not dict:
                return None
            value = value.get(key)
        return value

    return dig


def resolve(node: Name, allowed: Container[str]) -> Typed:
    """Compile a name; ``allowed`` says which of ``event``, ``entry``, ``it`` are bound here."""
    root = node.parts[0]
    if root in ("event", "entry", "it") and root not in allowed:
        raise ExpressionError(_unbound(root), node.offset)
    if root in ("event", "entry"):
        return _event_field(node, root)
    if root == "it":
        field = field_path(node, 1, RECORD_FIELDS, "it")
        read = field.read
        # `it` is always bound where `it.F` compiles: only window functions call
        # a WHERE, after setting ctx.it, so no None check is needed per record.
        return Typed(field.type, lambda ctx: read(ctx.it))
    if root == "profile":
        return _profile(node)
    if root == "cart":
        return _cart(node)
    if root in ("favorites", "now", "anonymous"):
        return _bare(node)
    raise ExpressionError(_unknown(root), node.offset)


def _unbound(root: str) -> str:
    if root == "it":
        return (
            "'it' is only bound inside a WHERE argument, "
            "e.g. count(view_product, 24h, it.price > 100)"
        )
    if root == "entry":
        return "'entry' is not available here: only exit and step conditions have an enrollment"
    return "'event' is not available here"


def _unknown(root: str) -> str:
    if root in FUNCTIONS:
        return f"{root} is a function: call it, e.g. {root}(...)"
    if root in STANDARD_TYPES:
        return f"{root!r} is an event type: use it in a function, e.g. count({root})"
    return f"unknown name {cut(root)!r}{suggest(root, ROOTS)}"


def _event_field(node: Name, root: str) -> Typed:
    field = field_path(node, 1, EVENT_FIELDS, root)
    read = field.read
    if root == "event":
        return Typed(field.type, lambda ctx: None if (e := ctx.event) is None else read(e))
    return Typed(field.type, lambda ctx: None if (e := ctx.entry) is None else read(e))


def _profile(node: Name) -> Typed:
    if len(node.parts) != 2:
        at = node.end if len(node.parts) == 1 else node.offsets[2]
        raise ExpressionError(
            "profile takes one attribute name, e.g. profile.first_name "
            "(attributes are single values)",
            at,
        )
    name = node.parts[1]
    return Typed("any", lambda ctx: ctx.state.profile.get(name))


def _cart(node: Name) -> Typed:
    field = field_path(node, 1, CART_FIELDS, "cart")
    read = field.read
    return Typed(
        field.type, lambda ctx: read(kept_cart(ctx.state.cart, ctx.windows, ctx.now)), sure=True
    )


def _bare(node: Name) -> Typed:
    root = node.parts[0]
    if len(node.parts) > 1:
        raise ExpressionError(f"{root} has no fields", node.offsets[1])
    if root == "now":
        return Typed("number", lambda ctx: ctx.now, sure=True)
    if root == "anonymous":
        return Typed("bool", lambda ctx: not ctx.state.identified, sure=True)
    return Typed(
        "list",
        lambda ctx: list(kept_favorites(ctx.state.favorites, ctx.windows, ctx.now)),
        sure=True,
    )
