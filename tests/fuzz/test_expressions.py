"""Fuzz target 3: the expression language (lexer, parser, compiler, evaluation).

Properties:

* Any text: :func:`compile_expression` returns a Condition or raises
  :class:`ExpressionError` whose message is one line of at most
  :data:`MAX_MESSAGE` characters starting with the scope's ``where``, and whose
  ``offset`` lies within the text; nothing else escapes.
* Any tree printed to text (fully parenthesized, or with only the parentheses
  precedence needs) parses back to the same tree: the printer and the parser
  agree on precedence, associativity and literals.
* A compiled expression, evaluated on any state, event and entry built by the
  real decoder and :func:`engine.state.apply`, never raises, gives a value of
  its static type (or ``None`` unless it is ``sure``), leaves ``ctx.it`` unbound
  and the state unchanged, and ``holds`` is a bool.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from engine.durations import UNITS
from engine.errors import ExpressionError
from engine.events import CHANNELS, ENGAGEMENT_KINDS, decode_event
from engine.rules.compiler import Scope, _Compiler, compile_expression
from engine.rules.context import Context
from engine.rules.lexer import KEYWORDS
from engine.rules.model import Condition
from engine.rules.names import FUNCTIONS, ROOTS
from engine.rules.nodes import Binary, Call, ListLit, Literal, Name, Node, Unary
from engine.rules.parser import parse
from engine.rules.typed import Typed
from engine.state import UserState, apply, dumps
from tests.fuzz.support import ACTION_IDS, CATEGORIES, PRODUCTS, TS, fuzz_settings, valid_event

pytestmark = pytest.mark.fuzz

Shape = tuple[Any, ...]  # a tree as plain tuples, compared with the parser's

WHERES: Final = ("trigger.if", "exit 1.if", "step 2.then.0.if", "audience")
TYPES: Final = ("view_product", "add_to_cart", "purchase", "engagement", "search", "spin_wheel")
FIELDS: Final = ("price", "quantity", "revenue", "ts", "product_id", "category", "items", "props")
BINARY: Final = ("or", "and", "==", "!=", "<", "<=", ">", ">=", "in", "not in", "contains")
ARITHMETIC: Final = ("+", "-", "*", "/")
PRECEDENCE: Final = {
    "or": 1,
    "and": 2,
    "not": 3,
    **dict.fromkeys(("==", "!=", "<", "<=", ">", ">=", "in", "not in", "contains"), 4),
    "+": 5,
    "-": 5,
    "*": 6,
    "/": 6,
    "neg": 7,
}
PRIMARY: Final = 8
MAX_MESSAGE: Final = 1000  # quotes and names are cut: no input makes a huge message
# What may refuse a syntactically fine tree: nesting (parser) and duration (lexer) bounds.
BOUNDS: Final = ("levels deep", "longer than the limit")

# -- trees and their text ---------------------------------------------------------


def lit(value: Any, duration: bool = False) -> Shape:
    return ("lit", type(value).__name__, value, duration)


def name(*parts: str) -> Shape:
    return ("name", parts)


def call(function: str, *args: Shape) -> Shape:
    return ("call", function, args)


def shape_of(node: Node) -> Shape:
    """The parser's tree as a Shape (offsets dropped)."""
    if isinstance(node, Literal):
        return lit(node.value, node.duration)
    if isinstance(node, Name):
        return name(*node.parts)
    if isinstance(node, Unary):
        return ("neg" if node.op == "-" else "not", shape_of(node.operand))
    if isinstance(node, Binary):
        return (node.op, shape_of(node.left), shape_of(node.right))
    if isinstance(node, Call):
        return call(node.name, *(shape_of(arg) for arg in node.args))
    assert isinstance(node, ListLit)
    return ("list", tuple(shape_of(item) for item in node.items))


def _literal_text(shape: Shape) -> str:
    _, _, value, duration = shape
    if duration:
        return _duration_text(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return repr(value)


def _duration_text(ms: int) -> str:
    for unit, size in sorted(UNITS.items(), key=lambda pair: -pair[1]):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    raise AssertionError(f"{ms} ms is no whole duration")


def precedence(shape: Shape) -> int:
    return PRECEDENCE.get(shape[0], PRIMARY) if len(shape) in (2, 3) else PRIMARY


def to_text(shape: Shape, minimal: bool) -> str:
    """Source text of a tree: every operation parenthesized, or only where needed."""
    kind = shape[0]
    if kind == "lit":
        return _literal_text(shape)
    if kind == "name":
        return ".".join(shape[1])
    if kind == "call":
        return f"{shape[1]}({', '.join(to_text(arg, minimal) for arg in shape[2])})"
    if kind == "list":
        return f"[{', '.join(to_text(item, minimal) for item in shape[1])}]"
    own = PRECEDENCE[kind]
    if kind in ("not", "neg"):
        inner = _operand(shape[1], minimal, own - (1 if kind == "not" else 0))
        text = f"not {inner}" if kind == "not" else f"-{inner}"
    else:
        chained = own == PRECEDENCE["=="]  # comparisons do not chain: both sides bind tighter
        left = _operand(shape[1], minimal, own if chained else own - 1)
        right = _operand(shape[2], minimal, own)
        text = f"{left} {kind} {right}"
    return text if minimal else f"({text})"


def _operand(shape: Shape, minimal: bool, loosest: int) -> str:
    """An operand's text, parenthesized when its precedence is ``loosest`` or looser."""
    text = to_text(shape, minimal)
    return f"({text})" if minimal and precedence(shape) <= loosest else text


# -- random trees (syntax only) ---------------------------------------------------

_WORDS = st.sampled_from((*ROOTS, *FIELDS, *FUNCTIONS, "a", "x_1", "props", "it"))
_AFTER_DOT = _WORDS | st.sampled_from(sorted(KEYWORDS))
LITERALS: Final = st.one_of(
    st.integers(0, 10**39).map(lit),
    st.floats(0, 1e300, allow_nan=False).map(lit),
    st.text(max_size=6).map(lit),
    st.sampled_from((True, False, None)).map(lit),
    st.builds(
        lambda n, unit: lit(n * UNITS[unit], True),
        st.integers(0, 4000),
        st.sampled_from(sorted(UNITS)),
    ),
)
NAMES: Final = st.builds(
    lambda first, rest: name(first, *rest), _WORDS, st.lists(_AFTER_DOT, max_size=3)
)


def _composite(inner: st.SearchStrategy[Shape]) -> st.SearchStrategy[Shape]:
    return st.one_of(
        st.tuples(st.sampled_from(("not", "neg")), inner),
        st.tuples(st.sampled_from((*BINARY, *ARITHMETIC)), inner, inner),
        st.builds(
            lambda f, args: call(f, *args),
            st.sampled_from(FUNCTIONS) | _WORDS,
            st.lists(inner, max_size=4),
        ),
        st.lists(inner, max_size=4).map(lambda items: ("list", tuple(items))),
    )


TREES: Final = st.recursive(LITERALS | NAMES, _composite, max_leaves=14)

# -- well-typed trees, so that most compile and run -------------------------------

_TYPE = st.sampled_from(TYPES).map(lambda t: name(*t.split(".")) if t != "spin_wheel" else lit(t))
_WITHIN = st.sampled_from((1, 24, 24 * 7)).map(lambda hours: lit(hours * UNITS["h"], True))
_PRODUCT = st.sampled_from(PRODUCTS).map(lit)


def _where() -> st.SearchStrategy[Shape]:
    number = st.sampled_from(("price", "quantity", "revenue", "ts")).map(lambda f: name("it", f))
    text = st.sampled_from(("product_id", "category", "channel")).map(lambda f: name("it", f))
    return st.one_of(
        st.tuples(st.sampled_from(("<", ">=", "==")), number, st.integers(0, 500).map(lit)),
        st.tuples(
            st.just("=="),
            text,
            _PRODUCT | st.just(name("event", "product_id")) | st.just(lit(None)),
        ),
        st.tuples(st.just("in"), text, st.just(("list", tuple(lit(c) for c in CATEGORIES)))),
        st.tuples(st.just("=="), st.just(name("it", "props", "size")), st.integers(0, 3).map(lit)),
    )


def _window(function: str, *middle: st.SearchStrategy[Shape]) -> st.SearchStrategy[Shape]:
    optional = (
        st.lists(st.none(), max_size=0)
        | st.tuples(_WITHIN)
        | st.tuples(_where())
        | st.tuples(_WITHIN, _where())
    )
    return st.builds(
        lambda *parts: call(function, *parts[:-1], *parts[-1]), _TYPE, *middle, optional
    )


_SUM_FIELD = st.sampled_from(("price", "revenue", "quantity", "ts")).map(name) | st.just(
    name("props", "n")
)
NUMBER_LEAVES: Final = st.one_of(
    st.integers(0, 10**6).map(lit),
    st.floats(0, 1e6, allow_nan=False).map(lit),
    _WITHIN,
    st.sampled_from(("price", "quantity", "revenue", "ts")).flatmap(
        lambda f: st.sampled_from((name("event", f), name("entry", f), name("event", "props", "n")))
    ),
    st.sampled_from(
        (name("cart", "total"), name("cart", "count"), name("now"), name("profile", "score"))
    ),
    _window("count"),
    _window("sum", _SUM_FIELD),
    st.builds(lambda t: call("since", t), _TYPE),
    st.builds(lambda t, f: call("last", t, name(f)), _TYPE, st.sampled_from(("price", "ts"))),
)
TEXT_LEAVES: Final = st.one_of(
    st.text(max_size=5).map(lit),
    _PRODUCT,
    st.sampled_from(("product_id", "category", "type", "query")).map(lambda f: name("event", f)),
    st.just(name("entry", "product_id")),
    st.just(name("profile", "first_name")),
    st.builds(lambda t: call("last", t, name("category")), _TYPE),
)
LIST_LEAVES: Final = st.one_of(
    st.sampled_from((name("cart", "items"), name("favorites"), name("event", "items"))),
    st.lists(_PRODUCT, max_size=3).map(lambda items: ("list", tuple(items))),
)
BOOL_LEAVES: Final = st.one_of(
    st.booleans().map(lit),
    _window("exists"),
    st.builds(
        lambda c, k: call("engaged", name(c), *k),
        st.sampled_from(CHANNELS),
        st.lists(st.sampled_from(ENGAGEMENT_KINDS).map(lit), max_size=1),
    ),
    st.builds(
        lambda f, p: call(f, p),
        st.sampled_from(("in_cart", "favorited")),
        _PRODUCT | st.just(name("event", "product_id")),
    ),
    st.sampled_from(
        (name("event", "granted"), name("profile", "vip"), name("event", "props", "a"))
    ),
)


def _numbers(inner: st.SearchStrategy[Shape]) -> st.SearchStrategy[Shape]:
    return st.tuples(st.sampled_from(ARITHMETIC), inner, inner) | st.tuples(st.just("neg"), inner)


NUMBERS: Final = st.recursive(NUMBER_LEAVES, _numbers, max_leaves=4)


def _conditions(inner: st.SearchStrategy[Shape]) -> st.SearchStrategy[Shape]:
    return st.one_of(
        st.tuples(st.sampled_from(("and", "or")), inner, inner),
        st.tuples(st.just("not"), inner),
    )


COMPARISONS: Final = st.one_of(
    st.tuples(st.sampled_from(("==", "!=", "<", "<=", ">", ">=")), NUMBERS, NUMBERS),
    st.tuples(st.sampled_from(("==", "!=")), TEXT_LEAVES, TEXT_LEAVES | st.just(lit(None))),
    st.tuples(st.sampled_from(("in", "not in")), TEXT_LEAVES, LIST_LEAVES | TEXT_LEAVES),
    st.tuples(st.just("contains"), LIST_LEAVES, TEXT_LEAVES),
)
CONDITIONS: Final = st.recursive(BOOL_LEAVES | COMPARISONS, _conditions, max_leaves=6)
TYPED: Final = CONDITIONS | NUMBERS | TEXT_LEAVES | LIST_LEAVES

# -- contexts ---------------------------------------------------------------------


def _event(data: dict[str, Any]) -> Any:
    return decode_event(json.dumps(data))


@st.composite
def contexts(draw: st.DrawFn) -> Context:
    """A state built by the real decoder and apply, plus an event, an entry and actions."""
    state = UserState(key="u1")
    for data in draw(st.lists(valid_event(), max_size=10)):
        apply(state, _event(data), TS)
    event = draw(st.none() | valid_event().map(_event))
    entry = draw(st.none() | valid_event().map(_event))
    actions = draw(st.frozensets(st.sampled_from(ACTION_IDS)))
    return Context(state, TS, event, entry, actions)


# -- the properties ---------------------------------------------------------------

_RESULT_TYPES: Final[dict[str, Callable[[Any], bool]]] = {
    "number": lambda v: type(v) in (int, float),
    "string": lambda v: type(v) is str,
    "bool": lambda v: type(v) is bool,
    "list": lambda v: type(v) in (list, tuple),
    "null": lambda v: v is None,
    "any": lambda v: True,
}


def attempt(text: str, scope: Scope, boolean: bool) -> Condition | ExpressionError:
    """The compiled condition or the ExpressionError; any other exception fails the target."""
    try:
        return compile_expression(text, scope, boolean=boolean)
    except ExpressionError as exc:
        return exc


def compiled(text: str, scope: Scope, boolean: bool) -> Typed | None:
    """Compile ``text``; check the error contract; the typed tree, or None on an error."""
    condition = attempt(text, scope, boolean)
    if isinstance(condition, ExpressionError):
        message = condition.message
        assert message.startswith(f"{scope.where}: "), message
        assert len(message.splitlines()) == 1, f"message is not one line: {message!r}"
        assert 0 <= condition.offset <= len(text), (condition.offset, len(text))
        assert len(message) <= MAX_MESSAGE, f"message of {len(message)} chars: {message[:300]!r}"
        return None
    assert condition.source == text
    typed = _Compiler(text, scope).expr(parse(text))
    assert not boolean or typed.type in ("bool", "any")
    return typed


def evaluate(text: str, typed: Typed, scope: Scope, ctx: Context) -> None:
    """Run a compiled expression and check the evaluation properties."""
    before = dumps(ctx.state)
    condition = compile_expression(text, scope, boolean=False)
    value = condition.fn(ctx)
    assert ctx.it is None
    assert dumps(ctx.state) == before, "evaluation changed the state"
    assert isinstance(condition.holds(ctx), bool)
    assert repr(typed.fn(ctx)) == repr(value), "two evaluations differ"  # repr: NaN equals NaN
    if value is None:
        assert not typed.sure, f"{text!r} is sure but gave None"
    else:
        assert _RESULT_TYPES[typed.type](value), f"{text!r}: {value!r} is not {typed.type}"


SCOPES: Final = st.builds(Scope, st.booleans(), st.booleans(), st.sampled_from(WHERES))
_TOKENS: Final = st.one_of(
    st.sampled_from(
        (
            *ROOTS,
            *FUNCTIONS,
            *KEYWORDS,
            *TYPES,
            *ARITHMETIC,
            *BINARY,
            "(",
            ")",
            "[",
            "]",
            ",",
            ".",
            "it.price",
            "event.props.a",
            "24h",
            "30ms",
            "1e999",
            "0.5",
            "'a'",
            '"\\u00e9"',
            "'\\q'",
            "'open",
            "&&",
            "||",
            "!",
            "=",
            "|",
            "&",
            "$",
            "é",
            "9" * 41,
            "--",
            "not in",
            "1.",
            ".5",
            "2x",
            "'\\u12'",
        )
    ),
    st.text(max_size=3),
    st.text(alphabet="ab_x", min_size=100, max_size=3000),  # huge names and types
    st.text(alphabet="ab .", min_size=100, max_size=3000).map(lambda s: f"'{s}'"),
)
_GLUE: Final = st.sampled_from((" ", "", "\n", "\t", "  "))


@st.composite
def token_soup(draw: st.DrawFn) -> str:
    tokens = draw(st.lists(_TOKENS, max_size=25))
    return "".join(token + draw(_GLUE) for token in tokens)


@fuzz_settings(ci_examples=400)
@given(token_soup(), SCOPES, st.booleans())
@example("not '\n'", Scope(), True)  # found by fuzzing: the quote spanned two lines
@example("count(view_product) +\n  1", Scope(), True)
@example("'\\\n'", Scope(), True)  # a backslash before a line break
@example("'\\\u2028'", Scope(), True)
def test_token_soup(text: str, scope: Scope, boolean: bool) -> None:
    compiled(text, scope, boolean)


def parsed(text: str) -> Node | ExpressionError:
    try:
        return parse(text)
    except ExpressionError as exc:
        return exc


@fuzz_settings(ci_examples=250)
@given(TREES, st.booleans(), SCOPES)
def test_printed_trees_parse_back(shape: Shape, minimal: bool, scope: Scope) -> None:
    text = to_text(shape, minimal)
    node = parsed(text)
    if isinstance(node, ExpressionError):  # only the documented bounds may refuse a tree
        assert any(bound in node.message for bound in BOUNDS), (text, node.message)
        return
    assert shape_of(node) == shape, text
    compiled(text, scope, boolean=False)


@fuzz_settings(ci_examples=125)
@given(TYPED, st.booleans(), SCOPES, contexts())
def test_typed_trees_compile_and_run(
    shape: Shape, minimal: bool, scope: Scope, ctx: Context
) -> None:
    text = to_text(shape, minimal)
    assert shape_of(parse(text)) == shape, text
    typed = compiled(text, scope, boolean=False)
    if typed is not None:
        evaluate(text, typed, scope, ctx)


@fuzz_settings(ci_examples=50)
@given(TYPED, contexts())
def test_typed_trees_mostly_compile(shape: Shape, ctx: Context) -> None:
    """With every name bound, the well-typed trees compile: the evaluation target runs."""
    scope = Scope(event=True, entry=True, where="test")
    text = to_text(shape, minimal=True)
    typed = compiled(text, scope, boolean=False)
    assert typed is not None, text
    evaluate(text, typed, scope, ctx)
