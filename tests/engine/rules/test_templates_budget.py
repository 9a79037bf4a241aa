"""The rendering budget: a runaway template is stopped quickly and deterministically."""

from __future__ import annotations

import time
import tracemalloc
from typing import Any

import pytest

from engine.rules.templates import (
    MAX_OUTPUT_CHARS,
    MAX_WORK,
    TemplateProblem,
    compile_template,
    render_message,
)

VARIABLES: dict[str, Any] = {
    "profile": {"first_name": "Ayse"},
    "entry": {"product_id": "sku-1"},
    "event": None,
    "cart": {"total": 25.0, "count": 2, "items": ["sku-1", "sku-2"]},
    "user_id": "u1",
    "journey": "j",
    "now": 1,
}
S = "{% set s = 'x' * 10000 %}"

HOSTILE = {
    "nested ranges": "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}"
    "{% endfor %}",
    "nested ranges writing": "{% for i in range(1000) %}{% for j in range(1000) %}{{ i }}{{ j }}"
    "{% endfor %}{% endfor %}",
    "1 MB of output": "{{ 'x' * 10000 }}" * 110,
    "1 MB of literal text in a loop": "{% for i in range(100) %}" + "x" * 10_000 + "{% endfor %}",
    "string multiplication": "{{ 'a' * 1000000000 }}",
    "list multiplication": "{{ [1] * 1000000000 }}",
    "huge power": "{{ ((10 ** 100) ** 100) ** 100 }}",
    "doubling with ~": S + "{% set b = s ~ s %}{% set c = b ~ b %}{% set d = c ~ c %}{{ d }}",
    "doubling with +": S + "{% set b = s + s %}{% set c = b + b %}{% set d = c + c %}{{ d }}",
    "doubling in a namespace": "{% set ns = namespace(s='x') %}{% for i in range(40) %}"
    "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}",
    "captured output": "{% set x %}{% for i in range(40000) %}{{ 'y' * 9999 }}{% endfor %}"
    "{% endset %}{{ x | length }}",
    "exponential macro": "{% macro f(n) %}{% if n < 40 %}{{ f(n + 1) }}{{ f(n + 1) }}{% endif %}"
    "{% endmacro %}{{ f(0) }}",
    "center filter": "{{ 'x' | center(1000000000) }}",
    "center method": "{{ 'x'.center(1000000000) }}",
    "format filter": "{{ '%1000000000s' | format(1) }}",
    "format method": "{{ '{:>1000000000}'.format(1) }}",
    "% operator": "{{ '%1000000000s' % 1 }}",
    "replace method": S + "{{ s.replace('', s) }}",
    "replace filter": S + "{{ s | replace('x', 'y' * 30) }}",
    "join of references": S + "{{ ([s] * 10000) | join }}",
    "printing references": S + "{{ [s] * 10000 }}",
    "str.join": S + "{{ s.join([s] * 10000) }}",
    "indent": "{{ ('\\n' * 10000) | indent(10000) }}",
    "wordwrap": "{{ ('x ' * 5000) | wordwrap(1, wrapstring='y' * 1000) }}",
    "batch": "{{ [1] | batch(1000000000, 'x') | list }}",
    "slice": "{{ [1] | slice(1000000000) | list }}",
    "expandtabs": "{{ ('\\t' * 10000).expandtabs(100000) }}",
    "lazy filters": "{{ range(40000) | select('odd') | list | length }}",
}


def over_budget(source: str) -> tuple[bool, float, int]:
    """(suppressed, seconds, peak bytes) of rendering ``source`` as a one-field message."""
    fields = {"text": compile_template(source)}
    tracemalloc.start()
    started = time.perf_counter()
    try:
        content = render_message(fields, VARIABLES)
        seconds = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return content is None, seconds, peak


@pytest.mark.parametrize("source", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_runaway_template_is_over_budget_quickly_and_small(source: str) -> None:
    suppressed, seconds, peak = over_budget(source)
    assert suppressed
    assert seconds < 0.5  # tracemalloc slows rendering; the budget itself is ~10 ms
    assert peak < 8_000_000


@pytest.mark.parametrize("source", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_field_rendered_alone_over_budget_is_empty(source: str) -> None:
    assert compile_template(source)(VARIABLES) == ""


def test_the_budget_is_deterministic_not_a_clock() -> None:
    # range(n) costs n steps, each iteration one more, the call and its result one each:
    # 2n + 2 steps, just under and just over the budget
    source = "{% for i in range(N) %}.{% endfor %}"
    most = MAX_WORK // 2 - 1
    under = {"t": compile_template(source.replace("N", str(most)))}
    over = {"t": compile_template(source.replace("N", str(most + 1)))}
    for _ in range(20):
        assert render_message(under, VARIABLES) == {"t": "." * most}
        assert render_message(over, VARIABLES) is None


def test_the_output_cap_counts_all_fields_together() -> None:
    half = MAX_OUTPUT_CHARS // 2
    field = compile_template("{{ 'x' * 10000 }}" * (half // 10000) + "x" * (half % 10000))
    assert len(field(VARIABLES)) == half
    assert render_message({"a": field, "b": field}, VARIABLES) == {"a": "x" * half, "b": "x" * half}
    one_more = compile_template("!")
    assert render_message({"a": field, "b": field, "c": one_more}, VARIABLES) is None


def test_ordinary_errors_still_render_their_field_empty() -> None:
    fields = {
        "subject": compile_template("Hi {{ profile.first_name }}"),
        "body": compile_template("{{ 1 / 0 }}"),
    }
    assert render_message(fields, VARIABLES) == {"subject": "Hi Ayse", "body": ""}


def test_ordinary_templates_render_within_the_budget() -> None:
    source = (
        "{% macro line(p) %}- {{ p | upper }}{% endmacro %}"
        "Hi {{ profile.first_name | default('friend', true) }},\n"
        "{% for p in cart['items'] %}{{ line(p) }}\n{% endfor %}"
        "{{ '%.2f' | format(cart.total) }} {{ cart['items'] | join(', ') }} "
        "{{ 'x'.center(5) }}|{{ range(3) | list }}|{{ 'a-b'.replace('-', '+') }}"
    )
    assert render_message({"t": compile_template(source)}, VARIABLES) == {
        "t": "Hi Ayse,\n- SKU-1\n- SKU-2\n25.00 sku-1, sku-2   x  |[0, 1, 2]|a+b"
    }


def test_recursive_loops_and_lipsum_are_load_errors() -> None:
    with pytest.raises(TemplateProblem, match="recursive loops are not allowed"):
        compile_template("{% for x in cart['items'] recursive %}{{ loop(x) }}{% endfor %}")
    with pytest.raises(TemplateProblem, match="unknown variable 'lipsum'"):
        compile_template("{{ lipsum(100000) }}")


NESTING = {
    "parentheses": lambda n: "{{ " + "(" * n + "1" + ")" * n + " }}",
    "for": lambda n: "{% for a in [1] %}" * n + "x" + "{% endfor %}" * n,
    "if": lambda n: "{% if true %}" * n + "x" + "{% endif %}" * n,
    "plus": lambda n: "{{ " + "+".join(["1"] * n) + " }}",
    "attributes": lambda n: "{{ profile" + ".a" * n + " }}",
    "filters": lambda n: "{{ 1" + "|string" * n + " }}",
    "lists": lambda n: "{{ " + "[" * n + "]" * n + " }}",
}


@pytest.mark.parametrize("depth", [100, 600, 5000])
@pytest.mark.parametrize("form", NESTING.values(), ids=NESTING.keys())
def test_deep_templates_are_a_load_problem_not_a_crash(form: Any, depth: int) -> None:
    started = time.monotonic()
    with pytest.raises(TemplateProblem, match="nests more than 40 levels deep") as info:
        compile_template(form(depth))
    assert info.value.lineno == 1
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("form", NESTING.values(), ids=NESTING.keys())
def test_moderate_nesting_compiles_and_renders(form: Any) -> None:
    assert render_message({"t": compile_template(form(12))}, VARIABLES) is not None
