"""``tetik produce FILE``: send a JSONL file of events to the events topic.

Missing topics are created first, as every job creates them:
:meth:`flows.settings.Settings.topic_layout`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from engine.errors import ConfigError
from flows.kafka.producer import identity_of, produce_records
from flows.kafka.topics import ensure_topics
from flows.report import say
from flows.settings import from_env


def produce_file(path: str, rate: float = 0.0) -> int:
    """Send every line of a JSONL file to the events topic, as-is (bad lines too);
    ``rate`` > 0 paces them (records/s)."""
    settings = from_env()
    if not settings.kafka_bootstrap:
        raise ConfigError("set TETIK_KAFKA_BOOTSTRAP to the Kafka the engine reads from")
    ensure_topics(
        settings.kafka_bootstrap, settings.topic_layout(), timeout=settings.kafka_timeout_s
    )
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
