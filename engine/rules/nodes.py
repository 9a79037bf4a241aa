"""The syntax tree of a rules expression, as the parser builds it.

Rules of this interface:

* Nodes are frozen and hold no behaviour; the compiler gives them meaning.
* Every node has ``offset``, the 0-based position of the token that names it
  (the operator of a :class:`Binary` or :class:`Unary`, the first name of a
  :class:`Name`, the function name of a :class:`Call`, the field name of an
  :class:`Attr`), where errors about the
  node point; and ``start``/``end``, the slice of the source text it covers
  (parentheses included), which error messages quote.
"""

from __future__ import annotations

from dataclasses import dataclass

Scalar = int | float | str | bool | None


@dataclass(frozen=True, slots=True)
class Literal:
    """A number, string, ``true``/``false``/``null``, or a duration (in ms)."""

    value: Scalar
    offset: int
    start: int
    end: int
    duration: bool = False


@dataclass(frozen=True, slots=True)
class ListLit:
    """``[a, b, ...]``: a list of expressions."""

    items: tuple[Node, ...]
    offset: int
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Name:
    """A dotted name such as ``event.props.size``; ``offsets`` has one entry per part."""

    parts: tuple[str, ...]
    offsets: tuple[int, ...]
    offset: int
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Unary:
    """``-x`` or ``not x``."""

    op: str
    operand: Node
    offset: int
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Binary:
    """``left op right``; ``op`` is one of ``or and == != < <= > >= in not in contains + - * /``."""

    op: str
    left: Node
    right: Node
    offset: int
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Call:
    """``name(args...)``: a function of the language."""

    name: str
    args: tuple[Node, ...]
    offset: int
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Attr:
    """``call(...).field``: a field of a function's result, such as ``rfm().r``."""

    base: Node
    name: str
    offset: int
    start: int
    end: int


Node = Literal | ListLit | Name | Unary | Binary | Call | Attr


def children(node: Node) -> tuple[Node, ...]:
    """The direct sub-expressions of a node, left to right."""
    if isinstance(node, Binary):
        return (node.left, node.right)
    if isinstance(node, Unary):
        return (node.operand,)
    if isinstance(node, Call):
        return node.args
    if isinstance(node, ListLit):
        return node.items
    if isinstance(node, Attr):
        return (node.base,)
    return ()
