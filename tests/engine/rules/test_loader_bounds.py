"""Bounds of the rules loader: no file `tetik rules validate` accepts can hurt the engine."""

from __future__ import annotations

import time

import pytest

from engine.durations import MAX_DURATION_MS
from engine.errors import RulesError
from engine.rules.loader import (
    MAX_JOURNEYS,
    MAX_NODES,
    MAX_TEMPLATE_CHARS,
    MAX_TEMPLATES,
    MAX_YAML_DEPTH,
    load_rules,
)

LIMIT = "is longer than the limit of 3650d (10 years); write at most 3650d"


def problems(text: str) -> list[str]:
    with pytest.raises(RulesError) as info:
        load_rules(text, "r.yaml")
    return info.value.problems


def journey(steps: str, extra: str = "") -> str:
    """One journey; ``extra`` lines go inside it before ``steps`` (line 5 onwards)."""
    return f"version: 1\njourneys:\n  - id: j\n    trigger: signup\n{extra}    steps:\n{steps}"


@pytest.mark.parametrize("wait", ["3000000d", "200000000000d", "3651d", "522w"])
def test_a_wait_over_ten_years_is_rejected_at_its_value(wait: str) -> None:
    assert problems(journey(f"      - wait: {wait}\n")) == [f"r.yaml:6:15: wait: '{wait}' {LIMIT}"]


def test_ten_years_is_accepted() -> None:
    rules = load_rules(journey("      - wait: 3650d\n      - send: email\n"))
    assert rules.journeys[0].steps[0].ms == MAX_DURATION_MS  # type: ignore[union-attr]


def test_every_duration_is_bounded_and_reported_at_once() -> None:
    text = """\
version: 1
caps:
  - {channel: any, max: 3, per: 9999d}
journeys:
  - id: j
    trigger: {event: signup, if: "count(page_view, 99999d) >= 0"}
    reentry: 100000w
    audience: "since(profile.joined) > 5000d"
    steps:
      - wait: 4000d
      - send: email
"""
    assert problems(text) == [
        f"r.yaml:3:33: cap per: '9999d' {LIMIT}",
        f"r.yaml:6:52: journey j trigger.if: '99999d' {LIMIT}",
        f"r.yaml:7:14: reentry: '100000w' {LIMIT}",
        f"r.yaml:8:40: journey j audience: '5000d' {LIMIT}",
        f"r.yaml:10:15: wait: '4000d' {LIMIT}",
    ]


def test_waits_adding_up_past_ten_years_point_at_the_crossing_wait() -> None:
    steps = (
        "      - wait: 3000d\n"
        "      - send: email\n"
        "      - if: 'true'\n"
        "        then: [wait: 1d]\n"
        "        else:\n"
        "          - wait: 600d\n"
        "          - wait: 100d\n"
        "      - send: sms\n"
    )
    assert problems(journey(steps)) == [
        "r.yaml:12:19: journey j: its waits add up to more than 3650d (10 years) by step "
        "2.else.1; shorten the waits"
    ]


def test_waits_after_a_branch_count_its_longer_side() -> None:
    steps = (
        "      - if: 'true'\n"
        "        then: [wait: 3000d]\n"
        "        else: [wait: 1d]\n"
        "      - wait: 651d\n"
    )
    assert problems(journey(steps)) == [
        "r.yaml:9:15: journey j: its waits add up to more than 3650d (10 years) by step 1; "
        "shorten the waits"
    ]
    assert load_rules(journey(steps.replace("651d", "650d"))).journeys


def deep(levels: int, flow: bool) -> str:
    if flow:
        return "version: 1\nx: " + "[" * levels + "]" * levels + "\njourneys: []\n"
    lines = [f"{'  ' * i}- " for i in range(levels)]
    body = "\n".join(line + ("" if i < levels - 1 else "x") for i, line in enumerate(lines))
    return "version: 1\njourneys: []\nx:\n" + body + "\n"


@pytest.mark.parametrize("levels", [MAX_YAML_DEPTH + 1, 500, 100_000])
def test_deep_flow_yaml_is_one_problem_not_a_traceback(levels: int) -> None:
    started = time.monotonic()
    (problem,) = problems(deep(levels, flow=True))
    # the root mapping is level 1 and the `[` at column 4 level 2: level 65 is at column 67
    assert problem == (
        f"r.yaml:2:{MAX_YAML_DEPTH + 3}: the YAML nests deeper than {MAX_YAML_DEPTH} levels; "
        "flatten the lists and mappings here"
    )
    assert time.monotonic() - started < 5


def test_deep_block_yaml_is_one_problem() -> None:
    (problem,) = problems(deep(500, flow=False))
    assert f"the YAML nests deeper than {MAX_YAML_DEPTH} levels" in problem
    assert problem.startswith("r.yaml:")


def test_nesting_up_to_the_limit_is_fine() -> None:
    # root mapping + 63 lists = 64 levels: accepted by the composer (x is an unknown key)
    found = problems(deep(MAX_YAML_DEPTH - 1, flow=True))
    assert found == [
        "r.yaml:2:1: unknown key 'x' in the rules file; allowed: version, timezone, "
        "quiet_hours, consent, caps, templates, segments, segment_recheck, rfm_refresh, journeys"
    ]


def templates(count: int, text: str = "Hi") -> str:
    lines = ["version: 1", "templates:"]
    lines += [f"  t{i}: {{sms: {{text: {text!r}}}}}" for i in range(count)]
    return "\n".join([*lines, "journeys: []", ""])


def test_template_count_is_bounded() -> None:
    assert load_rules(templates(MAX_TEMPLATES)).templates
    assert problems(templates(MAX_TEMPLATES + 1)) == [
        f"r.yaml:{MAX_TEMPLATES + 3}:3: more than {MAX_TEMPLATES:,} templates; "
        "reuse templates across journeys"
    ]


def test_template_source_size_is_bounded_per_field() -> None:
    big = "x" * (MAX_TEMPLATE_CHARS + 1)
    text = (
        "version: 1\ntemplates:\n"
        f"  a: {{sms: {{text: {big}}}}}\n"
        f"  b: {{email: {{subject: ok, body: {big}}}}}\n"
        "journeys: []\n"
    )
    assert problems(text) == [
        f"r.yaml:3:19: template a.sms.text is {MAX_TEMPLATE_CHARS + 1:,} characters long, more "
        f"than the limit of {MAX_TEMPLATE_CHARS:,}; shorten it or split it into fields",
        f"r.yaml:4:34: template b.email.body is {MAX_TEMPLATE_CHARS + 1:,} characters long, more "
        f"than the limit of {MAX_TEMPLATE_CHARS:,}; shorten it or split it into fields",
    ]
    assert load_rules(text.replace(big, "x" * MAX_TEMPLATE_CHARS)).templates


def test_aliased_exit_lists_are_bounded() -> None:
    exits = ", ".join(["purchase"] * 1000)
    lines = ["version: 1", f"x: &e [{exits}]", "journeys:"]
    lines += [f"  - {{id: j{i}, trigger: login, exit: *e, steps: [exit]}}" for i in range(1100)]
    started = time.monotonic()
    found = problems("\n".join(lines) + "\n")
    assert (
        f"r.yaml:1:1: the rules file has more than {MAX_NODES:,} YAML entries (YAML aliases count)"
    ) in found
    assert time.monotonic() - started < 10


def test_journey_count_is_bounded() -> None:
    lines = ["version: 1", "journeys:"]
    lines += [f"  - {{id: j{i}, trigger: login, steps: [exit]}}" for i in range(MAX_JOURNEYS + 1)]
    assert problems("\n".join(lines) + "\n") == [
        f"r.yaml:{MAX_JOURNEYS + 3}:5: more than {MAX_JOURNEYS:,} journeys; split the programme "
        "over several engines or merge journeys that share a trigger"
    ]
