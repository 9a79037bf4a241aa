"""Latency samples from an output topic, and their HDR summary."""

from __future__ import annotations

import time

import orjson
import pytest
from confluent_kafka import Producer

from bench.percentiles import summary
from bench.watch import OutputWatch
from flows.kafka.topics import ensure_topics


def test_summary_percentiles_come_from_the_values() -> None:
    figures = summary(list(range(1, 1001)))
    assert figures["count"] == 1000
    assert figures["p50"] == 500
    assert figures["p99"] == 990
    assert figures["p99.9"] == 999
    assert figures["max"] == 1000
    assert figures["p95"] == 950


def test_summary_of_nothing_is_empty() -> None:
    assert summary([]) == {"count": 0, "p50": None, "p95": None, "p99": None, "p99.9": None,
                           "max": None}  # fmt: skip


@pytest.mark.integration
def test_watch_measures_from_ingested_at_and_due_time(kafka_bootstrap: str, unique: str) -> None:
    ensure_topics(kafka_bootstrap, {unique: 1})
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    now = time.time_ns() // 1_000_000
    docs = [{"ingested_at": now - 40}, {"ingested_at": now - 10}, {"at": now - 500}, {"x": 1}]
    for doc in docs:
        producer.produce(unique, orjson.dumps(doc), timestamp=now)
    producer.flush(10)
    watch = OutputWatch(kafka_bootstrap, unique)
    watch.start()
    deadline = time.monotonic() + 20
    while watch.records < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    watch.stop()
    caused, fired = watch.between(now - 1000, now)
    assert watch.records == 4
    assert sorted(caused) == [10, 40]
    assert fired == [500]
    assert watch.between(now - 20, now)[0] == [10]  # cut by send time
