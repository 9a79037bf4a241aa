"""`tetik dlq list` and `tetik dlq replay` against the embedded Kafka."""

from __future__ import annotations

import time

import orjson
import pytest
from confluent_kafka import Producer

from cli.main import _parser
from engine.errors import ConfigError
from flows.jobs.dlq import parse_offset
from tests.flows.live import read_topic

pytestmark = pytest.mark.integration

STALE = b'{"event_id":"e1","type":"login","ts":1700000000000,"user_id":"u1"}'
LATER = b'{"event_id":"e2","type":"login","ts":1700000005000,"user_id":"u1"}'
BROKEN = b'{"event_id": "e3", "type": '


def _dead_letters(bootstrap: str, topic: str) -> None:
    """Three dead letters as the decode step writes them (flows.pipeline.decode.to_dlq)."""
    producer = Producer({"bootstrap.servers": bootstrap})
    for offset, (value, reason) in enumerate(
        [
            (STALE, "ts 1700000000000 is 30.5 days before the engine's clock; stale"),
            (BROKEN, "not valid JSON: unexpected end of input"),
            (LATER, "ts 1700000005000 is 30.5 days before the engine's clock; stale"),
        ]
    ):
        headers: list[tuple[str, str | bytes | None]] = [
            ("tetik.error.reason", reason.encode()),
            ("tetik.error.class", b"InvalidEvent"),
            ("tetik.source.topic", b"events"),
            ("tetik.source.partition", b"0"),
            ("tetik.source.offset", str(offset + 10).encode()),
            ("tetik.error.at", b"1764000000000"),
        ]
        producer.produce(topic, value=value, key=b"u1", headers=headers)
    producer.flush(10)


def _cli(*argv: str) -> int:
    args = _parser().parse_args(list(argv))
    code: int = args.func(args)
    return code


@pytest.fixture
def topics(kafka_bootstrap: str, unique: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("TETIK_KAFKA_BOOTSTRAP", kafka_bootstrap)
    for name, topic in [("EVENTS", "events"), ("DLQ", "events.dlq"), ("ACTIONS", "actions")]:
        monkeypatch.setenv(f"TETIK_{name}_TOPIC", f"{unique}.{topic}")
    monkeypatch.setenv("TETIK_ACTIONS_DLQ_TOPIC", f"{unique}.actions.dlq")
    _cli("dlq", "list")  # creates the layout
    _dead_letters(kafka_bootstrap, f"{unique}.events.dlq")
    return unique


def test_list_shows_offset_reason_and_the_raw_event(
    topics: str, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert _cli("dlq", "list", "--json") == 0
    rows = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["offset"], r["event"].encode()) for r in rows] == [
        (0, STALE),
        (1, BROKEN),
        (2, LATER),
    ]
    assert rows[1]["reason"] == "not valid JSON: unexpected end of input"
    assert (rows[1]["source"], rows[1]["error"], rows[1]["key"]) == (
        "events/0/11",
        "InvalidEvent",
        "u1",
    )
    assert _cli("dlq", "list", "--reason", "JSON") == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["offset", "reason", "/", "event"]
    assert table[1].split(maxsplit=1) == ["1", "not valid JSON: unexpected end of input"]
    assert table[2].strip() == BROKEN.decode().strip()
    assert len(table) == 3


def test_replay_resends_the_chosen_ones_restamped(
    topics: str, kafka_bootstrap: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError, match="choose what to re-send"):
        _cli("dlq", "replay")
    before = time.time_ns() // 1_000_000
    assert _cli("dlq", "replay", "--reason", "stale", "--restamp") == 0
    assert "re-sent 2 dead letter(s)" in capsys.readouterr().err
    sent = read_topic(kafka_bootstrap, f"{topics}.events")
    assert [d["event_id"] for d in sent] == ["e1", "e2"]
    assert before <= sent[1]["ts"] <= time.time_ns() // 1_000_000
    assert sent[1]["ts"] - sent[0]["ts"] == 5_000  # the gap kept
    assert _cli("dlq", "replay", "--offset", "0:2") == 0
    again = read_topic(kafka_bootstrap, f"{topics}.events")
    assert [d["ts"] for d in again][-1] == 1_700_000_005_000  # as it was


def test_offsets_parse_with_or_without_a_partition() -> None:
    assert parse_offset("7") == (0, 7)
    assert parse_offset("2:7") == (2, 7)
    with pytest.raises(ValueError, match="write an offset N, or P:N"):
        parse_offset("x")
