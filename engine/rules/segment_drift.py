"""Segment drift: which way a segment's value can move with time alone (SPEC section 9).

Rules of this interface:

* :func:`drift` reads a segment's syntax tree and says how its value can move
  while the user's state stays the same and only ``now`` advances:
  ``"const"`` (it cannot change), ``"falls"`` (it can only go from true to
  false: a user outside stays outside until an event), ``"rises"`` (only
  from false to true: a member stays a member until an event) or ``"any"``.
  The engine skips the moments of change of a ``falls`` segment the user is
  not in and of a ``rises`` segment the user is in (:mod:`engine.segments`).
* It is conservative: what it does not know moves ``"any"`` way. The values
  of a condition are ordered false < null < true; ``and`` and ``or`` keep the
  direction of their sides, ``not`` and ``-`` reverse it.
* The atoms: ``now`` and ``since(TYPE)`` rise; ``count(TYPE, WITHIN [, WHERE])``
  and ``exists(TYPE, WITHIN [, WHERE])`` fall (the records inside a WITHIN
  window only leave it), unless WHERE itself moves with time; ``sum`` over
  WITHIN moves any way (a field may be negative); a window function without
  WITHIN, ``last``, a literal, ``cart``, ``favorites`` and ``profile`` fields
  are constant in time. ``a > b`` and ``a >= b`` move as ``a - b`` does;
  ``a < b`` and ``a <= b`` the other way; ``==``, ``!=``, ``in``, ``*`` and
  ``/`` of anything that moves move any way. ``in_segment('S')`` moves as S
  does (``known``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Final, Literal

from engine.errors import ExpressionError
from engine.rules.nodes import Attr, Binary, Call, ListLit, Name, Node, Unary
from engine.rules.nodes import Literal as LiteralNode
from engine.rules.segment_refs import FUNCTION as IN_SEGMENT
from engine.rules.segment_refs import segment_name

Drift = Literal["const", "falls", "rises", "any"]
CONST: Final = "const"
FALLS: Final = "falls"
RISES: Final = "rises"
ANY: Final = "any"
_REVERSED: Final[Mapping[Drift, Drift]] = {CONST: CONST, FALLS: RISES, RISES: FALLS, ANY: ANY}
_SHRINKING: Final = frozenset({"count", "exists"})  # over a WITHIN window: fewer records later
_CONSTANT_CALLS: Final = frozenset({"last", "first", "in_cart", "favorited", "date"})


def combined(a: Drift, b: Drift) -> Drift:
    """The drift of something monotone in both ``a`` and ``b`` (``and``, ``or``, ``+``)."""
    if a == CONST:
        return b
    if b == CONST or a == b:
        return a
    return ANY


def reversed_drift(a: Drift) -> Drift:
    """The drift of something antitone in ``a`` (``not``, ``-``)."""
    return _REVERSED[a]


def drift(node: Node, known: Mapping[str, Drift]) -> Drift:
    """Which way ``node``'s value can move with time alone (module rules); ``known``
    holds the drift of the segments it names."""
    if isinstance(node, Name):
        if node.parts[0] != "now":
            return CONST
        return RISES if len(node.parts) == 1 else ANY
    if isinstance(node, Unary):
        return reversed_drift(drift(node.operand, known))
    if isinstance(node, Binary):
        return _binary(node, known)
    if isinstance(node, Call):
        return _call(node, known)
    if isinstance(node, Attr):
        return _constant_or_any([node.base], known)
    if isinstance(node, ListLit):
        return _constant_or_any(list(node.items), known)
    return CONST  # a literal


def _binary(node: Binary, known: Mapping[str, Drift]) -> Drift:
    left, right = drift(node.left, known), drift(node.right, known)
    op = node.op
    if op in ("and", "or", "+"):
        return combined(left, right)
    difference = combined(left, reversed_drift(right))  # how left - right moves
    if op in (">", ">=", "-"):
        return difference
    if op in ("<", "<="):
        return reversed_drift(difference)
    return CONST if left == right == CONST else ANY


def _call(node: Call, known: Mapping[str, Drift]) -> Drift:
    name = node.name
    if name == IN_SEGMENT:
        found: Drift = ANY
        with contextlib.suppress(ExpressionError):  # the compiler reports a bad call
            found = known.get(segment_name(node), ANY)
        return found
    if name == "since":
        return RISES
    if name in ("count", "exists", "sum"):
        return _window(node, known)
    if name in _CONSTANT_CALLS:  # TYPE and FIELD names are constant too
        return _constant_or_any(list(node.args), known)
    return ANY  # between, rfm and whatever the analysis does not know


def _window(node: Call, known: Mapping[str, Drift]) -> Drift:
    """``count``/``exists``/``sum``: TYPE, then (``sum``) FIELD, WITHIN and WHERE."""
    within = False
    for arg in node.args[2 if node.name == "sum" else 1 :]:
        if isinstance(arg, Name) and arg.parts[0] != "now":
            continue  # a FIELD, or a WHERE that is one bool field: constant
        if _is_duration(arg):
            within = True
        elif drift(arg, known) != CONST:
            return ANY  # a WHERE that reads the clock
    if not within:
        return CONST
    return FALLS if node.name in _SHRINKING else ANY


def _is_duration(node: Node) -> bool:
    return isinstance(node, LiteralNode) and node.duration


def _constant_or_any(nodes: list[Node], known: Mapping[str, Drift]) -> Drift:
    return CONST if all(drift(n, known) == CONST for n in nodes) else ANY
