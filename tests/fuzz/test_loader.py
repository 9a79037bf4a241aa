"""Fuzz target 2: the rules loader.

Properties, for any text (or bytes):

* :func:`load_rules` returns :class:`Rules` or raises :class:`RulesError`;
  nothing else escapes (no RecursionError, no YAML or Jinja exception).
* Every problem is one line ``rules.yaml:LINE:COL: message`` whose LINE and COL
  lie within the file, and the problems come in file order.
* Accepted rules keep the documented bounds: every wait, re-entry delay and
  cap window is more than 0 and at most ``MAX_DURATION_MS`` (10 years); loading
  the same text again gives the same ``source_hash``.

Inputs: arbitrary text, YAML-ish text, arbitrary YAML documents, deep nesting,
and the example rules files under ``examples/`` mutated at the data level
(drop, replace, duplicate, rename a key; durations, huge numbers, deep values,
random expressions and templates) or at the text level (delete, duplicate,
swap or re-indent lines, splice characters).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Final

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from engine.durations import MAX_DURATION_MS
from engine.errors import RulesError
from engine.rules.loader import load_rules, summary
from engine.rules.model import Branch, Rules, Step, Wait
from tests.fuzz.support import NASTY, PLAIN_JSON, escaped, fuzz_settings

pytestmark = pytest.mark.fuzz

FILENAME: Final = "rules.yaml"
PROBLEM: Final = re.compile(r"rules\.yaml:(\d+):(\d+): (.+)")
EXAMPLES: Final = tuple(
    path.read_text() for path in sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))
)


def attempt(text: str | bytes) -> Rules | RulesError:
    """The rules or the RulesError; any other exception fails the target."""
    try:
        return load_rules(text, FILENAME)
    except RulesError as exc:
        return exc
    except Exception as exc:
        raise escaped(exc, "load_rules", text) from None


def check(text: str | bytes) -> Rules | None:
    """Load ``text`` and assert the module's properties; the rules when accepted."""
    result = attempt(text)
    if isinstance(result, RulesError):
        _check_problems(text, result.problems)
        return None
    assert isinstance(result, Rules)
    assert summary(result, FILENAME).startswith(f"{FILENAME}: OK")
    for journey in result.journeys:
        if isinstance(journey.reentry, int):
            assert 0 < journey.reentry <= MAX_DURATION_MS, (journey.id, journey.reentry)
        for wait in _waits(journey.steps):
            assert 0 < wait.ms <= MAX_DURATION_MS, (journey.id, wait)
    for cap in result.caps:
        assert 0 < cap.per_ms <= MAX_DURATION_MS, cap
        assert cap.max >= 1, cap
    again = load_rules(text, FILENAME)
    assert again.source_hash == result.source_hash
    return result


def _check_problems(text: str | bytes, problems: list[str]) -> None:
    assert problems, "RulesError without problems"
    decoded = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    lines = len(decoded.splitlines()) + 1  # PyYAML breaks lines at no more than these
    where = []
    for problem in problems:
        assert len(problem.splitlines()) == 1, f"problem is not one line: {problem!r}"
        match = PROBLEM.fullmatch(problem)
        assert match, f"problem is not FILE:LINE:COL: message: {problem!r}"
        line, column = int(match[1]), int(match[2])
        assert 1 <= line <= lines, (problem, lines)
        assert column >= 1, problem
        where.append((line, column))
    assert where == sorted(where), f"problems are not in file order: {problems}"


def _waits(steps: tuple[Step, ...]) -> list[Wait]:
    found: list[Wait] = []
    for step in steps:
        if isinstance(step, Wait):
            found.append(step)
        elif isinstance(step, Branch):
            found += _waits(step.then) + _waits(step.otherwise)
    return found


# -- arbitrary text and documents ---------------------------------------------------

YAMLISH: Final = st.text(alphabet=":-[]{}&*!|>'\"#%@`,?\n\t  abcv01", max_size=200)


@fuzz_settings(ci_examples=150)
@given(st.text(max_size=300) | YAMLISH | st.binary(max_size=200))
def test_any_text(text: str | bytes) -> None:
    check(text)


RULES_KEYS: Final = st.sampled_from(
    (
        "version",
        "timezone",
        "quiet_hours",
        "consent",
        "caps",
        "templates",
        "journeys",
        "id",
        "trigger",
        "steps",
        "wait",
        "send",
        "if",
        "then",
        "else",
        "exit",
        "event",
        "template",
        "fallback",
        "key",
        "audience",
        "reentry",
        "start",
        "end",
        "channel",
        "max",
        "per",
        "email",
        "subject",
        "text",
        "push",
        "name",
    )
)
DOCUMENTS: Final = st.recursive(
    PLAIN_JSON | NASTY,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(RULES_KEYS | st.text(max_size=5), inner, max_size=5)
    ),
    max_leaves=25,
)


@fuzz_settings(ci_examples=100)
@given(DOCUMENTS, st.booleans())
def test_any_yaml_document(document: Any, flow: bool) -> None:
    check(yaml.safe_dump(document, default_flow_style=flow, allow_unicode=True))


@fuzz_settings(ci_examples=60, long_cap=3000)  # a small space: 3000 depths x 5 forms
@given(
    st.integers(1, 3000),
    st.sampled_from(("flow-list", "flow-map", "block-list", "block-map", "steps")),
)
def test_deep_nesting(depth: int, form: str) -> None:
    if form == "flow-list":
        text = "version: 1\njourneys: " + "[" * depth + "]" * depth
    elif form == "flow-map":
        text = "version: 1\njourneys: " + "{a: " * depth + "1" + "}" * depth
    elif form == "block-list":
        text = (
            "version: 1\njourneys:\n"
            + "".join(" " * i + "-\n" for i in range(depth))
            + " " * depth
            + "- 1\n"
        )
    elif form == "block-map":
        text = (
            "version: 1\njourneys:\n"
            + "".join(" " * (i + 1) + "a:\n" for i in range(depth))
            + " " * (depth + 1)
            + "b: 1\n"
        )
    else:
        text = _nested_steps(min(depth, 200))
    check(text)


def _nested_steps(depth: int) -> str:
    step: Any = {"send": "email", "template": "t"}
    for _ in range(depth):
        step = {"if": "true", "then": [step]}
    return yaml.safe_dump(
        {
            "version": 1,
            "templates": {"t": {"email": {"subject": "s"}}},
            "journeys": [{"id": "j", "trigger": "signup", "steps": [step]}],
        }
    )


# -- mutated examples ---------------------------------------------------------------

DURATIONS: Final = st.builds(
    lambda n, unit: f"{n}{unit}",
    st.integers(0, 10**25) | st.sampled_from((3650, 3651, 521, 522, 87600, 87601, 10**20)),
    st.sampled_from(("s", "m", "h", "d", "w", "ms", "", " d", "D")),
)
EXPRESSIONS: Final = st.sampled_from(
    (
        "true",
        "event.price > 100",
        "count(view_product, 24h) >= 3 and not exists(purchase, 1d)",
        "event.prize > 1",
        "count(",
        "since(add_to_cart) > 3651d",
        "(" * 60 + "true" + ")" * 60,
        " or ".join(["true"] * 150),
        "profile.vip\n and true",
        "'\\q'",
    )
)
TEMPLATES: Final = st.sampled_from(
    (
        "Hi {{ profile.first_name }}",
        "{{ profle.x }}",
        "{% for x in cart.items %}{{ x }}{% endfor %}",
        "{% if %}",
        "{{ 'x' * 100000 }}",
        "{{ " + "(" * 300 + "1" + ")" * 300 + " }}",
        "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
        "{{ x }}\n{{ y }",
        "{{ cart.total | round(2) }}",
    )
)
VALUES: Final = st.one_of(
    NASTY,
    PLAIN_JSON,
    DURATIONS,
    EXPRESSIONS,
    TEMPLATES,
    st.integers(0, 10**30),
    st.just("x" * 40_000),
)
KEYS: Final = RULES_KEYS | st.text(max_size=6)


@st.composite
def _mutate(draw: st.DrawFn, value: Any) -> Any:
    """``value`` with one random change at a random place inside it."""
    if isinstance(value, dict) and value and draw(st.integers(0, 3)):
        key = draw(st.sampled_from(sorted(value, key=str)))
        action = draw(st.sampled_from(("descend", "descend", "drop", "replace", "rename")))
        changed = dict(value)
        if action == "descend":
            changed[key] = draw(_mutate(value[key]))
        elif action == "drop":
            del changed[key]
        elif action == "replace":
            changed[key] = draw(VALUES)
        else:
            changed[draw(KEYS)] = changed.pop(key)
        return changed
    if isinstance(value, list) and value and draw(st.integers(0, 3)):
        index = draw(st.integers(0, len(value) - 1))
        action = draw(st.sampled_from(("descend", "descend", "drop", "duplicate", "replace")))
        changed_list = list(value)
        if action == "descend":
            changed_list[index] = draw(_mutate(value[index]))
        elif action == "drop":
            del changed_list[index]
        elif action == "duplicate":
            changed_list.insert(index, value[index])
        else:
            changed_list[index] = draw(VALUES)
        return changed_list
    return draw(VALUES)


@fuzz_settings(ci_examples=100)
@given(st.sampled_from(EXAMPLES), st.integers(1, 4), st.data())
def test_mutated_example_data(source: str, mutations: int, data: st.DataObject) -> None:
    document = yaml.safe_load(source)
    for _ in range(mutations):
        document = data.draw(_mutate(document))
    check(yaml.safe_dump(document, sort_keys=False, allow_unicode=data.draw(st.booleans())))


@st.composite
def _text_mutation(draw: st.DrawFn, source: str) -> str:
    lines = source.splitlines(keepends=True)
    index = draw(st.integers(0, len(lines) - 1))
    action = draw(st.sampled_from(("delete", "duplicate", "swap", "indent", "splice", "cut")))
    if action == "delete":
        del lines[index]
    elif action == "duplicate":
        lines.insert(index, lines[index])
    elif action == "swap":
        other = draw(st.integers(0, len(lines) - 1))
        lines[index], lines[other] = lines[other], lines[index]
    elif action == "indent":
        lines[index] = " " * draw(st.integers(0, 8)) + lines[index].lstrip(" ")
    elif action == "splice":
        line = lines[index]
        at = draw(st.integers(0, len(line)))
        lines[index] = line[:at] + draw(st.text(max_size=4) | YAMLISH) + line[at:]
    else:
        return source[: draw(st.integers(0, len(source)))]
    return "".join(lines)


@fuzz_settings(ci_examples=100)
@given(st.sampled_from(EXAMPLES), st.integers(1, 3), st.data())
def test_mutated_example_text(source: str, mutations: int, data: st.DataObject) -> None:
    text = source
    for _ in range(mutations):
        text = data.draw(_text_mutation(text)) or text
    check(text)


def test_every_example_loads() -> None:
    """The mutations start from accepted files (and check() accepts them)."""
    assert EXAMPLES
    for source in EXAMPLES:
        assert check(source) is not None
