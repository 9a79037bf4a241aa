"""``tetik bench segments``: a live recheck sweep over 1M shoppers, one worker (<= 60 s).

The shoppers (1M; quick: 100k) are written straight into Redis (embedded
Valkey, or ``TETIK_REDIS_URL``): states made by the engine itself from
:data:`TEMPLATES` generated histories (views and purchases over the last 40
days, one shopper in ten with a view in the last day), each copied under its
own identity into its shard, with its shard's shopper index; writing them is
not measured. The rules (:data:`RULES`) watch three segments, two of which
change with time alone (a 1-day view window, ``since(purchase) > 30d``).

Measured: one Bytewax worker holding every shard (8) runs the live
:class:`flows.pipeline.segment_sweeps.SegmentRecheck` from its start at the
latest recheck instant until every shard's mark says done: every shopper's
state is read (one ``MGET`` per page of 500), advanced to the watermark
(:meth:`engine.journeys.Engine.advance`: its recheck instants since its
clock), and written only when a membership changed (``written``). Reported:
seconds, shoppers per second, how many changed. Goal: <= 60 s for 1M.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from bytewax.inputs import DynamicSource, StatelessSourcePartition
from bytewax.testing import TestingSink, run_main
from confluent_kafka import Producer

from bench.tables import table
from engine.events import Event
from engine.journeys import Engine
from engine.rules.loader import load_rules
from engine.state import UserState, dumps, loads
from flows.clock import wall_ms
from flows.jobs.progress import Bar
from flows.jobs.run import RunOptions
from flows.pipeline.dataflow import DropSink, build_flow
from flows.pipeline.rules_runtime import RulesRuntime
from flows.pipeline.segment_sweeps import SegmentRecheck
from flows.pipeline.shard import ShardConfig
from flows.pipeline.sweep import PAGE as SWEEP_PAGE
from flows.pipeline.sweep import unpack
from flows.pipeline.watermark import Watermark
from flows.report import say
from flows.retry import RedisClient, connect
from flows.servers.embedded import servers
from flows.stores.emissions import PRODUCER_CONFIG, Emitter
from flows.stores.keys import Keys, ShardKeys, shard_of
from flows.stores.states import read_stats

SHOPPERS = 1_000_000
QUICK_SHOPPERS = 100_000
TEMPLATES = 2_000
GOAL_S = 60.0
PAGE = SWEEP_PAGE  # the live engine's page per activation
EPOCH = timedelta(seconds=RunOptions().snapshot_s)
DAY = 86_400_000
RULES = """\
version: 1
consent: {email: opt_out}
segment_recheck: 1h
segments:
  browsing: "exists(view_product, 1d)"
  lapsed: "count(purchase) >= 1 and since(purchase) > 30d"
  buyer: "count(purchase) >= 1"
journeys:
  - {id: stopped_browsing, trigger: {segment: browsing, on: exit}, steps: [exit]}
  - {id: lapsed_buyer, trigger: {segment: lapsed}, steps: [exit]}
  - {id: new_buyer, trigger: {segment: buyer}, steps: [exit]}
"""


def templates(engine: Engine, now: int, count: int = TEMPLATES) -> list[UserState]:
    """Generated shoppers' states (module docstring), made by ``engine``."""
    rng = random.Random(13)
    made = []
    for n in range(count):
        state = UserState(key=f"template{n}")
        stamps = sorted(now - rng.randrange(2 * 3_600_000, 40 * DAY) for _ in range(6))
        if n % 10 == 0:
            stamps[-1] = now - rng.randrange(3_600_000, DAY)  # browsing: leaves within a day
        for i, ts in enumerate(stamps):
            kind = "purchase" if rng.random() < 0.3 else "view_product"
            extra: dict[str, Any] = {"revenue": 25.0} if kind == "purchase" else {}
            event = Event(
                event_id=f"t{n}-{i}",
                type=kind,
                ts=ts,
                user_id=state.key,
                product_id=f"p{rng.randrange(500)}",
                **extra,
            )
            engine.on_event(state, event, ts)
        made.append(state)
    return made


def populate(
    client: RedisClient,
    keys: Keys,
    shoppers: int,
    made: list[UserState],
    what: str = "segments",
    extra: Callable[[Any, ShardKeys, str, int], None] | None = None,
) -> str:
    """Write ``shoppers`` copies of the templates into their shards (and whatever
    ``extra(pipeline, shard_keys, identity, n)`` adds for each); their name prefix."""
    run = f"{what[0]}{uuid.uuid4().hex[:6]}"
    bar = Bar(f"{what}: writing shoppers")
    chunk = 5_000
    for start in range(0, shoppers, chunk):
        pipe = client.pipeline(transaction=False)
        for n in range(start, min(shoppers, start + chunk)):
            identity = f"{run}-{n:07d}"
            state = loads(dumps(made[n % len(made)]))
            state.key = identity
            shard = keys.shard(shard_of(identity, keys.shards))
            pipe.set(shard.state(identity), dumps(state))
            pipe.zadd(shard.shoppers, {identity: 0})
            if extra is not None:
                extra(pipe, shard, identity, n)
        pipe.execute()
        bar.update(min(shoppers, start + chunk) / shoppers, f"{min(shoppers, start + chunk):,}")
    bar.close(f"{shoppers:,} shoppers written")
    return run


class _Idle(StatelessSourcePartition[Any]):
    def __init__(self, until: Callable[[], bool]) -> None:
        self._until = until

    def next_batch(self) -> list[Any]:
        if self._until():
            raise StopIteration
        return []

    def next_awake(self) -> datetime:
        return datetime.now(UTC) + timedelta(milliseconds=1)  # as the Kafka source, idle


class _IdleSource(DynamicSource[Any]):
    """No events; ends once ``until()`` holds."""

    def __init__(self, until: Callable[[], bool]) -> None:
        self._until = until

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Idle:
        return _Idle(self._until)


def sweep_once(client: RedisClient, keys: Keys, engine: Engine, bootstrap: str) -> float:
    """Run the recheck sweep on one worker until every shard is done; the seconds."""
    runtime = RulesRuntime(engine)
    sweep = SegmentRecheck(runtime)
    producer = Producer({"bootstrap.servers": bootstrap, **PRODUCER_CONFIG, "log_level": 2})
    config = ShardConfig(
        runtime=runtime,
        watermark=Watermark([]),
        emitter=Emitter(producer, "bench.segments.actions"),
        client=client,
        keys=keys,
        ttl_ms=400 * DAY,
        actions_topic="bench.segments.actions",
        dlq_topic="bench.segments.dlq",
        sweeps=[sweep],
        sweep_page=PAGE,
    )

    last = [0.0]

    def done() -> bool:
        if time.monotonic() - last[0] < 0.2:  # the sweep's marks, at most 5 times a second
            return False
        last[0] = time.monotonic()
        for shard in keys.all_shards():
            raw = client.hget(shard.sweep, sweep.name)
            if raw is None or not unpack(raw.decode()).done:  # type: ignore[union-attr]
                return False
        return True

    started = time.perf_counter()
    flow = build_flow(_IdleSource(done), DropSink(), TestingSink([]), config)
    run_main(flow, epoch_interval=EPOCH)  # type: ignore[no-untyped-call]  # as tetik run
    return time.perf_counter() - started


def bench_segments(*, quick: bool = False, shoppers: int | None = None) -> dict[str, Any]:
    """Write the base, sweep it once, report (module docstring)."""
    count = shoppers or (QUICK_SHOPPERS if quick else SHOPPERS)
    engine = Engine(load_rules(RULES, "bench-segments.yaml"))
    with servers(kafka=True, progress=say) as endpoints:
        client = connect(endpoints.redis_url)
        keys = Keys(f"bseg{uuid.uuid4().hex[:6]}")
        now = wall_ms()
        made = templates(engine, now - now % 3_600_000 - 1)  # their clocks: before the instant
        populate(client, keys, count, made)
        say(f"bench segments: one worker sweeps {count:,} shoppers")
        seconds = sweep_once(client, keys, engine, endpoints.kafka_bootstrap)
        stats = read_stats(client, keys)
        _drop(client, keys)
    result = {
        "shoppers": count,
        "seconds": round(seconds, 2),
        "shoppers_per_s": round(count / seconds),
        "visited": stats.get("sweep.segments.recheck", 0),
        "goal_s": GOAL_S * count / SHOPPERS,
    }
    print(segments_table(result))
    return result


def _drop(client: RedisClient, keys: Keys) -> None:
    """Delete the bench's keys (its own prefix) so a shared Redis is left as it was."""
    for shard in keys.all_shards():
        cursor = 0
        while True:
            cursor, found = client.scan(cursor, match=f"{shard.tag}:*", count=10_000)
            if found:
                client.unlink(*found)
            if cursor == 0:
                break


def segments_table(result: dict[str, Any]) -> str:
    rows = [
        ["shoppers", f"{result['shoppers']:,}"],
        ["sweep seconds (one worker)", f"{result['seconds']:.2f}"],
        ["shoppers per second", f"{result['shoppers_per_s']:,}"],
        ["visited", f"{result['visited']:,}"],
        ["goal", f"<= {result['goal_s']:.0f} s"],
    ]
    return table(["live recheck sweep", "value"], rows)
