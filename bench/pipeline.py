"""The live pipeline in process: its CPU per event on the e2e bench's clickstream.

``python -m bench.pipeline [--events N] [--runs R] [--anon 0.3,0]`` builds the
live dataflow (:func:`flows.pipeline.dataflow.build_flow`, configured as
``tetik run`` configures it: 8 shards, the segments sweeps and the RFM
runtime, the garbage collector tuned as ``tetik run`` tunes it) over a source
that hands out ``events`` generated records (the bench's clickstream, seed 11,
10,000 users; ``anon`` of the sessions start logged out) as fast as the
pipeline takes them, 1,000 per poll over 4 partitions, each ``ts`` rewritten
to the wall clock at hand-out (20 per ms, as at 20,000 events/s). The rules are
the e2e bench's journey (:mod:`bench.journey`); Redis and Kafka are the
embedded servers (or ``TETIK_REDIS_URL`` / ``TETIK_KAFKA_BOOTSTRAP``).

Measured per run, until every event is applied (counted ``applied``,
``duplicate`` or ``identity.forwarded`` by the shards): the CPU time of the
worker's thread per event (``cpu_us``; the wall clock would charge the
machine's other load to it), the wall-clock rate, and per event the Redis
commit scripts and the states written. Runs of the ``anon`` values are
interleaved, ``runs`` of each, and the median and the minimum are reported:
on a shared machine single runs vary by 20 % or more.

Unlike ``tetik bench e2e`` it leaves out the Kafka consumer, the broker and
the load generator (their CPU shares the machine with the engine there), so
a change in the engine's own cost shows here first.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
import uuid
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from bytewax.connectors.kafka import KafkaSourceMessage
from bytewax.inputs import DynamicSource, StatelessSourcePartition
from bytewax.testing import TestingSink, run_main
from confluent_kafka import Producer

from bench.journey import RULES
from bench.tables import table
from clickstream.generator import GeneratorConfig, generate_records
from engine.journeys import Engine
from engine.rules.loader import load_rules
from flows.clock import wall_ms
from flows.kafka.topics import ensure_topics
from flows.pipeline.dataflow import build_flow
from flows.pipeline.rfm_live import RfmFollower, RfmRuntime
from flows.pipeline.rules_runtime import RulesRuntime
from flows.pipeline.segment_sweeps import RulesSweep, SegmentRecheck
from flows.pipeline.shard import ShardConfig, ShardReport
from flows.pipeline.watermark import Watermark
from flows.retry import RedisClient, connect
from flows.servers.embedded import servers
from flows.stores.emissions import PRODUCER_CONFIG, Emitter
from flows.stores.keys import Keys

EVENTS = 80_000
USERS = 10_000
PARTITIONS = 4
SHARDS = 8
BATCH = 1_000
PER_MS = 20  # events per millisecond of event time in a handed-out batch
SEED = 11
_MARK = "\x00ts\x00"
_DONE = ("applied", "duplicate", "identity.forwarded")


@dataclass(frozen=True)
class Template:
    """A generated record split around its ``ts``, and the partition of its key."""

    key: bytes
    head: bytes
    tail: bytes
    partition: int


def templates(events: int, anon: float) -> list[Template]:
    """The clickstream's records, ready to be stamped with the wall clock."""
    cfg = GeneratorConfig(users=USERS, events=events, seed=SEED, anon_ratio=anon)
    marker = orjson.dumps(_MARK)
    found: list[Template] = []
    for key, value in generate_records(cfg):
        doc = orjson.loads(value)
        doc["ts"] = _MARK
        head, tail = orjson.dumps(doc).split(marker)
        found.append(Template(key, head, tail, zlib.crc32(key) % PARTITIONS))
    return found


class _Handout(StatelessSourcePartition[KafkaSourceMessage[Any, Any]]):
    def __init__(self, records: list[Template], watermark: Watermark, done: Any) -> None:
        self._records = records
        self._next = 0
        self._watermark = watermark
        self._done = done
        self._awake: datetime | None = None

    def next_batch(self) -> list[KafkaSourceMessage[Any, Any]]:
        if self._next >= len(self._records):  # every partition read to its end
            for partition in range(PARTITIONS):
                self._watermark.polled(f"{partition}-events", 0, True)
            if self._done():
                raise StopIteration
            self._awake = datetime.now(UTC) + timedelta(milliseconds=5)
            return []
        chunk = self._records[self._next : self._next + BATCH]
        now, last = wall_ms(), len(chunk) - 1
        out = []
        for n, record in enumerate(chunk):
            ts = str(now - (last - n) // PER_MS).encode()
            out.append(
                KafkaSourceMessage(
                    key=record.key,
                    value=record.head + ts + record.tail,
                    topic="events",
                    partition=record.partition,
                    offset=self._next + n,
                    timestamp=(1, now),
                )
            )
        self._next += len(chunk)
        for partition in range(PARTITIONS):
            self._watermark.polled(f"{partition}-events", 1, False)
        return out

    def next_awake(self) -> datetime | None:
        return self._awake


class Handout(DynamicSource[KafkaSourceMessage[Any, Any]]):
    """The records, a batch per poll, then open (and at its end) until ``done()``."""

    def __init__(self, records: list[Template], watermark: Watermark, done: Any) -> None:
        self._args = (records, watermark, done)

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Handout:
        records, watermark, done = self._args
        return _Handout(records if worker_index == 0 else [], watermark, done)


class _Progress:
    """How many events the shards' reports say are done, and when all were."""

    def __init__(self, reports: list[ShardReport], events: int) -> None:
        self._reports = reports
        self._seen = 0
        self._done = 0
        self._events = events
        self.finished: tuple[float, float] | None = None  # (monotonic, thread CPU)
        self._since = time.monotonic()

    def __call__(self) -> bool:
        for report in self._reports[self._seen :]:
            self._done += sum(report.counts.get(name, 0) for name in _DONE)
        self._seen = len(self._reports)
        if self.finished is None and self._done >= self._events:
            self.finished = (time.monotonic(), time.thread_time())
            self._since = time.monotonic()
        return self.finished is not None and time.monotonic() - self._since > 0.2


def _config(client: RedisClient, bootstrap: str, watermark: Watermark) -> ShardConfig:
    prefix = f"benchpipe-{uuid.uuid4().hex[:8]}"
    keys = Keys(prefix, SHARDS)
    actions = f"{prefix}.actions"
    ensure_topics(bootstrap, {actions: 4, f"{prefix}.dlq": 1, f"{prefix}.events": 1})
    runtime = RfmRuntime(
        RulesRuntime(Engine(load_rules(RULES, "rules.yaml"))), RfmFollower(client, keys)
    )
    producer = Producer({"bootstrap.servers": bootstrap, **PRODUCER_CONFIG, "log_level": 2})
    return ShardConfig(
        runtime=runtime,
        watermark=watermark,
        emitter=Emitter(producer, actions),
        client=client,
        keys=keys,
        ttl_ms=3_600_000,
        actions_topic=actions,
        dlq_topic=f"{prefix}.dlq",
        events_topic=f"{prefix}.events",
        cache_users=4096 // SHARDS,  # tetik run's default share of TETIK_CACHE_SHOPPERS
        sweeps=[SegmentRecheck(runtime), RulesSweep(runtime)],
    )


def _commands(client: RedisClient) -> dict[str, int]:
    stats: dict[str, dict[str, int]] = client.info("commandstats")
    return {name: int(value["calls"]) for name, value in stats.items()}


def run_once(client: RedisClient, bootstrap: str, records: list[Template]) -> dict[str, float]:
    """One run over ``records``; its figures (see the module docstring)."""
    watermark = Watermark([f"{p}-events" for p in range(PARTITIONS)], lateness_ms=20)
    config = _config(client, bootstrap, watermark)
    reports: list[ShardReport] = []
    progress = _Progress(reports, len(records))
    flow = build_flow(
        Handout(records, watermark, progress), TestingSink([]), TestingSink(reports), config
    )
    gc.collect()  # as tetik run does (flows.jobs.run): fewer, shorter collections
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    before = _commands(client)
    started, cpu = time.monotonic(), time.thread_time()
    run_main(flow)  # type: ignore[no-untyped-call]
    after = _commands(client)
    assert progress.finished is not None, "the run ended before every event was applied"
    ended, cpu_end = progress.finished
    events = len(records)

    def per_event(name: str) -> float:
        return (after.get(name, 0) - before.get(name, 0)) / events

    return {
        "cpu_us": (cpu_end - cpu) / events * 1e6,
        "events_per_s": events / (ended - started),
        "commits_per_event": per_event("cmdstat_evalsha"),
        "states_per_event": per_event("cmdstat_set"),
    }


def bench_pipeline(
    events: int = EVENTS, runs: int = 3, anons: tuple[float, ...] = (0.3, 0.0)
) -> dict[str, Any]:
    """``runs`` interleaved runs per share of anonymous sessions; medians and minima."""
    records = {anon: templates(events, anon) for anon in anons}
    found: dict[float, list[dict[str, float]]] = {anon: [] for anon in anons}
    with servers(kafka=True) as endpoints:
        client = connect(endpoints.redis_url)
        for _ in range(runs):
            for anon in anons:
                found[anon].append(run_once(client, endpoints.kafka_bootstrap, records[anon]))
    result: dict[str, Any] = {"events": events, "runs": runs, "by_anon": {}}
    rows = []
    for anon, measured in found.items():
        summary = {
            key: {
                "median": statistics.median(m[key] for m in measured),
                "min": min(m[key] for m in measured),
            }
            for key in measured[0]
        }
        result["by_anon"][str(anon)] = summary
        rows.append(
            [
                f"{anon:.0%}",
                f"{summary['cpu_us']['median']:.1f} ({summary['cpu_us']['min']:.1f})",
                f"{summary['events_per_s']['median']:,.0f}",
                f"{summary['commits_per_event']['median']:.3f}",
                f"{summary['states_per_event']['median']:.2f}",
            ]
        )
    header = [
        "anonymous sessions",
        "CPU us/event median (min)",
        "events/s",
        "commits/event",
        "states/event",
    ]
    print(table(header, rows))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__)
    parser.add_argument("--events", type=int, default=EVENTS)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--anon", default="0.3,0", help="shares of anonymous sessions, comma-separated"
    )
    args = parser.parse_args(argv)
    bench_pipeline(args.events, args.runs, tuple(float(a) for a in args.anon.split(",")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
