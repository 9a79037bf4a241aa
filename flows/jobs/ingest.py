"""``tetik ingest``: Kafka events -> shopper states in Redis, until stopped.

Ingest is the live pipeline (:mod:`flows.pipeline`) with rules that hold no
journey: the same decoding, dead letters, shards, clock and state writes, and
no action. Without a recovery directory it reads the topic from its start at
every start; events the shards' states already reflect are skipped.
Without ``--tail`` it ends at the topic's end with every identity link
settled (:mod:`flows.pipeline.bounded`): a backfill ends with every event applied.
"""

from __future__ import annotations

from bytewax.dataflow import Dataflow
from bytewax.run import cli_main

from engine.journeys import Engine
from engine.rules.loader import load_rules
from flows.jobs.progress import Monitor
from flows.jobs.run import RunOptions, live_flow
from flows.kafka.topics import ensure_topics
from flows.pipeline.bounded import check_settled
from flows.pipeline.breaker import Halt
from flows.pipeline.rules_runtime import RulesRuntime
from flows.pipeline.source import stop_on_signals
from flows.report import say
from flows.retry import connect
from flows.servers.embedded import servers
from flows.settings import Settings, from_env
from flows.stores.states import Shoppers, fix_layout

NO_JOURNEYS = "version: 1\njourneys: []\n"


def ingest_flow(settings: Settings, options: RunOptions, halt: Halt) -> Dataflow:
    """The live pipeline with rules that hold no journey (see the module docstring)."""
    engine = Engine(load_rules(NO_JOURNEYS, "<ingest>"), settings.windows)
    return live_flow(settings, options, halt, runtime=RulesRuntime(engine))


def run_ingest(*, tail: bool = True, workers: int = 1) -> int:
    """Run the ingest flow until the topic ends (no tail) or SIGINT/SIGTERM."""
    base = from_env()
    with servers(progress=say) as endpoints:
        settings = base.with_endpoints(endpoints.redis_url, endpoints.kafka_bootstrap)
        ensure_topics(
            settings.kafka_bootstrap, settings.topic_layout(), timeout=settings.kafka_timeout_s
        )
        client = connect(settings.redis_url)
        fix_layout(client, settings.keys)
        halt = Halt(stop_on_signals())
        flow = ingest_flow(settings, RunOptions(workers=workers, tail=tail), halt)
        say(f"ingesting {settings.events_topic} -> {settings.redis_url} (Ctrl-C stops)")
        monitor = Monitor(Shoppers(client, settings.keys).stats)
        monitor.start()
        try:
            cli_main(flow, workers_per_process=workers)  # type: ignore[no-untyped-call]
        finally:
            monitor.stop()
        if not tail and not halt.stop.is_set():  # the end of the input settled every link
            check_settled(client, settings.keys, "tetik ingest --no-tail")
    return 0
