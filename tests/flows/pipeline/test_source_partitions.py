"""Listing the source's partitions gives the admin client no consumer settings."""

from __future__ import annotations

import threading
import time

import pytest

from flows.kafka.topics import ensure_topics
from flows.pipeline.source import StoppableKafkaSource
from flows.settings import LOW_LATENCY_CONSUMER


@pytest.mark.integration
def test_list_parts_warns_nothing(
    kafka_bootstrap: str, unique: str, capfd: pytest.CaptureFixture[str]
) -> None:
    topic = f"{unique}.events"
    ensure_topics(kafka_bootstrap, {topic: 3})
    source = StoppableKafkaSource(
        [kafka_bootstrap], [topic], stop=threading.Event(), add_config=dict(LOW_LATENCY_CONSUMER)
    )
    capfd.readouterr()
    assert sorted(source.list_parts()) == [f"{n}-{topic}" for n in range(3)]
    time.sleep(0.2)  # librdkafka writes its warnings from its own threads
    err = capfd.readouterr().err
    assert "CONFWARN" not in err
    assert "fetch.wait.max.ms" not in err
