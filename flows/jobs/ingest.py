"""``tetik ingest``: Kafka events -> shopper states in Redis, until stopped."""

from __future__ import annotations

from bytewax.run import cli_main

from flows.ingest import kafka_ingest_flow
from flows.jobs.progress import Monitor
from flows.kafka.topics import ensure_topics
from flows.lifecycle import stop_on_signals
from flows.report import say
from flows.servers.embedded import servers
from flows.settings import from_env
from flows.store import StateStore


def run_ingest(*, tail: bool = True, workers: int = 1) -> int:
    """Run the ingest flow until the topic ends (no tail) or SIGINT/SIGTERM."""
    base = from_env()
    with servers(progress=say) as endpoints:
        settings = base.with_endpoints(endpoints.redis_url, endpoints.kafka_bootstrap)
        ensure_topics(
            settings.kafka_bootstrap, settings.topic_layout(), timeout=settings.kafka_timeout_s
        )
        stop = stop_on_signals()
        store = StateStore.from_url(settings.redis_url, settings.prefix, settings.windows)
        say(f"ingesting {settings.events_topic} -> {settings.redis_url} (Ctrl-C stops)")
        monitor = Monitor(store.stats)
        monitor.start()
        flow = kafka_ingest_flow(settings, tail=tail, stop=stop)
        cli_main(flow, workers_per_process=workers)  # type: ignore[no-untyped-call]
        monitor.stop()
    return 0
