"""Tokens of the rules expression language (SPEC section 2, "Expressions").

Rules of this interface:

* :func:`tokenize` turns the whole text into a list of :class:`Token` ending
  with one ``eof`` token, or raises :class:`~engine.errors.ExpressionError`
  whose ``offset`` is the 0-based position of the first bad character.
* Every token carries the ``offset`` of its first character and the exact
  source ``text`` it covers; ``value`` holds the decoded literal (the int or
  float of a number, the milliseconds of a duration, the unescaped string).
* A duration is a whole number glued to one unit (``30s 15m 2h 7d 1w
  500ms``); a number glued to any other letters (``2x``, ``10days``) is an
  error, not a number followed by a name. A duration longer than 10 years (``3650d``) is an
  error (:data:`engine.durations.MAX_DURATION_MS`).
* Strings take ``'...'`` or ``"..."`` with the escapes ``\\\\ \\' \\" \\n \\t
  \\r \\uXXXX``; any other escape or a missing closing quote is an error.
* ``and or not in contains true false null`` are keywords; every other
  identifier (``[A-Za-z_][A-Za-z0-9_]*``) is a name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

from engine.durations import UNITS, check_duration
from engine.errors import ExpressionError
from engine.rules.typed import cut

TokenKind = Literal["number", "duration", "string", "name", "keyword", "op", "eof"]
Value = int | float | str | None

KEYWORDS: Final = frozenset({"and", "or", "not", "in", "contains", "true", "false", "null"})
# Longest first, so `<=` wins over `<`.
OPERATORS: Final = (
    "==",
    "!=",
    "<=",
    ">=",
    "<",
    ">",
    "+",
    "-",
    "*",
    "/",
    "(",
    ")",
    ",",
    ".",
    "[",
    "]",
)
# Spellings from other languages, answered with what to write instead.
_FOREIGN: Final = {
    "&&": "and",
    "||": "or",
    "!": "not",
    "=": "==",
    "&": "and",
    "|": "or",
}
_ESCAPES: Final = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "t": "\t", "r": "\r"}

_SPACE = re.compile(r"\s+")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A number and any letters glued to it, so `30ms` is one bad token, not `30` `ms`.
_NUMBER = re.compile(r"(\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)([A-Za-z_][A-Za-z0-9_]*)?", re.ASCII)
_HEX4 = re.compile(r"[0-9a-fA-F]{4}")
_MAX_DIGITS: Final = 40
_DIGITS: Final = frozenset("0123456789")


@dataclass(frozen=True, slots=True)
class Token:
    """One token: its kind, source text, 0-based offset and decoded value."""

    kind: TokenKind
    text: str
    offset: int
    value: Value = None


def tokenize(text: str) -> list[Token]:
    """All tokens of ``text``, ending with an ``eof`` token at ``len(text)``."""
    tokens: list[Token] = []
    pos = 0
    while True:
        space = _SPACE.match(text, pos)
        if space:
            pos = space.end()
        if pos >= len(text):
            tokens.append(Token("eof", "", len(text)))
            return tokens
        token = _next_token(text, pos)
        tokens.append(token)
        pos += len(token.text)


def _next_token(text: str, pos: int) -> Token:
    char = text[pos]
    if char in _DIGITS:
        return _number(text, pos)
    if char in "'\"":
        return _string(text, pos)
    name = _NAME.match(text, pos)
    if name:
        word = name.group()
        return Token("keyword" if word in KEYWORDS else "name", word, pos, word)
    return _operator(text, pos)


def _number(text: str, pos: int) -> Token:
    match = _NUMBER.match(text, pos)
    assert match is not None  # text[pos] is a digit
    digits, suffix = match.group(1), match.group(2)
    if len(digits) > _MAX_DIGITS:  # int() refuses very long digit strings anyway
        raise ExpressionError(f"number {digits[:20]}... is too long", pos)
    if suffix is None:
        value: int | float = float(digits) if any(c in digits for c in ".eE") else int(digits)
        return Token("number", digits, pos, value)
    if suffix in UNITS and digits.isdigit():
        try:
            check_duration(int(digits) * UNITS[suffix], match.group())
        except ValueError as exc:
            raise ExpressionError(str(exc), pos) from None
        return Token("duration", match.group(), pos, int(digits) * UNITS[suffix])
    raise ExpressionError(
        f"bad number or duration {cut(match.group())!r}: durations are a whole number and one "
        "unit, e.g. 30s, 15m, 2h, 7d, 1w, 500ms",
        pos,
    )


def _string(text: str, pos: int) -> Token:
    quote = text[pos]
    out: list[str] = []
    i = pos + 1
    while i < len(text):
        char = text[i]
        if char == quote:
            return Token("string", text[pos : i + 1], pos, "".join(out))
        if char == "\\":
            decoded, i = _escape(text, i)
            out.append(decoded)
            continue
        out.append(char)
        i += 1
    raise ExpressionError(f"string is not closed: add the closing {quote}", pos)


def _escape(text: str, i: int) -> tuple[str, int]:
    """The character an escape at ``text[i] == '\\\\'`` stands for, and the next index."""
    code = text[i + 1 : i + 2]
    if code in _ESCAPES:
        return _ESCAPES[code], i + 2
    if code == "u" and _HEX4.fullmatch(text, i + 2, i + 6):
        return chr(int(text[i + 2 : i + 6], 16)), i + 6
    # A line break or other unprintable character is shown escaped: messages are one line.
    shown = f"'\\{code}'" if code.isprintable() and not code.isspace() else f"'\\' + {code!r}"
    raise ExpressionError(
        f"bad escape {shown} in string; use \\\\ \\' \\\" \\n \\t \\r or \\uXXXX", i
    )


def _operator(text: str, pos: int) -> Token:
    for op in OPERATORS:
        if text.startswith(op, pos):
            return Token("op", op, pos, op)
    for foreign in sorted(_FOREIGN, key=len, reverse=True):
        if text.startswith(foreign, pos):
            raise ExpressionError(f"unknown operator {foreign!r}: write {_FOREIGN[foreign]!r}", pos)
    raise ExpressionError(f"unexpected character {text[pos]!r}", pos)
