"""Fuzz target 4: templates (compile at load, render at send).

Properties:

* Any source: :func:`compile_template` returns a RenderFn or raises
  :class:`TemplateProblem` with a one-line message and a ``lineno`` inside the
  source; nothing else escapes (the loader only catches TemplateProblem).
* Any compiled template, rendered with any variables of the runtime's shape
  (as ``engine.journeys`` passes them): a RenderFn returns a ``str`` of at most
  ``MAX_OUTPUT_CHARS`` characters; :func:`render_message` returns the fields or
  ``None`` (over budget), all fields together at most ``MAX_OUTPUT_CHARS``;
  neither raises, and each render ends within a bounded time.

Sources mix text, ``{{ }}`` with random Jinja expressions (filters with huge
arguments, ``*``, ``**``, ``range``, method calls, subscripts included), ``{% for
%}`` (nested, over any expression), ``{% if %}``, ``{% set %}``, macros,
comments, whitespace control and stray delimiters. The budget makes hostile
sizes safe, so the generator does not avoid them.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from typing import Any, Final, TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.events import decode_event
from engine.rules.templates import (
    MAX_OUTPUT_CHARS,
    RENDER_VARIABLES,
    TemplateProblem,
    compile_template,
    render_message,
)
from engine.state import UserState, apply, cart_count, cart_total
from tests.fuzz.support import PLAIN_JSON, SCALARS, TS, escaped, fuzz_settings, valid_event

pytestmark = pytest.mark.fuzz

# Far above the budget's 50 ms last resort, so a loaded CI machine cannot flake.
RENDER_SECONDS: Final = 2.0

# -- sources --------------------------------------------------------------------------

INTS: Final = st.sampled_from((0, 1, 2, 3, 7, 100, 10_000, 100_000, 10**6, 2**64, -1))
VARIABLES: Final = st.sampled_from(
    (
        *RENDER_VARIABLES,
        "profile.first_name",
        "profile.x.y.z",
        "profile['score']",
        "entry.product_id",
        "entry.price",
        "entry.props",
        "entry.items",
        "cart.total",
        "cart.count",
        "cart.items",
        "cart.items[0]",
        "x",
        "loop.index",
        "v",
    )
)


def _string(text: str) -> str:
    return json.dumps(text, ensure_ascii=True)


ATOMS: Final = st.one_of(
    VARIABLES,
    INTS.map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.text(max_size=6).map(_string),
    st.sampled_from(("none", "true", "false", "[]", "{}", "'x' * 10000", "range(100000)")),
)
FILTERS: Final = st.sampled_from(
    (
        "upper",
        "lower",
        "title",
        "capitalize",
        "trim",
        "striptags",
        "e",
        "string",
        "int",
        "float",
        "abs",
        "length",
        "count",
        "first",
        "last",
        "list",
        "sort",
        "unique",
        "reverse",
        "sum",
        "min",
        "max",
        "wordcount",
        "tojson",
        "urlencode",
        "pprint",
        "dictsort",
        "items",
        "filesizeformat",
        "default('d')",
        "round(2)",
        "truncate(5)",
        "replace('a', 'bb')",
        "join(', ')",
        "center({n})",
        "indent({n})",
        "wordwrap({n})",
        "batch({n})",
        "slice({n})",
        "format({n})",
        "map('upper')",
        "select",
        "reject",
        "attr('x')",
        "groupby('x')",
        "xmlattr",
        "random",
        "safe",
        "selectattr('x')",
    )
)
METHODS: Final = st.sampled_from(
    (
        "upper()",
        "split()",
        "center({n})",
        "zfill({n})",
        "ljust({n})",
        "replace('', 'ab')",
        "join(['a', 'b'])",
        "format({n})",
        "expandtabs({n})",
        "count('a')",
        "items()",
        "keys()",
        "get('a')",
        "__class__",
        "mro()",
    )
)


def _composite(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    n = INTS.map(str) | inner
    return st.one_of(
        st.tuples(
            inner,
            st.sampled_from(
                ("+", "-", "*", "/", "//", "%", "**", "~", "==", "<", "and", "or", " in ")
            ),
            inner,
        ).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        st.tuples(inner, FILTERS, n).map(lambda t: f"{t[0]}|{t[1].replace('{n}', t[2])}"),
        st.tuples(inner, METHODS, n).map(lambda t: f"{t[0]}.{t[1].replace('{n}', t[2])}"),
        st.tuples(inner, inner).map(lambda t: f"{t[0]}[{t[1]}]"),
        st.tuples(inner, inner, inner).map(lambda t: f"({t[0]} if {t[1]} else {t[2]})"),
        st.lists(inner, max_size=3).map(lambda items: f"[{', '.join(items)}]"),
        inner.map(lambda x: f"not {x}"),
        inner.map(lambda x: f"range({x})"),
    )


EXPRESSIONS: Final = st.recursive(ATOMS, _composite, max_leaves=6)


def _blocks(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    body = st.lists(inner, max_size=3).map("".join)
    return st.one_of(
        st.tuples(EXPRESSIONS, body).map(lambda t: f"{{% for x in {t[0]} %}}{t[1]}{{% endfor %}}"),
        st.tuples(EXPRESSIONS, body, body).map(
            lambda t: f"{{% for x in {t[0]} %}}{t[1]}{{% else %}}{t[2]}{{% endfor %}}"
        ),
        st.tuples(EXPRESSIONS, body, body).map(
            lambda t: f"{{% if {t[0]} %}}{t[1]}{{% else %}}{t[2]}{{% endif %}}"
        ),
        st.tuples(EXPRESSIONS, body).map(lambda t: f"{{% set v = {t[0]} %}}{t[1]}"),
        body.map(lambda b: f"{{% set v %}}{b}{{% endset %}}{{{{ v }}}}"),
        body.map(lambda b: f"{{% macro m(a) %}}{b}{{% endmacro %}}{{{{ m(1) }}}}{{{{ m(2) }}}}"),
        body.map(lambda b: f"{{% filter upper %}}{b}{{% endfilter %}}"),
    )


CHUNKS: Final = st.one_of(
    st.text(max_size=8),
    EXPRESSIONS.map(lambda e: f"{{{{ {e} }}}}"),
    EXPRESSIONS.map(lambda e: f"{{{{- {e} -}}}}"),
    st.sampled_from(
        ("{{", "}}", "{%", "%}", "{#", "#}", "{# c #}", "{% raw %}{{ x }}{% endraw %}", "\n")
    ),
)
SOURCES: Final = st.recursive(CHUNKS, _blocks, max_leaves=8) | st.lists(CHUNKS, max_size=6).map(
    "".join
)

# -- variables of the runtime's shape -------------------------------------------------


def _event_vars(data: dict[str, Any]) -> dict[str, Any]:
    event = decode_event(json.dumps(data))
    return {f: getattr(event, f) for f in event.__struct_fields__ if getattr(event, f) is not None}


@st.composite
def variables(draw: st.DrawFn) -> dict[str, Any]:
    """What engine.journeys passes to a template, from a real state and entry event."""
    state = UserState(key="u1")
    for data in draw(st.lists(valid_event(), max_size=6)):
        apply(state, decode_event(json.dumps(data)), TS)
    profile = dict(state.profile) | draw(st.dictionaries(st.text(max_size=5), SCALARS, max_size=3))
    return {
        "profile": profile,
        "entry": draw(st.just({}) | valid_event().map(_event_vars)),
        "cart": {"total": cart_total(state), "count": cart_count(state), "items": list(state.cart)},
        "user_id": draw(st.text(min_size=1, max_size=8)),
        "journey": draw(st.sampled_from(("j1", "abandoned-cart"))),
        "now": TS,
        **draw(st.dictionaries(st.sampled_from(("extra", "x")), PLAIN_JSON, max_size=1)),
    }


# -- the properties -------------------------------------------------------------------


def attempt(source: str) -> Any:
    """The RenderFn or the TemplateProblem; any other exception fails the target."""
    try:
        return compile_template(source)
    except TemplateProblem as exc:
        return exc
    except Exception as exc:
        raise escaped(exc, "compile_template", source) from None


T = TypeVar("T")


def timed(call: Callable[[], T]) -> tuple[T, float]:
    """``call()`` and its wall time; a slow call is timed once more, so a machine
    that stalled (a long fuzz run once saw 12 s for a 4-character template that
    rendered in microseconds when tried again) is not taken for a slow template."""
    started = time.perf_counter()
    result = call()
    elapsed = time.perf_counter() - started
    if elapsed >= RENDER_SECONDS:
        started = time.perf_counter()
        result = call()
        elapsed = time.perf_counter() - started
    return result, elapsed


def check(sources: list[str], variables: dict[str, Any]) -> None:
    fields = {}
    for index, source in enumerate(sources):
        render = attempt(source)
        if isinstance(render, TemplateProblem):
            assert len(render.message.splitlines()) == 1, f"not one line: {render.message!r}"
            assert 1 <= render.lineno <= len(source.splitlines()) + 1, (render.lineno, source)
            continue
        text, elapsed = timed(functools.partial(render, variables))
        assert isinstance(text, str)
        assert len(text) <= MAX_OUTPUT_CHARS
        assert elapsed < RENDER_SECONDS, f"rendering took {elapsed:.2f} s: {source!r}"
        fields[f"f{index}"] = render
    message, elapsed = timed(lambda: render_message(fields, variables))
    assert elapsed < RENDER_SECONDS, f"rendering took {elapsed:.2f} s: {sources!r}"
    if message is not None:
        assert set(message) == set(fields)
        assert all(isinstance(text, str) for text in message.values())
        assert sum(map(len, message.values())) <= MAX_OUTPUT_CHARS


@fuzz_settings(ci_examples=150)
@given(st.lists(SOURCES, min_size=1, max_size=3), variables())
def test_random_templates(sources: list[str], variables: dict[str, Any]) -> None:
    check(sources, variables)


@fuzz_settings(ci_examples=100)
@given(st.text(max_size=80), st.text(alphabet="{}%#-+~|()[]'\". x1\n", max_size=60))
def test_any_text(text: str, delimiters: str) -> None:
    check([text, delimiters], {"profile": {}, "cart": {}, "now": TS})


NESTING: Final[dict[str, Callable[[int], str]]] = {
    "parens": lambda n: "{{ " + "(" * n + "1" + ")" * n + " }}",
    "for": lambda n: "{% for a in [1] %}" * n + "x" + "{% endfor %}" * n,
    "if": lambda n: "{% if true %}" * n + "x" + "{% endif %}" * n,
    "plus": lambda n: "{{ " + "+".join(["1"] * n) + " }}",
    "attributes": lambda n: "{{ profile" + ".a" * n + " }}",
    "filters": lambda n: "{{ 1" + "|string" * n + " }}",
    "minus": lambda n: "{{ " + "-" * n + "1 }}",
    "lists": lambda n: "{{ " + "[" * n + "]" * n + " }}",
}


@fuzz_settings(ci_examples=40, long_cap=3000)
@given(st.sampled_from(sorted(NESTING)), st.integers(1, 600))
def test_deep_nesting(form: str, depth: int) -> None:
    check([NESTING[form](depth)], {"profile": {}, "cart": {}, "now": TS})
