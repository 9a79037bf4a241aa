"""Static types of the expression language and compiled, typed sub-expressions.

Rules of this interface:

* A :data:`Type` is what the compiler knows before any event arrives:
  ``number``, ``string``, ``bool``, ``list``, ``null`` (the literal), ``record``
  (a function's result with named fields, such as ``rfm()``: its
  :attr:`Typed.fields` say which, read as ``rfm().r``), or ``any`` (profile
  attributes, ``props``: checked only at run time).
* Any value may also be ``None`` at run time (a missing field); a
  :class:`Typed` with ``sure=True`` promises it never is, and always is of its
  type, so operators may skip their run-time guards.
* A :class:`Typed` with ``const=True`` ignores its context: ``value`` is its
  result, and operators over constants are folded at compile time.
* Numbers at run time are exactly ``int`` or ``float`` (never ``bool``); lists
  are ``list`` or ``tuple``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, cast

from engine.rules.context import Context

if TYPE_CHECKING:
    from engine.rules.nodes import Node

Type = Literal["number", "string", "bool", "list", "null", "record", "any"]
Fn = Callable[[Context], Any]
Reader = Callable[[Any], Any]  # a field of an event or a stored record

NUMBERS: Final = frozenset({int, float})
LISTS: Final = frozenset({list, tuple})
_ARTICLES: Final = {
    "number": "a number",
    "string": "a string",
    "bool": "a condition (true/false)",
    "list": "a list",
    "null": "null",
    "record": "a record",
    "any": "anything",
}
# A constant's function is called once, at compile time, with no context at all.
_NO_CONTEXT: Final = cast(Context, None)


@dataclass(frozen=True, slots=True)
class Typed:
    """A compiled sub-expression: its static type, its function, what else is known."""

    type: Type
    fn: Fn
    sure: bool = False  # never None at run time, always of `type`
    const: bool = False  # `fn` ignores its context and returns `value`
    value: Any = None
    # A record's fields: name -> (type, reader of that field from the record value).
    fields: Mapping[str, tuple[Type, Reader]] | None = None


class Checker(Protocol):
    """What the function and operator compilers need from the compiler driving them."""

    def expr(self, node: Node) -> Typed:
        """Compile and type-check a sub-expression."""
        ...

    def where(self, node: Node, record_type: str = "") -> Typed:
        """Compile a WHERE argument, with ``it`` bound to a record of ``record_type``."""
        ...

    @property
    def record_type(self) -> str:
        """The event type of the record ``it`` is bound to here ("" outside a WHERE)."""
        ...

    def quote(self, node: Node) -> str:
        """The source text of a node, for messages."""
        ...

    @property
    def timezone(self) -> str:
        """The rules' time zone (IANA name): dates and calendar months are read in it."""
        ...

    def warn(self, offset: int, message: str) -> None:
        """Record a warning at ``offset`` of the text; the compile goes on."""
        ...


def cut(text: str, limit: int = 80) -> str:
    """A name or token as messages show it: whole up to ``limit`` characters, else cut
    with ``...``, so that one huge identifier cannot make a huge message."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def article(type_: Type) -> str:
    """How messages name a type: ``a number``, ``a condition (true/false)``..."""
    return _ARTICLES[type_]


def type_of(value: Any) -> Type:
    """The static type of a constant value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "list"


def constant(value: Any, type_: Type | None = None) -> Typed:
    """A constant sub-expression (``type_`` defaults to the value's own type)."""
    return Typed(
        type_ or type_of(value),
        lambda ctx: value,
        sure=value is not None,
        const=True,
        value=value,
    )


def folded(typed: Typed, *operands: Typed) -> Typed:
    """``typed`` computed now when every operand is a constant; else ``typed`` itself.

    The static type is kept even when the value is None (``1 / 0``), so that
    folding never changes what type-checks.
    """
    if not all(operand.const for operand in operands):
        return typed
    return constant(typed.fn(_NO_CONTEXT), typed.type)


def is_number(value: Any) -> bool:
    """True for an int or float, and not for a bool (which Python counts as an int)."""
    return type(value) in NUMBERS


def same(a: Any, b: Any) -> bool:
    """Equality of the language: ``true == 1`` is false, a list equals a tuple."""
    if type(a) is bool or type(b) is bool:
        return a is b
    if type(a) in LISTS and type(b) in LISTS:
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def member(item: Any, box: Any) -> bool:
    """``item in box`` of the language: never raises; ``None`` on either side is false.

    A string holds substrings, a list holds elements (compared with :func:`same`),
    an object (``props``) holds its keys; anything else holds nothing.
    """
    if item is None:
        return False
    kind = type(box)
    if kind is str:
        return type(item) is str and item in box
    if kind in LISTS:
        if type(item) is str:  # the common case (product ids): C-speed, and exact for strings
            return item in box
        return any(same(item, element) for element in box)
    if kind is dict:
        return type(item) is str and item in box
    return False
