"""Ingest throughput on the embedded stack, against same-run baselines.

One run, one machine, one input: a generated clickstream is produced to a
fresh topic, then read back by three consumers in turn:

* ``core``: the pure engine (decode + apply) in a loop, no I/O: the ceiling;
* ``decode_only``: a Bytewax flow reading the same topic and decoding each
  event, writing nothing: the framework's floor for this input;
* ``ingest``: the real ingest flow (Kafka -> decode -> state -> Redis, DLQ).

Reported: events/s of each and the ratio ingest / decode_only, so a noisy
machine moves all figures together and the ratio stays meaningful.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSource
from bytewax.dataflow import Dataflow
from bytewax.testing import run_main

from bench.tables import table
from clickstream.generator import GeneratorConfig, generate_records
from engine.errors import InvalidEvent
from engine.events import decode_event
from engine.state import UserState, apply
from flows.clock import wall_ms as now_ms
from flows.jobs.ingest import ingest_flow
from flows.jobs.run import RunOptions
from flows.kafka.producer import produce_records
from flows.kafka.topics import ensure_topics
from flows.pipeline.breaker import Halt
from flows.report import say
from flows.retry import connect
from flows.servers.embedded import servers
from flows.settings import Settings
from flows.stores.states import fix_layout


def _core_rate(records: Sequence[tuple[bytes | None, bytes]]) -> float:
    states: dict[str, UserState] = {}
    now = now_ms()
    start = time.perf_counter()
    for _, value in records:
        try:
            event = decode_event(value)
        except InvalidEvent:
            continue
        state = states.get(event.key)
        if state is None:
            state = states[event.key] = UserState(key=event.key)
        apply(state, event, now)
    return len(records) / (time.perf_counter() - start)


def _decode_only_flow(settings: Settings) -> Dataflow:
    flow = Dataflow("decode_only")
    source = KafkaSource([settings.kafka_bootstrap], [settings.events_topic], tail=False)
    messages = op.input("events", flow, source)
    op.inspect("discard", op.map("decode", messages, _decode_or_none), lambda _s, _x: None)
    return flow


def _decode_or_none(message: Any) -> Any:
    try:
        return decode_event(message.value)
    except InvalidEvent:
        return None


def _timed(flow: Dataflow, count: int) -> float:
    start = time.perf_counter()
    run_main(flow)  # type: ignore[no-untyped-call]
    return count / (time.perf_counter() - start)


def bench_ingest(*, quick: bool = False, users: int = 0, events: int = 0) -> dict[str, Any]:
    """Run the three measurements; print a table and save the JSON result."""
    events = events or (20_000 if quick else 200_000)
    users = users or events // 20
    cfg = GeneratorConfig(
        users=users,
        events=events,
        seed=3,
        start_ms=now_ms() - 6 * 3_600_000,
        span_ms=6 * 3_600_000,
        invalid_ratio=0.005,
    )
    say(f"bench ingest: generating {events:,} events for {users:,} users")
    records = list(generate_records(cfg))
    with servers(progress=say) as endpoints:
        settings = Settings(
            endpoints.redis_url,
            endpoints.kafka_bootstrap,
            events_topic=f"bench-{time.time_ns()}",
            prefix="bench",
        )
        ensure_topics(settings.kafka_bootstrap, settings.topic_layout())
        say("producing to the embedded broker")
        produce_records(settings.kafka_bootstrap, settings.events_topic, records)
        say("measuring: core (no I/O)")
        rates = {"core": _core_rate(records)}
        say("measuring: decode_only flow (Kafka -> decode)")
        rates["decode_only"] = _timed(_decode_only_flow(settings), len(records))
        say("measuring: ingest flow (Kafka -> decode -> state -> Redis)")
        fix_layout(connect(settings.redis_url), settings.keys)
        flow = ingest_flow(settings, RunOptions(tail=False), Halt())
        rates["ingest"] = _timed(flow, len(records))
    result = {
        "events": len(records),
        "users": users,
        "events_per_s": rates,
        "ingest_vs_decode_only": rates["ingest"] / rates["decode_only"],
    }
    print(table(["measure", "events/s"], [[k, f"{v:,.0f}"] for k, v in rates.items()]))
    print(f"ingest / decode_only = {result['ingest_vs_decode_only']:.2f}")
    return result
