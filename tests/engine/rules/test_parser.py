"""The parser: precedence, associativity, spans and offsets, and every syntax error."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import ExpressionError
from engine.rules.nodes import Binary, Call, ListLit, Literal, Name, Node, Unary, children
from engine.rules.parser import MAX_DEPTH, MAX_NESTING, parse

FUZZ = settings(database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def show(node: Node) -> str:
    """The tree, fully parenthesised: precedence made visible."""
    if isinstance(node, Literal):
        return repr(node.value) if isinstance(node.value, str) else str(node.value).lower()
    if isinstance(node, Name):
        return ".".join(node.parts)
    if isinstance(node, Unary):
        return f"({node.op} {show(node.operand)})"
    if isinstance(node, Binary):
        return f"({show(node.left)} {node.op} {show(node.right)})"
    if isinstance(node, Call):
        return f"{node.name}({', '.join(show(a) for a in node.args)})"
    return f"[{', '.join(show(i) for i in node.items)}]"


def error(text: str) -> ExpressionError:
    with pytest.raises(ExpressionError) as caught:
        parse(text)
    return caught.value


# -- precedence and associativity -------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tree"),
    [
        ("a or b and c", "(a or (b and c))"),
        ("a and b or c", "((a and b) or c)"),
        ("a or b or c", "((a or b) or c)"),
        ("a and b and c", "((a and b) and c)"),
        ("not a and b", "((not a) and b)"),
        ("not a == b", "(not (a == b))"),
        ("not not a", "(not (not a))"),
        ("a == b and c != d", "((a == b) and (c != d))"),
        ("a + b * c", "(a + (b * c))"),
        ("a * b + c", "((a * b) + c)"),
        ("a - b - c", "((a - b) - c)"),
        ("a / b / c", "((a / b) / c)"),
        ("a - b + c", "((a - b) + c)"),
        ("-a * b", "((- a) * b)"),
        ("- -a", "(- (- a))"),
        ("a * -b", "(a * (- b))"),
        ("(a + b) * c", "((a + b) * c)"),
        ("a + b > c * d", "((a + b) > (c * d))"),
        ("a in b and c contains d", "((a in b) and (c contains d))"),
        ("a not in b", "(a not in b)"),
        ("not a in b", "(not (a in b))"),
        ("a + 1 in b", "((a + 1) in b)"),
        ("now - 7d < last(purchase, ts)", "((now - 604800000) < last(purchase, ts))"),
        ("a <= b or a >= c", "((a <= b) or (a >= c))"),
        ("(a or b) and c", "((a or b) and c)"),
    ],
)
def test_precedence(text: str, tree: str) -> None:
    assert show(parse(text)) == tree


def test_literals() -> None:
    assert show(parse("[1, 2.5, 'x', true, false, null, 2h]")) == (
        "[1, 2.5, 'x', true, false, none, 7200000]"
    )
    duration = parse("30m")
    assert isinstance(duration, Literal)
    assert (duration.value, duration.duration) == (1_800_000, True)
    number = parse("30")
    assert isinstance(number, Literal)
    assert number.duration is False


def test_names_calls_and_lists() -> None:
    node = parse("event.props.in.size")
    assert isinstance(node, Name)
    assert node.parts == ("event", "props", "in", "size")  # keywords are fine after a dot
    assert node.offsets == (0, 6, 12, 15)
    call = parse("count(view_product, 24h, it.price > 5)")
    assert isinstance(call, Call)
    assert (call.name, len(call.args), call.offset, call.end) == ("count", 3, 0, 38)
    assert show(parse("f()")) == "f()"
    empty = parse("[]")
    assert isinstance(empty, ListLit)
    assert empty.items == ()


def test_offsets_and_spans() -> None:
    text = "x  >=  (a + b)"
    node = parse(text)
    assert isinstance(node, Binary)
    assert (node.offset, node.start, node.end) == (3, 0, len(text))
    assert text[node.right.start : node.right.end] == "(a + b)"  # parentheses included
    assert node.right.offset == 10  # the `+`
    neg = parse("  -x")
    assert (neg.offset, neg.start, neg.end) == (2, 2, 4)
    string = parse("'a\\'b'")
    assert (string.start, string.end) == (0, 6)


# -- errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "offset", "fragment"),
    [
        ("", 0, "empty expression"),
        ("   ", 3, "empty expression"),
        ("(a and b", 0, "'(' is never closed"),
        ("count(view_product", 5, "'(' is never closed"),
        ("x in [1, 2", 5, "'[' is never closed"),
        ("((a) or b", 0, "'(' is never closed"),
        ("a)", 1, "unbalanced ')'"),
        ("(a))", 3, "unbalanced ')'"),
        ("(a b)", 3, "expected ')' or an operator, found 'b'"),
        ("x in [1, 2)", 10, "expected ']' or an operator"),
        ("a b", 2, "unexpected 'b' after a complete expression"),
        ("a == 1 2", 7, "unexpected '2'"),
        ("a not b", 2, "unexpected 'not'"),
        ("a and", 5, "expected a value, found end of expression"),
        ("a +", 3, "expected a value"),
        ("and a", 0, "expected a value, found 'and'"),
        ("()", 1, "expected a value, found ')'"),
        ("f(a,)", 4, "expected a value, found ')'"),
        ("f(,a)", 2, "expected a value, found ','"),
        ("a == not b", 5, "'not' goes before a whole comparison"),
        (".5", 0, "leading digit"),
        ("event.", 5, "expected a field name after '.'"),
        ("event.5", 6, "expected a field name after '.', found '5'"),
        ("event..x", 6, "expected a field name"),
        ("1 < 2 < 3", 6, "comparisons do not chain"),
        ("a == b != c", 7, "comparisons do not chain"),
        ("a in b not in c", 7, "comparisons do not chain"),
        ("event.price(1)", 0, "'event.price' is not a function"),
        ("x == 'abc", 5, "string is not closed"),
        ("x == $", 5, "unexpected character '$'"),
    ],
)
def test_syntax_errors_point_at_the_bad_token(text: str, offset: int, fragment: str) -> None:
    err = error(text)
    assert fragment in err.message
    assert err.offset == offset


def test_nesting_is_bounded() -> None:
    deep = "(" * MAX_NESTING + "a" + ")" * MAX_NESTING
    assert show(parse(deep)) == "a"
    err = error("(" * (MAX_NESTING + 1) + "a" + ")" * (MAX_NESTING + 1))
    assert (err.offset, "nests more than" in err.message) == (MAX_NESTING, True)
    assert "nests more than" in error("not " * (MAX_NESTING + 1) + "a").message
    assert "nests more than" in error("-" * (MAX_NESTING + 1) + "a").message


def test_tree_depth_is_bounded() -> None:
    """Long chains nest to the left; the limit keeps compile and evaluation off the stack edge."""
    assert parse(" or ".join(["a"] * MAX_DEPTH))
    err = error(" or ".join(["a"] * (MAX_DEPTH + 1)))
    assert "levels deep" in err.message
    assert "in [a, b, ...]" in err.message


# -- properties ------------------------------------------------------------------

_leaf = st.one_of(
    st.sampled_from(["a", "event.price", "it.product_id", "profile.vip", "now", "null", "true"]),
    st.integers(0, 99).map(str),
    st.sampled_from(["'x'", "24h", "2.5"]),
)


def _extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    ops = ["or", "and", "==", "!=", "<", "<=", ">", ">=", "in", "not in", "contains"]
    ops += ["+", "-", "*", "/"]
    return st.one_of(
        st.tuples(inner, st.sampled_from(ops), inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        inner.map(lambda e: f"(not {e})"),
        inner.map(lambda e: f"(- {e})"),
        st.lists(inner, max_size=3).map(lambda xs: f"count({', '.join(['x', *xs])})"),
        st.lists(inner, max_size=3).map(lambda xs: f"[{', '.join(xs)}]"),
    )


_expressions = st.recursive(_leaf, _extend, max_leaves=12)


@FUZZ
@given(_expressions)
def test_fully_parenthesised_text_round_trips(text: str) -> None:
    """Showing a parsed tree and parsing that again gives the same tree."""
    tree = parse(text)
    assert show(parse(show(tree))) == show(tree)


@FUZZ
@given(_expressions)
def test_spans_cover_their_children(text: str) -> None:
    stack: list[Node] = [parse(text)]
    while stack:
        node = stack.pop()
        assert 0 <= node.start <= node.offset < node.end <= len(text)
        for child in children(node):
            assert node.start <= child.start
            assert child.end <= node.end
            stack.append(child)


@FUZZ
@given(st.lists(st.sampled_from([*"ab1 ()[],.'=<>+-*/", " or ", " not ", " in "])).map("".join))
def test_any_text_parses_or_raises_expression_error(text: str) -> None:
    """Never another exception (no IndexError, no RecursionError)."""
    try:
        parse(text)
    except ExpressionError as err:
        offset = err.offset
    else:
        offset = 0
    assert 0 <= offset <= len(text)
