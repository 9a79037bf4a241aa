"""Recursive-descent parser of rules expressions into :mod:`engine.rules.nodes`.

Rules of this interface:

* :func:`parse` returns the tree of the whole text or raises
  :class:`~engine.errors.ExpressionError` at the first problem, with the
  0-based ``offset`` of the offending token (an unclosed ``(`` or ``[`` is
  reported at the bracket itself).
* Precedence, loosest first: ``or``; ``and``; ``not``; comparisons
  (``== != < <= > >= in not in contains``); ``+ -``; ``* /``; unary ``-``.
  ``and``/``or``/``+ -``/``* /`` group to the left. Comparisons do not chain:
  ``a < b < c`` is an error, not Python's ``a < b and b < c``.
* Only a bare identifier can be called (``count(...)``); dotted names are
  field paths (``event.props.size``); the names after a dot may be keywords.
  A call may be followed by fields of its result (``rfm().r``), which the
  compiler checks against the function's result type.
* Nesting is bounded (:data:`MAX_NESTING` brackets and prefix operators,
  :data:`MAX_DEPTH` tree levels) so that no expression can exhaust Python's
  stack in the parser, the compiler or at evaluation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Final

from engine.errors import ExpressionError
from engine.rules.lexer import Token, tokenize
from engine.rules.names import FUNCTIONS
from engine.rules.nodes import Attr, Binary, Call, ListLit, Literal, Name, Node, Unary, children
from engine.rules.typed import cut

MAX_DEPTH: Final = 100  # levels of the tree
MAX_NESTING: Final = 40  # brackets and prefix operators inside one another

COMPARISONS: Final = frozenset({"==", "!=", "<", "<=", ">", ">=", "in", "contains"})
_KEYWORD_VALUES: Final = {"true": True, "false": False, "null": None}

_Level = Callable[[], Node]


def parse(text: str) -> Node:
    """The syntax tree of ``text``; raises ExpressionError on the first problem."""
    parser = _Parser(tokenize(text))
    if parser.peek.kind == "eof":
        raise ExpressionError("empty expression", parser.peek.offset)
    node = parser.expression()
    parser.expect_end()
    _check_depth(node)
    return node


def _describe(token: Token) -> str:
    """How an error message names a token."""
    return "end of expression" if token.kind == "eof" else repr(cut(token.text))


class _Parser:
    """One pass over a token list; each precedence level is one method."""

    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.nesting = 0

    @property
    def peek(self) -> Token:
        return self.tokens[self.pos]

    def advance(self) -> Token:
        token = self.tokens[self.pos]
        if token.kind != "eof":
            self.pos += 1
        return token

    def at(self, *texts: str) -> bool:
        """True when the next token is one of these operators or keywords."""
        token = self.peek
        return token.kind in ("op", "keyword") and token.text in texts

    def enter(self, token: Token) -> None:
        self.nesting += 1
        if self.nesting > MAX_NESTING:
            raise ExpressionError(
                f"expression nests more than {MAX_NESTING} levels deep; simplify it",
                token.offset,
            )

    def expect_end(self) -> None:
        token = self.peek
        if token.kind == "eof":
            return
        if token.text == ")":
            raise ExpressionError("unbalanced ')': there is no '(' to close", token.offset)
        raise ExpressionError(
            f"unexpected {_describe(token)} after a complete expression; "
            "join conditions with 'and' or 'or'",
            token.offset,
        )

    # -- precedence levels, loosest first ------------------------------------

    def expression(self) -> Node:
        return self.logical("or", self.conjunction)

    def conjunction(self) -> Node:
        return self.logical("and", self.negation)

    def logical(self, op: str, operand: _Level) -> Node:
        node = operand()
        while self.at(op):
            token = self.advance()
            right = operand()
            node = Binary(op, node, right, token.offset, node.start, right.end)
        return node

    def negation(self) -> Node:
        if not self.at("not"):
            return self.comparison()
        token = self.advance()
        self.enter(token)
        operand = self.negation()
        self.nesting -= 1
        return Unary("not", operand, token.offset, token.offset, operand.end)

    def comparison(self) -> Node:
        left = self.additive()
        op = self.comparison_operator()
        if op is None:
            return left
        token, text = op
        right = self.additive()
        node = Binary(text, left, right, token.offset, left.start, right.end)
        chained = self.comparison_operator()
        if chained is not None:
            raise ExpressionError(
                "comparisons do not chain: write 'a < b and b < c'", chained[0].offset
            )
        return node

    def comparison_operator(self) -> tuple[Token, str] | None:
        """The next comparison operator (``not in`` is two tokens), consumed; else None."""
        token = self.peek
        if self.at(*COMPARISONS):
            self.advance()
            return token, token.text
        if self.at("not") and self.tokens[self.pos + 1].text == "in":
            self.pos += 2
            return token, "not in"
        return None

    def additive(self) -> Node:
        return self.arithmetic(("+", "-"), self.multiplicative)

    def multiplicative(self) -> Node:
        return self.arithmetic(("*", "/"), self.unary)

    def arithmetic(self, ops: tuple[str, str], operand: _Level) -> Node:
        node = operand()
        while self.at(*ops):
            token = self.advance()
            right = operand()
            node = Binary(token.text, node, right, token.offset, node.start, right.end)
        return node

    def unary(self) -> Node:
        if not self.at("-"):
            return self.primary()
        token = self.advance()
        self.enter(token)
        operand = self.unary()
        self.nesting -= 1
        return Unary("-", operand, token.offset, token.offset, operand.end)

    # -- values --------------------------------------------------------------

    def primary(self) -> Node:
        token = self.peek
        if token.kind in ("number", "duration", "string"):
            self.advance()
            end = token.offset + len(token.text)
            duration = token.kind == "duration"
            return Literal(token.value, token.offset, token.offset, end, duration)
        if token.kind == "keyword" and token.text in _KEYWORD_VALUES:
            self.advance()
            value = _KEYWORD_VALUES[token.text]
            return Literal(value, token.offset, token.offset, token.offset + len(token.text))
        if token.kind == "name":
            return self.name_or_call()
        if self.at("("):
            return self.parenthesized()
        if self.at("["):
            return self.list_literal()
        raise ExpressionError(
            f"expected a value, found {_describe(token)}{_hint(token)}", token.offset
        )

    def parenthesized(self) -> Node:
        opening = self.advance()
        self.enter(opening)
        node = self.expression()
        closing = self.close(opening, ")")
        self.nesting -= 1
        # The span takes the parentheses in, so messages quote `(a + b)` whole.
        return _respan(node, opening.offset, closing.offset + 1)

    def close(self, opening: Token, bracket: str) -> Token:
        """Consume the closing bracket; report an unclosed one at its opening."""
        token = self.peek
        if self.at(bracket):
            return self.advance()
        if token.kind == "eof":
            raise ExpressionError(
                f"{opening.text!r} is never closed: add {bracket!r}", opening.offset
            )
        raise ExpressionError(
            f"expected {bracket!r} or an operator, found {_describe(token)}", token.offset
        )

    def list_literal(self) -> Node:
        opening = self.advance()
        self.enter(opening)
        items = self.items("]")
        closing = self.close(opening, "]")
        self.nesting -= 1
        return ListLit(items, opening.offset, opening.offset, closing.offset + 1)

    def items(self, bracket: str) -> tuple[Node, ...]:
        """Comma-separated expressions up to (not including) ``bracket``; may be none."""
        if self.at(bracket):
            return ()
        found = [self.expression()]
        while self.at(","):
            self.advance()
            found.append(self.expression())
        return tuple(found)

    def name_or_call(self) -> Node:
        first = self.advance()
        if self.at("("):
            return self.call(first)
        parts, offsets = [first.text], [first.offset]
        while self.at("."):
            dot = self.advance()
            part = self.peek
            if part.kind not in ("name", "keyword"):
                at = dot.offset if part.kind == "eof" else part.offset
                raise ExpressionError(
                    f"expected a field name after '.', found {_describe(part)}", at
                )
            self.advance()
            parts.append(part.text)
            offsets.append(part.offset)
        if self.at("("):
            raise ExpressionError(
                f"{cut('.'.join(parts))!r} is not a function; "
                f"the functions are {', '.join(FUNCTIONS)}",
                first.offset,
            )
        end = offsets[-1] + len(parts[-1])
        return Name(tuple(parts), tuple(offsets), first.offset, first.offset, end)

    def call(self, name: Token) -> Node:
        opening = self.advance()
        self.enter(opening)
        args = self.items(")")
        closing = self.close(opening, ")")
        self.nesting -= 1
        node: Node = Call(name.text, args, name.offset, name.offset, closing.offset + 1)
        while self.at("."):
            node = self.attribute(node)
        if self.at("(") and isinstance(node, Attr):
            raise ExpressionError(
                f"{cut(node.name)!r} is a field of a result, not a function; "
                f"the functions are {', '.join(FUNCTIONS)}",
                node.offset,
            )
        return node

    def attribute(self, base: Node) -> Node:
        """``base.name`` after a call: a field of its result."""
        dot = self.advance()
        part = self.peek
        if part.kind not in ("name", "keyword"):
            at = dot.offset if part.kind == "eof" else part.offset
            raise ExpressionError(f"expected a field name after '.', found {_describe(part)}", at)
        self.advance()
        return Attr(base, part.text, part.offset, base.start, part.offset + len(part.text))


def _hint(token: Token) -> str:
    if token.text == "not":
        return " ('not' goes before a whole comparison: not (a == b))"
    if token.text == ")":
        return " (an empty '()' or a missing value)"
    if token.text == ".":
        return " (write numbers with a leading digit: 0.5)"
    return ""


def _respan(node: Node, start: int, end: int) -> Node:
    """The same node, covering ``start:end`` of the source."""
    return dataclasses.replace(node, start=start, end=end)


def _check_depth(root: Node) -> None:
    """Refuse trees deeper than MAX_DEPTH (long `a or b or ...` chains nest to the left)."""
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ExpressionError(
                f"expression is more than {MAX_DEPTH} levels deep; split it or use "
                "'x in [a, b, ...]' instead of long 'or' chains",
                node.offset,
            )
        stack.extend((child, depth + 1) for child in children(node))
