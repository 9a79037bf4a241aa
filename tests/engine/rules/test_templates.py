"""Message templates: compiled at load, rendered in a sandbox, never raising at send time."""

from __future__ import annotations

import time
from typing import Any

import pytest

from engine.events import Event
from engine.rules.templates import (
    RENDER_VARIABLES,
    TemplateProblem,
    compile_template,
    render_fields,
)

ENTRY = Event(event_id="e1", type="add_to_cart", ts=0, user_id="u1", product_id="sku-1", price=25.0)
VARIABLES: dict[str, Any] = {
    "profile": {"first_name": "Ayse", "email": "a@example.com"},
    "entry": ENTRY,
    "event": None,
    "cart": {"total": 25.0, "count": 1, "items": ["sku-1"]},
    "user_id": "u1",
    "journey": "abandoned_cart",
    "now": 1_700_000_000_000,
}


def render(source: str, variables: dict[str, Any] | None = None) -> str:
    return compile_template(source)(VARIABLES if variables is None else variables)


def test_renders_the_runtime_variables() -> None:
    text = render(
        "{{ profile.first_name }}, {{ entry.product_id }} ({{ entry.price }}) "
        "{{ cart.count }}/{{ cart.total }} {{ cart.items | join(',') }} "
        "{{ user_id }} {{ journey }} {{ now }}"
    )
    assert text == "Ayse, sku-1 (25.0) 1/25.0 sku-1 u1 abandoned_cart 1700000000000"


def test_render_variables_are_the_documented_ones() -> None:
    assert set(RENDER_VARIABLES) == {
        "profile",
        "entry",
        "event",
        "cart",
        "user_id",
        "journey",
        "now",
        "product",
        "bought_together",
    }


@pytest.mark.parametrize(
    "source",
    [
        "{{ profile.last_name }}",
        "{{ profile.x.y.z }}",
        "{{ profile['x']['y'] }}",
        "{{ event.product_id }}",  # event is None (a timer ran the step)
        "{{ entry.category }}",  # a field the event does not carry (None)
        "{{ profile.nickname | upper }}",
    ],
)
def test_missing_values_render_empty(source: str) -> None:
    assert render(source) == ""


def test_missing_values_render_empty_inside_text() -> None:
    assert render("Hi {{ profile.nickname }}!") == "Hi !"


def test_default_filter_fills_a_missing_value() -> None:
    assert render("Hi {{ profile.nickname | default('friend', true) }}") == "Hi friend"


def test_missing_variables_render_empty() -> None:
    assert render("[{{ profile.first_name }}]", {}) == "[]"


@pytest.mark.parametrize(
    "source",
    [
        "{{ 1 / 0 }}",
        "{{ cart.total / 0 }}",
        "{{ profile.x + 1 }}",
        "{{ profile.first_name + 1 }}",
        "{{ now | int // 0 }}",
        "{{ range(3) | first / 0 }}",
    ],
)
def test_runtime_errors_render_the_field_empty(source: str) -> None:
    assert render(source) == ""


def test_loops_conditions_and_set_work() -> None:
    source = (
        "{% set n = cart.items | length %}{% for p in cart.items %}[{{ p }}]{% endfor %}"
        "{% if n > 0 %} {{ n }} item{% endif %}"
    )
    assert render(source) == "[sku-1] 1 item"


def test_autoescape_is_off() -> None:
    assert render("{{ profile.first_name }}", {"profile": {"first_name": "<b>&</b>"}}) == "<b>&</b>"


def test_mapping_keys_win_over_dict_methods() -> None:
    cart = {"items": ["a", "b"], "values": 3, "keys": "k"}
    assert render("{{ cart.items | join }} {{ cart.values }} {{ cart.keys }}", {"cart": cart}) == (
        "ab 3 k"
    )


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ entry.__class__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ range.__self__ }}",
        "{{ profile.__class__.__base__.__subclasses__() }}",
        "{{ ''.__class__.__mro__[-1].__subclasses__()[0].__init__.__globals__ }}",
    ],
)
def test_sandbox_hides_python_internals(source: str) -> None:
    text = render(source)
    assert "class" not in text
    assert "object" not in text
    assert "builtins" not in text
    assert text == ""


def test_sandbox_blocks_mutating_the_runtime_data() -> None:
    cart = {"total": 1.0, "count": 1, "items": ["sku-1"]}
    profile = {"first_name": "Ayse"}
    variables = {**VARIABLES, "cart": cart, "profile": profile}
    render("{{ cart.items.append('x') }}{{ profile.update({'a': 1}) }}", variables)
    render("{{ cart.items.pop() }}{{ profile.clear() }}", variables)
    assert cart["items"] == ["sku-1"]
    assert profile == {"first_name": "Ayse"}


@pytest.mark.parametrize(
    "source",
    ["{{ 'a' * 1000000000 }}", "{{ [1] * 1000000000 }}", "{{ 10 ** 100000000 }}"],
)
def test_sandbox_refuses_huge_values(source: str) -> None:
    started = time.monotonic()
    assert render(source) == ""
    assert time.monotonic() - started < 1.0


def test_small_repeats_and_powers_still_work() -> None:
    assert render("{{ '-' * 3 }}{{ 2 ** 10 }}") == "---1024"


def test_syntax_error_reports_its_template_line() -> None:
    with pytest.raises(TemplateProblem) as info:
        compile_template("Hello\n{{ profile.first_name }\n")
    assert info.value.lineno == 2
    assert "unexpected '}'" in info.value.message


def test_unclosed_block_is_a_load_error() -> None:
    with pytest.raises(TemplateProblem, match="endif"):
        compile_template("{% if cart.count %}yes")


def test_unknown_filter_is_a_load_error_with_did_you_mean() -> None:
    with pytest.raises(TemplateProblem, match=r"No filter named 'uper' \(did you mean 'upper'\?\)"):
        compile_template("{{ profile.first_name | uper }}")


def test_unknown_variable_is_a_load_error_with_did_you_mean() -> None:
    with pytest.raises(TemplateProblem) as info:
        compile_template("Hi\n\n{{ profle.first_name }}")
    assert info.value.lineno == 3
    assert "unknown variable 'profle' (did you mean 'profile'?)" in info.value.message


def test_render_fields_renders_each_field() -> None:
    fields = {
        "subject": compile_template("Hi {{ profile.first_name }}"),
        "body": compile_template("{{ 1/0 }}"),
    }
    assert render_fields(fields, VARIABLES) == {"subject": "Hi Ayse", "body": ""}
