"""`tetik produce --topic T --restamp`: a log sent where asked, shifted to end now."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from cli.main import _parser
from flows.jobs.produce import restamp
from tests.flows.live import read_topic

LOG = [
    b'{"event_id":"e1","type":"login","ts":1700000000000,"user_id":"u1"}',
    b'{"event_id":"e2","type":"login","ts":"2023-11-14T22:13:30.500Z","user_id":"u2"}',
    b"{not json",
    b'{"event_id":"e3","type":"login","ts":1700000060000,"user_id":"u1"}',
]


def test_restamp_keeps_the_gaps_and_ends_now() -> None:
    out = restamp(LOG, 2_000_000_000_000)
    docs = [orjson.loads(line) for line in out if line != b"{not json"]
    assert [d["ts"] for d in docs] == [
        2_000_000_000_000 - 60_000,
        2_000_000_000_000 - 60_000 + 10_500,  # the RFC 3339 one, as epoch ms
        2_000_000_000_000,
    ]
    assert out[2] == b"{not json"  # sent as it was
    assert [d["event_id"] for d in docs] == ["e1", "e2", "e3"]
    assert restamp([b"{not json"], 5) == [b"{not json"]


@pytest.mark.integration
def test_produce_sends_to_the_topic_asked_restamped(
    kafka_bootstrap: str, unique: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TETIK_KAFKA_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.setenv("TETIK_EVENTS_TOPIC", f"{unique}.events")
    monkeypatch.setenv("TETIK_DLQ_TOPIC", f"{unique}.events.dlq")
    monkeypatch.setenv("TETIK_ACTIONS_TOPIC", f"{unique}.actions")
    monkeypatch.setenv("TETIK_ACTIONS_DLQ_TOPIC", f"{unique}.actions.dlq")
    log = tmp_path / "log.jsonl"
    log.write_bytes(b"\n".join(line for line in LOG if line != b"{not json") + b"\n")
    args = _parser().parse_args(["produce", str(log), "--topic", f"{unique}.other", "--restamp"])
    before = time.time_ns() // 1_000_000
    assert args.func(args) == 0
    got = sorted(read_topic(kafka_bootstrap, f"{unique}.other"), key=lambda d: d["event_id"])
    assert [d["event_id"] for d in got] == ["e1", "e2", "e3"]
    assert before <= got[2]["ts"] <= time.time_ns() // 1_000_000
    assert got[2]["ts"] - got[0]["ts"] == 60_000
    assert read_topic(kafka_bootstrap, f"{unique}.events", idle_s=0.3) == []
