"""``tetik report`` (replay): the rows as JSON and as tables, and its usage errors."""

from __future__ import annotations

import msgspec
import orjson
import pytest
import redis

from cli.main import main
from engine.measurement import ReportRow, field, rows
from flows.stores.keys import Keys

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


@pytest.mark.integration
def test_live_sums_every_shard_the_deployment_recorded(
    redis_client: redis.Redis,
    redis_url: str,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    keys = Keys(unique, 8)
    redis_client.hset(keys.layout, "shards", 8)  # as tetik run recorded it
    counts = {
        field("cart", "", "", "entered"): 30,
        field("cart", "", "", "converted"): 6,
        field("cart", "", "holdout", "entered"): 10,
        field("cart", "", "holdout", "converted"): 1,
        field("cart", "0", "", "sent", "email"): 30,
        field("cart", "0", "holdout", "suppressed", "email", "holdout"): 10,
    }
    for n, (name, count) in enumerate(counts.items()):  # spread over the shards
        for shard in (n % 8, (n + 3) % 8):
            redis_client.hincrby(keys.shard(shard).measures, name, count)
    monkeypatch.setenv("TETIK_REDIS_URL", redis_url)
    monkeypatch.setenv("TETIK_PREFIX", unique)  # TETIK_SHARDS left at its default
    assert main(["report", "--live", "--json"]) == 0
    found = msgspec.json.decode(capsys.readouterr().out, type=list[ReportRow])
    assert found == rows({name: 2 * count for name, count in counts.items()})
    assert [(r.variant, r.entered, r.converted) for r in found if not r.step] == [
        ("", 60, 12),
        ("*", 60, 12),
        ("holdout", 20, 2),
    ]
