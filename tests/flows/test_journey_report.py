"""``tetik report`` (replay): the rows as JSON and as tables, and its usage errors."""

from __future__ import annotations

import orjson
import pytest

from cli.main import main

RULES = "examples/send_time_test.yaml"
EVENTS = "examples/send_time_test.events.jsonl"


def test_json_rows_of_the_send_time_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--rules", RULES, "--events", EVENTS, "--json"]) == 0
    found = orjson.loads(capsys.readouterr().out)
    groups = {r["variant"]: r for r in found if r["step"] == ""}
    assert {v: (r["entered"], r["converted"]) for v, r in groups.items()} == {
        "*": (4, 1),
        "evening": (2, 1),
        "holdout": (1, 0),
        "morning": (2, 0),
    }
    assert groups["holdout"]["suppressed"] == {"email:holdout": 1}
    assert groups["evening"]["uplift"] == 0.5
    assert {(r["step"], r["variant"]) for r in found if r["step"]} == {
        ("0.evening.1", "evening"),
        ("0.morning.1", "morning"),
        ("0.morning.1", "holdout"),
    }


def test_table_and_journey_filter(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--rules", RULES, "--events", EVENTS, "--journey", "nope"]) == 0
    assert "no journey entered" in capsys.readouterr().out
    assert main(["report", "--rules", RULES, "--events", EVENTS]) == 0
    out = capsys.readouterr().out
    assert "journey send_time_test" in out
    assert "50.0% [9.5, 90.5]" in out  # evening: 1 of 2, Wilson


@pytest.mark.parametrize(
    "argv",
    [["report"], ["report", "--rules", RULES], ["report", "--live", "--events", EVENTS]],
)
def test_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith("tetik report: ")
