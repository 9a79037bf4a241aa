"""Tokens of the expression language: kinds, values, offsets and every lexical error."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import ExpressionError
from engine.rules.lexer import KEYWORDS, Token, tokenize

FUZZ = settings(database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def kinds(text: str) -> list[tuple[str, object]]:
    return [(t.kind, t.value) for t in tokenize(text)[:-1]]


def attempt(text: str) -> list[Token] | ExpressionError:
    try:
        return tokenize(text)
    except ExpressionError as err:
        return err


def error(text: str) -> ExpressionError:
    with pytest.raises(ExpressionError) as caught:
        tokenize(text)
    return caught.value


def test_tokens_carry_kind_text_offset_and_value() -> None:
    tokens = tokenize("count(view_product, 24h) >= 3")
    assert tokens == [
        Token("name", "count", 0, "count"),
        Token("op", "(", 5, "("),
        Token("name", "view_product", 6, "view_product"),
        Token("op", ",", 18, ","),
        Token("duration", "24h", 20, 86_400_000),
        Token("op", ")", 23, ")"),
        Token("op", ">=", 25, ">="),
        Token("number", "3", 28, 3),
        Token("eof", "", 29, None),
    ]


def test_whitespace_of_any_kind_separates_tokens_and_eof_is_at_the_end() -> None:
    tokens = tokenize("\n\ta\r\n  or\tb  ")
    assert [(t.text, t.offset) for t in tokens] == [("a", 2), ("or", 7), ("b", 10), ("", 13)]
    assert tokenize("") == [Token("eof", "", 0)]


@pytest.mark.parametrize(
    ("text", "value"),
    [("0", 0), ("42", 42), ("3.25", 3.25), ("1e3", 1000.0), ("2.5E-1", 0.25), ("007", 7)],
)
def test_numbers(text: str, value: float) -> None:
    assert kinds(text) == [("number", value)]
    assert type(kinds(text)[0][1]) is type(value)


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("30s", 30_000),
        ("15m", 900_000),
        ("2h", 7_200_000),
        ("7d", 604_800_000),
        ("1w", 604_800_000),
        ("500ms", 500),
    ],
)
def test_durations_are_milliseconds(text: str, ms: int) -> None:
    assert kinds(text) == [("duration", ms)]


@pytest.mark.parametrize("text", ["30mss", "1.5h", "2x", "3and", "1e3s", "10days"])
def test_number_glued_to_letters_is_one_bad_token(text: str) -> None:
    err = error(f"x > {text}")
    assert err.offset == 4
    assert "bad number or duration" in err.message
    assert "30s, 15m, 2h, 7d, 1w" in err.message


def test_absurdly_long_number_is_refused() -> None:
    err = error("x == " + "9" * 50)
    assert (err.offset, "too long" in err.message) == (5, True)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("'abc'", "abc"),
        ('"abc"', "abc"),
        ("''", ""),
        ("'it\\'s'", "it's"),
        ('"say \\"hi\\""', 'say "hi"'),
        ("'a\\\\b'", "a\\b"),
        ("'\\n\\t\\r'", "\n\t\r"),
        ("'\\u00e7ay'", "çay"),
        ("'\"'", '"'),
        ("'ağaç'", "ağaç"),
    ],
)
def test_strings_and_escapes(text: str, value: str) -> None:
    assert kinds(text) == [("string", value)]


def test_string_token_text_is_the_source_including_quotes() -> None:
    token = tokenize("x == 'a\\'b'")[2]
    assert (token.text, token.offset, token.value) == ("'a\\'b'", 5, "a'b")


@pytest.mark.parametrize("text", ["x == 'abc", 'x == "abc', "x == 'abc\"", "x == 'ab\\'"])
def test_unclosed_string_points_at_its_opening_quote(text: str) -> None:
    err = error(text)
    assert err.offset == 5
    assert "not closed" in err.message


@pytest.mark.parametrize(
    ("text", "offset"), [("'a\\qb'", 2), ("x == 'ab\\u12'", 8), ("'\\x41'", 1)]
)
def test_bad_escape_points_at_the_backslash(text: str, offset: int) -> None:
    err = error(text)
    assert err.offset == offset
    assert "bad escape" in err.message


def test_keywords_and_names() -> None:
    assert kinds("and or not in contains true false null") == [
        ("keyword", word)
        for word in ("and", "or", "not", "in", "contains", "true", "false", "null")
    ]
    assert kinds("android nothing _x in_cart") == [
        ("name", "android"),
        ("name", "nothing"),
        ("name", "_x"),
        ("name", "in_cart"),
    ]
    assert frozenset({"and", "or", "not", "in", "contains", "true", "false", "null"}) == KEYWORDS


def test_operators_take_the_longest_match() -> None:
    assert [t.text for t in tokenize("a<=b>=c<d>e==f!=g+-*/(),.[]")[:-1]] == [
        "a", "<=", "b", ">=", "c", "<", "d", ">", "e", "==", "f", "!=", "g",
        "+", "-", "*", "/", "(", ")", ",", ".", "[", "]",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "offset", "advice"),
    [("a && b", 2, "'and'"), ("a || b", 2, "'or'"), ("!a", 0, "'not'"), ("a = 1", 2, "'=='")],
)
def test_operators_of_other_languages_say_what_to_write(
    text: str, offset: int, advice: str
) -> None:
    err = error(text)
    assert err.offset == offset
    assert err.message.endswith(f"write {advice}")


@pytest.mark.parametrize(
    ("text", "offset"), [("@", 0), ("a ? b : c", 2), ("x == ₺5", 5), ("a;", 1)]
)
def test_unknown_character(text: str, offset: int) -> None:
    err = error(text)
    assert err.offset == offset
    assert "unexpected character" in err.message


def test_non_ascii_digits_are_not_numbers() -> None:
    assert error("x == ٣").offset == 5


@FUZZ
@given(st.text(alphabet=st.sampled_from(list("ab1.5hs _'\"\\()=<>!&|,-+*/[]\nnotr")), max_size=30))
def test_any_text_either_tokenizes_exactly_or_raises_expression_error(text: str) -> None:
    """Never another exception; every token's text is the source at its offset."""
    tokens = attempt(text)
    if isinstance(tokens, ExpressionError):
        assert 0 <= tokens.offset <= len(text)
        return
    assert tokens[-1] == Token("eof", "", len(text))
    previous_end = 0
    for token in tokens[:-1]:
        assert text[token.offset : token.offset + len(token.text)] == token.text
        assert token.offset >= previous_end
        assert text[previous_end : token.offset].strip() == ""
        previous_end = token.offset + len(token.text)
    assert text[previous_end:].strip() == ""


def test_a_duration_over_ten_years_is_an_error_at_its_offset() -> None:
    assert tokenize("since(x) < 3650d")[-2].value == 3650 * 86_400_000
    with pytest.raises(ExpressionError, match="'3651d' is longer than the limit of 3650d") as info:
        tokenize("since(x) < 3651d")
    assert info.value.offset == 11


def test_a_long_bad_number_is_cut_in_its_message() -> None:
    """Found by `make fuzz`: the whole token was quoted, making a 1,000-char message."""
    with pytest.raises(ExpressionError) as info:
        tokenize("2x" + "_" * 1000)
    assert "bad number or duration" in str(info.value)
    assert len(str(info.value)) < 300
