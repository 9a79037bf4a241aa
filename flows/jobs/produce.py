"""``tetik produce FILE``: send a JSONL file of events to the events topic (and create it)."""

from __future__ import annotations

import sys
from pathlib import Path

from engine.errors import ConfigError
from flows.kafka.producer import identity_of, produce_records
from flows.kafka.topics import ensure_topics
from flows.report import say
from flows.settings import Settings, from_env


def ensure_event_topics(settings: Settings, partitions: int | None = None) -> None:
    """Create ``events`` and ``events.dlq`` if missing (existing ones are kept).

    Partition counts from the settings' topic layout unless ``partitions`` is given.
    """
    events = partitions or settings.events_partitions
    wanted = {settings.events_topic: events, settings.dlq_topic: settings.dlq_partitions}
    ensure_topics(settings.kafka_bootstrap, wanted, timeout=settings.kafka_timeout_s)


def produce_file(path: str, rate: float = 0.0) -> int:
    """Send every line of a JSONL file to the events topic, as-is (bad lines too);
    ``rate`` > 0 paces them (records/s)."""
    settings = from_env()
    if not settings.kafka_bootstrap:
        raise ConfigError("set TETIK_KAFKA_BOOTSTRAP to the Kafka the engine reads from")
    ensure_event_topics(settings)
    lines = (line for line in Path(path).read_bytes().splitlines() if line.strip())
    records = ((identity_of(line), line) for line in lines)
    sent = produce_records(
        settings.kafka_bootstrap,
        settings.events_topic,
        records,
        rate=rate,
        on_progress=_count_progress,
    )
    say(f"sent {sent:,} records to {settings.events_topic}")
    return 0


def _count_progress(sent: int) -> None:
    print(f"\rsent {sent:,}", end="", file=sys.stderr, flush=True)
