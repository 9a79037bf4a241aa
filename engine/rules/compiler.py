"""Compile rules expressions (SPEC section 2) into fast, type-checked closures.

Rules of this interface:

* :func:`compile_expression` parses the text (never Python ``eval``), checks
  every name and type once, and returns a :class:`~engine.rules.model.Condition`
  whose function is a tree of closures: field names are resolved to attribute
  getters and constants folded at compile time.
* It raises :class:`~engine.errors.ExpressionError` at the first problem; the
  message is one line (quoted source spanning lines is joined with a space)
  of bounded length (quoted source and names are cut with ``...``),
  starts with ``scope.where`` (``"trigger.if: unknown field
  event.prize (did you mean 'price'?)"``) and ``offset`` is the 0-based
  position of the offending token in ``text``.
* :class:`Scope` says which names the place allows: ``event.F`` when
  ``event``, ``entry.F`` when ``entry``; ``it.F`` is bound only inside a WHERE
  argument, wherever the expression appears.
* With ``boolean=True`` (the default) the result must be a condition (``bool``,
  or ``any`` such as ``profile.vip``).
* The compiled function never raises for missing data (see the rules of
  :mod:`engine.rules.operators` and :mod:`engine.rules.functions`); only a
  ``true`` result makes :meth:`Condition.holds` true.
* Beyond SPEC section 2: list literals (``event.category in ['shoes', 'bags']``)
  and ``not in``.
* A field of a call's result (``rfm().r``) must be one the function's record
  type names (:attr:`~engine.rules.typed.Typed.fields`), else an error with a
  "did you mean"; a field of ``null`` is ``null``.
* ``Condition.calls`` names the functions the expression calls, so the engine
  knows whether the rules need base-wide figures such as ``rfm()``'s.
* ``Scope.timezone`` is the rules' time zone (``date('2024-01-01')`` and
  calendar months are read in it). Warnings (a range that can only be
  approximate, :mod:`engine.rules.history_calls`) do not stop the compile:
  they are in ``Condition.warnings`` as ``(offset, "scope.where: message")``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from engine.errors import ExpressionError
from engine.events import suggest
from engine.rules import functions, operators
from engine.rules.model import Condition
from engine.rules.names import resolve
from engine.rules.nodes import Attr, Binary, Call, ListLit, Literal, Name, Node, Unary, children
from engine.rules.parser import parse
from engine.rules.segment_refs import FUNCTION as IN_SEGMENT
from engine.rules.segment_refs import segment_call
from engine.rules.typed import Typed, article, constant, cut

_QUOTE_LIMIT = 40
# Every character str.splitlines() breaks at, with the blanks around it.
_LINE_BREAK = re.compile(r"\s*[\n\r\v\f\x1c-\x1e\x85\u2028\u2029]\s*")


@dataclass(frozen=True)
class Scope:
    """Which names an expression may use where it appears."""

    event: bool = True  # `event.F` allowed (trigger.if, audience, exit.if, step if)
    entry: bool = False  # `entry.F` allowed (exit.if, step if)
    where: str = "expression"  # e.g. "trigger.if", "exit.if", "step 4.if": used in messages
    # The segments `in_segment('NAME')` may name (None: not compiled, the file is rejected).
    segments: Mapping[str, Condition | None] | None = None
    timezone: str = "UTC"  # the rules' time zone: date() literals and calendar months


def compile_expression(text: str, scope: Scope, *, boolean: bool = True) -> Condition:
    """Parse, type-check and compile ``text``; see the module rules."""
    compiler = _Compiler(text, scope)
    try:
        root = parse(text)
        typed = compiler.expr(root)
        if boolean and typed.type not in ("bool", "any"):
            raise ExpressionError(
                f"expected a condition (true/false), but {_quote(text, root)} is "
                f"{article(typed.type)}",
                root.start,
            )
    except ExpressionError as exc:
        raise ExpressionError(f"{scope.where}: {exc.message}", exc.offset) from None
    warnings = tuple((offset, f"{scope.where}: {message}") for offset, message in compiler.warnings)
    return Condition(text, typed.fn, calls=_calls(root), warnings=warnings, type=typed.type)


def _calls(root: Node) -> frozenset[str]:
    """The names of the functions called anywhere in ``root``."""
    found: set[str] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, Call):
            found.add(node.name)
        stack.extend(children(node))
    return frozenset(found)


def _quote(text: str, node: Node) -> str:
    """A node's source for a message: on one line (a line break and the spaces
    around it read as one space), cut at :data:`_QUOTE_LIMIT` characters."""
    source = _LINE_BREAK.sub(" ", text[node.start : node.end])
    return source if len(source) <= _QUOTE_LIMIT else source[: _QUOTE_LIMIT - 3] + "..."


class _Compiler:
    """Compiles one expression; implements :class:`~engine.rules.typed.Checker`."""

    def __init__(self, text: str, scope: Scope) -> None:
        self.text = text
        bound = (("event", scope.event), ("entry", scope.entry))
        self.allowed = frozenset(name for name, on in bound if on)
        self.segments = scope.segments
        self.zone = scope.timezone
        self.warnings: list[tuple[int, str]] = []
        self.records: list[str] = []  # the event type `it` is a record of, per nested WHERE

    @property
    def timezone(self) -> str:
        return self.zone

    def warn(self, offset: int, message: str) -> None:
        self.warnings.append((offset, message))

    def expr(self, node: Node) -> Typed:
        if isinstance(node, Literal):
            return constant(node.value)
        if isinstance(node, Name):
            return resolve(node, self.allowed)
        if isinstance(node, Unary):
            return operators.unary(self, node)
        if isinstance(node, Binary):
            return operators.binary(self, node)
        if isinstance(node, Call):
            if node.name == IN_SEGMENT:
                return segment_call(node, self.segments)
            return functions.call(self, node)
        if isinstance(node, Attr):
            return self.attribute(node)
        return self.list_literal(node)

    def where(self, node: Node, record_type: str = "") -> Typed:
        outer = self.allowed
        self.allowed = outer | {"it"}
        self.records.append(record_type)
        try:
            return self.expr(node)
        finally:
            self.records.pop()
            self.allowed = outer

    @property
    def record_type(self) -> str:
        return self.records[-1] if self.records else ""

    def quote(self, node: Node) -> str:
        return _quote(self.text, node)

    def attribute(self, node: Attr) -> Typed:
        base = self.expr(node.base)
        if base.fields is None:
            raise ExpressionError(
                f"{self.quote(node.base)} is {article(base.type)}, it has no field "
                f"{cut(node.name)!r}",
                node.offset,
            )
        found = base.fields.get(node.name)
        if found is None:
            raise ExpressionError(
                f"{self.quote(node.base)} has no field {cut(node.name)!r}"
                f"{suggest(node.name, base.fields) or '; its fields: ' + ', '.join(base.fields)}",
                node.offset,
            )
        type_, read = found
        get = base.fn
        return Typed(type_, lambda ctx: None if (v := get(ctx)) is None else read(v))

    def list_literal(self, node: ListLit) -> Typed:
        items = [self.expr(item) for item in node.items]
        if all(item.const for item in items):
            return constant(tuple(item.value for item in items), "list")
        fns = tuple(item.fn for item in items)
        return Typed("list", lambda ctx: [fn(ctx) for fn in fns], sure=True)
