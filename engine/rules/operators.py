"""Operators of the expression language: type rules at compile time, closures at run time.

Rules of this interface (each error points at the operand that breaks it):

* ``and``/``or``/``not`` take conditions (``bool`` or ``any``). They follow
  three-valued logic: a value that is not ``true``/``false`` (``null``, or a
  non-bool ``any``) is unknown, so ``null and false`` is false, ``null and
  true`` is ``null``, ``not null`` is ``null``. ``and``/``or`` evaluate their
  right side only when the left does not decide.
* ``==``/``!=`` refuse two known but different types (``event.price == 'abc'``);
  comparing with ``null`` is always allowed. ``true == 1`` is false.
* ``< <= > >=`` take numbers (or ``any``); at run time a non-number (``null``)
  makes them false.
* ``in``/``not in`` (``item in box``) and ``contains`` (``box contains item``)
  need a list or string box (or ``any``); a string box holds substrings. A
  ``null`` on either side makes ``in``/``contains`` false (and ``not in`` true).
* ``+ - * /`` and unary ``-`` take numbers (or ``any``); at run time a
  non-number operand, a division by zero or an overflow gives ``null``.
* Nothing here raises at run time.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any, Final

from engine.errors import ExpressionError
from engine.rules.nodes import Binary, Node, Unary
from engine.rules.typed import (
    NUMBERS,
    Checker,
    Fn,
    Type,
    Typed,
    article,
    folded,
    member,
    same,
)

_ORDER: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_ARITHMETIC: Final[dict[str, Callable[[Any, Any], Any]]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
}
# Types whose values (or None) Python's == compares exactly as the language does;
# both sides then share the type, or the type check would have refused them.
_PLAIN_EQUALITY: Final = frozenset({"number", "string", "bool"})


def _describe(cx: Checker, node: Node, typed: Typed) -> str:
    """``event.price is a number``: how messages name an operand and its type."""
    return f"{cx.quote(node)} is {article(typed.type)}"


def _require(cx: Checker, node: Node, typed: Typed, allowed: tuple[Type, ...], what: str) -> None:
    if typed.type not in allowed and typed.type != "any":
        raise ExpressionError(f"{what}, but {_describe(cx, node, typed)}", node.start)


def unary(cx: Checker, node: Unary) -> Typed:
    """Compile ``not x`` or ``-x``."""
    operand = cx.expr(node.operand)
    if node.op == "not":
        _require(cx, node.operand, operand, ("bool",), "'not' needs a condition")
        return folded(_not(operand), operand)
    _require(cx, node.operand, operand, ("number",), "'-' needs a number")
    return folded(_negate(operand), operand)


def _not(operand: Typed) -> Typed:
    fn = operand.fn
    if operand.sure:
        return Typed("bool", lambda ctx: not fn(ctx), sure=True)
    return Typed("bool", lambda ctx: (not v) if type(v := fn(ctx)) is bool else None)


def _negate(operand: Typed) -> Typed:
    fn = operand.fn
    if operand.sure:
        return Typed("number", lambda ctx: -fn(ctx), sure=True)
    return Typed("number", lambda ctx: -v if type(v := fn(ctx)) in NUMBERS else None)


def binary(cx: Checker, node: Binary) -> Typed:
    """Compile ``left op right``."""
    left = cx.expr(node.left)
    right = cx.expr(node.right)
    op = node.op
    if op in ("and", "or"):
        typed = _logical(cx, node, left, right)
    elif op in ("==", "!="):
        typed = _equality(cx, node, left, right)
    elif op in _ORDER:
        typed = _ordering(cx, node, left, right)
    elif op in ("in", "not in", "contains"):
        typed = _membership(cx, node, left, right)
    else:
        typed = _arithmetic(cx, node, left, right)
    return folded(typed, left, right)


# -- and / or ----------------------------------------------------------------


def _logical(cx: Checker, node: Binary, left: Typed, right: Typed) -> Typed:
    need = f"'{node.op}' needs conditions on both sides"
    _require(cx, node.left, left, ("bool",), need)
    _require(cx, node.right, right, ("bool",), need)
    lf, rf = left.fn, right.fn
    if left.sure and right.sure:  # plain Python short-circuit is exact for true bools
        fn: Fn = (lambda c: lf(c) and rf(c)) if node.op == "and" else (lambda c: lf(c) or rf(c))
        return Typed("bool", fn, sure=True)
    return Typed("bool", _and(lf, rf) if node.op == "and" else _or(lf, rf))


def _and(lf: Fn, rf: Fn) -> Fn:
    def fn(ctx: Any) -> bool | None:
        a = lf(ctx)
        if a is False:
            return False
        b = rf(ctx)
        if b is False:
            return False
        return True if a is True and b is True else None

    return fn


def _or(lf: Fn, rf: Fn) -> Fn:
    def fn(ctx: Any) -> bool | None:
        a = lf(ctx)
        if a is True:
            return True
        b = rf(ctx)
        if b is True:
            return True
        return False if a is False and b is False else None

    return fn


# -- comparisons ---------------------------------------------------------------


def _equality(cx: Checker, node: Binary, left: Typed, right: Typed) -> Typed:
    known = {left.type, right.type} - {"any", "null"}
    if len(known) > 1:
        raise ExpressionError(
            f"'{node.op}' compares {cx.quote(node.left)} ({article(left.type)}) with "
            f"{cx.quote(node.right)} ({article(right.type)}): they can never be equal",
            node.right.start,
        )
    equal = _equal(left, right)
    if node.op == "==":
        return Typed("bool", equal, sure=True)
    return Typed("bool", lambda c: not equal(c), sure=True)


def _equal(left: Typed, right: Typed) -> Fn:
    lf, rf = left.fn, right.fn
    if right.const and right.value is None:
        return lambda c: lf(c) is None
    if left.const and left.value is None:
        return lambda c: rf(c) is None
    if left.type in _PLAIN_EQUALITY and right.type in _PLAIN_EQUALITY:
        if right.const:
            value = right.value
            return lambda c: lf(c) == value
        return lambda c: lf(c) == rf(c)
    return lambda c: same(lf(c), rf(c))


def _ordering(cx: Checker, node: Binary, left: Typed, right: Typed) -> Typed:
    need = f"'{node.op}' needs numbers"
    _require(cx, node.left, left, ("number",), need)
    _require(cx, node.right, right, ("number",), need)
    compare = _ORDER[node.op]
    lf, rf = left.fn, right.fn
    if right.const and right.sure:  # the hot paths: `count(...) >= 3`, `it.price > 100`
        value = right.value
        if left.sure:
            fn: Fn = lambda c: compare(lf(c), value)  # noqa: E731
        else:
            fn = lambda c: type(a := lf(c)) in NUMBERS and compare(a, value)  # noqa: E731
    elif left.sure and right.sure:
        fn = lambda c: compare(lf(c), rf(c))  # noqa: E731
    else:
        fn = lambda c: (  # noqa: E731
            type(a := lf(c)) in NUMBERS and type(b := rf(c)) in NUMBERS and compare(a, b)
        )
    return Typed("bool", fn, sure=True)


def _membership(cx: Checker, node: Binary, left: Typed, right: Typed) -> Typed:
    if node.op == "contains":
        box_node, box, item_node, item = node.left, left, node.right, right
    else:
        box_node, box, item_node, item = node.right, right, node.left, left
    _require(cx, box_node, box, ("list", "string"), f"'{node.op}' needs a list or a string")
    if box.type == "string" and item.type not in ("string", "any", "null"):
        raise ExpressionError(
            f"'{node.op}' looks for text in a string, but {_describe(cx, item_node, item)}",
            item_node.start,
        )
    contains = _member(item, box)
    if node.op == "not in":
        return Typed("bool", lambda c: not contains(c), sure=True)
    return Typed("bool", contains, sure=True)


def _member(item: Typed, box: Typed) -> Fn:
    find = item.fn
    if box.const and box.type == "list" and all(type(v) is str for v in box.value):
        # A list of string literals: a set lookup. A non-string item cannot equal
        # any of them, so requiring a str keeps `same`'s meaning exactly.
        choices = frozenset(box.value)
        return lambda c: type(v := find(c)) is str and v in choices
    within = box.fn
    return lambda c: member(find(c), within(c))


# -- arithmetic -----------------------------------------------------------------


def _arithmetic(cx: Checker, node: Binary, left: Typed, right: Typed) -> Typed:
    need = f"'{node.op}' needs numbers"
    _require(cx, node.left, left, ("number",), need)
    _require(cx, node.right, right, ("number",), need)
    apply = _ARITHMETIC[node.op]
    lf, rf = left.fn, right.fn

    def fn(ctx: Any) -> Any:
        a = lf(ctx)
        b = rf(ctx)
        if type(a) not in NUMBERS or type(b) not in NUMBERS:
            return None
        try:
            return apply(a, b)
        except ArithmeticError:  # division by zero, a float overflow: null, never a crash
            return None

    return Typed("number", fn)
