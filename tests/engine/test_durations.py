"""Durations (SPEC section 2): `Ns`, `Nm`, `Nh`, `Nd`, `Nw`, valued in milliseconds."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from channels.config import WebhookOptions, parse_config
from engine.durations import (
    MAX_DURATION_MS,
    UNITS,
    check_duration,
    format_duration,
    parse_duration,
)
from engine.errors import RulesError
from engine.rules.loader import load_rules

# No example database in the work tree; no deadline, so a loaded CI machine cannot flake.
FUZZ = settings(database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", 30 * 1000),
        ("1s", 1000),
        ("15m", 15 * 60 * 1000),
        ("2h", 2 * 3600 * 1000),
        ("7d", 7 * 86400 * 1000),
        ("400d", 400 * 86400 * 1000),
        ("1w", 7 * 86400 * 1000),
        ("0s", 0),
        ("007m", 7 * 60 * 1000),
        (" 30m ", 30 * 60 * 1000),
        ("500ms", 500),
        ("1ms", 1),
        ("0ms", 0),
        ("1500ms", 1500),
    ],
)
def test_parse_duration(text: str, expected: int) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text",
    ["10", "1.5h", "-1d", "5y", "", "d", "1 d", "1D", "1MS", "1.5ms", "ms", "1h30m", "+1d", "1e3s"],
)
def test_parse_duration_rejects_naming_the_forms(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration") as info:
        parse_duration(text)
    message = str(info.value)
    assert repr(text) in message
    for form in ("30s", "15m", "2h", "7d", "1w", "500ms"):
        assert form in message


@pytest.mark.parametrize(
    ("ms", "expected"),
    [
        (86_400_000, "1d"),
        (7 * 86_400_000, "1w"),
        (14 * 86_400_000, "2w"),
        (10 * 86_400_000, "10d"),
        (36 * 3_600_000, "36h"),
        (90 * 60_000, "90m"),
        (3_600_000, "1h"),
        (45_000, "45s"),
        (0, "0s"),
        (1_500, "1500ms"),
    ],
)
def test_format_duration_shortest_exact_form(ms: int, expected: str) -> None:
    assert format_duration(ms) == expected


durations_in_bounds = st.sampled_from(["ms", "s", "m", "h", "d", "w"]).flatmap(
    lambda unit: st.tuples(st.integers(0, MAX_DURATION_MS // UNITS[unit]), st.just(unit))
)


@FUZZ
@given(durations_in_bounds)
def test_format_then_parse_round_trips(duration: tuple[int, str]) -> None:
    count, unit = duration
    ms = parse_duration(f"{count}{unit}")
    text = format_duration(ms)
    assert parse_duration(text) == ms
    assert len(text) <= len(f"{count}{unit}")


def test_the_bound_is_ten_years() -> None:
    assert MAX_DURATION_MS == 3650 * 86_400_000
    assert parse_duration("3650d") == MAX_DURATION_MS
    assert parse_duration("521w") < MAX_DURATION_MS


@pytest.mark.parametrize(
    "text",
    ["3651d", "522w", "87601h", "3000000d", "200000000000d", "9" * 30 + "d", "9" * 5000 + "s"],
)
def test_parse_duration_refuses_more_than_ten_years(text: str) -> None:
    with pytest.raises(ValueError, match="longer than the limit of 3650d") as info:
        parse_duration(text)
    assert "10 years" in str(info.value)
    assert len(str(info.value)) < 120


def test_check_duration_applies_the_same_bound() -> None:
    check_duration(MAX_DURATION_MS, "3650d")
    with pytest.raises(ValueError, match="'9999d' is longer than the limit"):
        check_duration(9999 * 86_400_000, "9999d")


def test_rules_and_channel_config_take_the_same_durations() -> None:
    """`500ms` means the same in a rules file's wait and cap as in a channel's backoff."""
    rules = load_rules(
        "version: 1\ncaps: [{channel: any, max: 3, per: 1500ms}]\n"
        "journeys:\n  - id: j\n    trigger: signup\n    steps: [{wait: 500ms}]\n"
    )
    assert rules.caps[0].per_ms == 1500
    route = parse_config({"sms": {"adapter": "webhook", "url": "http://h/x", "backoff": "500ms"}})
    options = route.routes["sms"].options
    assert isinstance(options, WebhookOptions)
    assert options.backoff == 0.5


def test_a_bad_duration_names_the_rule_step_and_value() -> None:
    text = "version: 1\njourneys:\n  - id: j\n    trigger: signup\n    steps:\n      - wait: 5 ms\n"
    with pytest.raises(RulesError) as info:
        load_rules(text, "r.yaml")
    assert info.value.problems == [
        "r.yaml:6:15: wait: '5 ms' is not a duration; write a whole number and a unit: "
        "30s, 15m, 2h, 7d, 1w, 500ms"
    ]
