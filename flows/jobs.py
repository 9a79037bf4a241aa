"""The long-running and one-shot jobs behind the command line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import redis
from bytewax.run import cli_main

from engine.errors import ConfigError
from engine.state import to_view
from flows.ingest import kafka_ingest_flow
from flows.kafka.producer import identity_of, produce_records
from flows.kafka.topics import ensure_topics
from flows.lifecycle import stop_on_signals
from flows.progress import Monitor
from flows.servers.embedded import servers
from flows.settings import Settings, from_env
from flows.store import StateStore


def say(line: str) -> None:
    """Progress for humans goes to stderr, so stdout stays machine-readable."""
    print(f"tetik: {line}", file=sys.stderr, flush=True)


def ensure_event_topics(settings: Settings, partitions: int | None = None) -> None:
    """Create ``events`` and ``events.dlq`` if missing (existing ones are kept).

    Partition counts from the settings' topic layout unless ``partitions`` is given.
    """
    events = partitions or settings.events_partitions
    wanted = {settings.events_topic: events, settings.dlq_topic: settings.dlq_partitions}
    ensure_topics(settings.kafka_bootstrap, wanted, timeout=settings.kafka_timeout_s)


def run_ingest(*, tail: bool = True, workers: int = 1) -> int:
    """Run the ingest flow until the topic ends (no tail) or SIGINT/SIGTERM."""
    base = from_env()
    with servers(progress=say) as endpoints:
        settings = base.with_endpoints(endpoints.redis_url, endpoints.kafka_bootstrap)
        ensure_event_topics(settings)
        stop = stop_on_signals()
        store = StateStore.from_url(settings.redis_url, settings.prefix, settings.windows)
        say(f"ingesting {settings.events_topic} -> {settings.redis_url} (Ctrl-C stops)")
        monitor = Monitor(store)
        monitor.start()
        flow = kafka_ingest_flow(settings, tail=tail, stop=stop)
        cli_main(flow, workers_per_process=workers)  # type: ignore[no-untyped-call]
        monitor.stop()
    return 0


def read_state(user: str, redis_url: str | None = None) -> dict[str, Any] | None:
    """A user's state as a JSON-ready view, from the Redis the engine writes to."""
    settings = from_env()
    url = redis_url or settings.redis_url
    if not url:
        raise ConfigError(
            "no Redis to read from: set TETIK_REDIS_URL (or pass --redis URL) to the Redis "
            "the engine writes to (`make demo` prints a sample user's state itself)"
        )
    state = StateStore(redis.Redis.from_url(url), settings.prefix).load(user)
    return None if state is None else to_view(state)


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
