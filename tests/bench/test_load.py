"""The load generator's records: ts rewritten at send time, paced sending to a real broker."""

from __future__ import annotations

import time

import orjson
import pytest
from confluent_kafka import Producer

from bench.load import PRODUCER_CONFIG, Template, send_paced, template
from flows.kafka.topics import ensure_topics
from tests.flows.live import read_topic


def test_template_rewrites_ts_and_keeps_everything_else() -> None:
    value = orjson.dumps({"event_id": "e1", "ts": "2026-01-01T00:00:00+03:00", "price": 5})
    stamped = orjson.loads(template(b"u1", value).value(1_234))
    assert stamped == {"event_id": "e1", "ts": 1_234, "price": 5}


def test_template_leaves_malformed_records_alone() -> None:
    for value in (b"{not json", b"[1, 2]", orjson.dumps({"event_id": "e1"})):
        assert template(None, value).value(99) == value


@pytest.mark.integration
def test_send_paced_holds_the_rate_and_stamps_send_time(kafka_bootstrap: str, unique: str) -> None:
    ensure_topics(kafka_bootstrap, {unique: 1})
    value = orjson.dumps({"event_id": "e", "ts": 0})
    batch = [template(b"k", value) for _ in range(600)]
    producer = Producer({"bootstrap.servers": kafka_bootstrap, **PRODUCER_CONFIG})
    before = time.time_ns() // 1_000_000
    done = send_paced(producer, unique, batch, rate=1_000)
    assert done.sent == 600
    assert 0.5 <= (done.ended_ms - done.started_ms) / 1000 < 1.5  # 600 records at 1,000/s
    records = read_topic(kafka_bootstrap, unique)
    stamps = [r["ts"] for r in records]
    assert len(records) == 600
    assert all(before <= ts <= done.ended_ms for ts in stamps)
    assert stamps == sorted(stamps)
    assert isinstance(batch[0], Template)
    assert done.ack_p99_ms >= done.ack_p50_ms >= 0
