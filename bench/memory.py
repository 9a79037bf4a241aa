"""``tetik bench memory``: memory per active user, in Redis and in the live engine.

Two figures per size (10k and 100k users; quick: 2k and 10k), on one set of
servers (embedded Valkey and tansu, or those of ``TETIK_REDIS_URL`` /
``TETIK_KAFKA_BOOTSTRAP``):

Redis bytes per user
    Users' states are built by the pure core from a generated clickstream
    (about 20 events per user, the calibrated mix, default windows), written
    to Redis in pipelined batches as the flows write them, and measured two
    ways: the ``INFO memory`` used_memory delta per user (includes Redis'
    per-key overhead) and the mean ``MEMORY USAGE`` of the keys.

Engine RSS
    ``tetik run`` (one worker, the abandoned-cart journey of
    :mod:`bench.journey`, fresh topics, prefix and recovery directory) runs as
    a child. Its resident set (``VmRSS``) is read once it has processed a
    warm-up of :data:`WARMUP_EVENTS` events (``rss_idle_mib``); then the
    generated events of the size (:data:`EVENTS_PER_USER` per user) are fed
    to it as fast as it takes them (:func:`feed`: ``ts`` is the wall clock at
    sending, so they are live), and the moment it has processed all of them
    ``VmRSS`` (``rss_mib``) and ``VmHWM`` (``rss_peak_mib``) are read.
    ``rss_per_user_bytes`` is ``(rss - idle) / rss_users``, ``rss_users``
    being the distinct identities fed (``users`` is those of the Redis
    figure's own, deeper clickstream). ``rss_s`` is how long feeding took.

    The figure holds everything the process grew by for those users: their
    states (every user touched in the last ``idle_ms``, 60 s, stays resident:
    all of them while ``rss_s`` is under that; a warning is printed when not),
    their journey enrollments and pending timers (``wait: 3s``), the Python
    objects of the per-user logic and the prefetch cache, Bytewax's per-key
    bookkeeping and recovery snapshots, librdkafka's buffers, and whatever the
    Python allocator keeps after freeing. It is the worst case of a burst in
    which every user is active at once: in steady traffic, users idle for
    ``idle_ms`` without a pending timer leave memory (their state stays in
    Redis).
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import orjson
import redis

from bench.e2e import Child, make_system, running
from bench.load import template
from bench.tables import table
from clickstream.generator import GeneratorConfig, generate, generate_records
from engine.events import decode_event
from engine.retention import state_ttl_ms
from engine.state import UserState, apply, dumps
from engine.windows import DEFAULT_CONFIG
from flows.clock import wall_ms as now_ms
from flows.jobs.progress import Bar
from flows.kafka.producer import Record, produce_records
from flows.kafka.topics import ensure_topics
from flows.report import say
from flows.retry import connect
from flows.servers.embedded import Endpoints, servers
from flows.stores.keys import Keys
from flows.stores.states import ShardStore, ShardWrite

REDIS_EVENTS_PER_USER = 20  # history depth of the Redis figure
EVENTS_PER_USER = 5  # backlog of the RSS figure
WARMUP_EVENTS = 50
SEED = 5
CHUNK = 2_000  # records per produce call
LEAD = 6_000  # at most this many events sent and not yet processed
TIMEOUT_S = 300.0  # processing the backlog (and the warm-up) must finish within this
IDLE_S = 60.0  # kept for the report's warning (the v2 engine keeps no idle shopper)


# --- Redis bytes per user ---


def _states(users: int) -> dict[str, UserState]:
    """The users' states after about 20 events each, spread over the last day."""
    day = 86_400_000
    cfg = GeneratorConfig(
        users=users,
        events=users * REDIS_EVENTS_PER_USER,
        seed=SEED,
        start_ms=now_ms() - day,
        span_ms=day,
    )
    states: dict[str, UserState] = {}
    now = now_ms()
    for doc in generate(cfg):
        event = decode_event(orjson.dumps(doc))
        state = states.setdefault(event.key, UserState(key=event.key))
        apply(state, event, now)
    return states


def redis_bytes(client: redis.Redis, users: int, prefix: str) -> dict[str, Any]:
    """Write the states of ``users`` under ``prefix``; measure Redis' growth per user."""
    states = _states(users)
    keys = Keys(prefix)
    ttl = state_ttl_ms(DEFAULT_CONFIG)
    before = int(client.info("memory")["used_memory"])
    items = [(k, dumps(s)) for k, s in states.items()]
    for start in range(0, len(items), 1000):  # as the shards write them: a batch per shard
        by_shard: dict[int, list[tuple[str, bytes, int | None]]] = {}
        for identity, data in items[start : start + 1000]:
            by_shard.setdefault(keys.of(identity).shard, []).append((identity, data, None))
        for shard, batch in by_shard.items():
            ShardStore(client, keys.shard(shard), ttl).commit(ShardWrite(states=batch), now_ms())
    after = int(client.info("memory")["used_memory"])
    sample = [keys.state(k) for k in list(states)[:2000]]
    usage = [int(client.memory_usage(k) or 0) for k in sample]
    return {
        "users": len(states),
        "used_memory_delta_per_user": (after - before) / len(states),
        "memory_usage_mean": sum(usage) / len(usage),
        "value_bytes_mean": sum(len(v) for _, v in items) / len(items),
        "events_per_user": sum(s.events for s in states.values()) / len(states),
    }


# --- engine RSS ---


def live_records(users: int) -> Iterator[Record]:
    """The generated records for ``users`` (5 events each), in order."""
    cfg = GeneratorConfig(users=users, events=users * EVENTS_PER_USER, seed=SEED)
    return generate_records(cfg)


def stamped(records: Iterable[Record], keys: set[bytes | None]) -> Iterator[Record]:
    """``records`` with ``ts`` set to the wall clock as each is sent; keys collected."""
    for key, value in records:
        keys.add(key)
        yield key, template(key, value).value(time.time_ns() // 1_000_000)


def proc_kib(pid: int, field: str) -> int:
    """A ``kB`` field (``VmRSS``, ``VmHWM``) of ``/proc/PID/status``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def _wait(engine: Child, count: int, deadline: float) -> int:
    """Wait until ``count`` events are processed; RuntimeError at ``deadline``."""
    if not engine.wait_until(count, deadline):
        raise RuntimeError(engine.stuck(f"processed {engine.processed():,} of {count:,} events"))
    return engine.processed()


def feed(engine: Child, label: str, bootstrap: str, records: Iterator[Record], total: int) -> int:
    """Send ``records`` in chunks, at most :data:`LEAD` events ahead of the engine.

    Rules: each record's ``ts`` is the wall clock when it is sent, and the engine
    is never further behind than ``LEAD`` events, so event time tracks the wall
    clock as for live traffic (a whole backlog stamped at once would leave every
    journey timer due by the clock but held back by the watermark, re-polled
    every 100 ms until the engine reads past it). Returns the number sent, once
    the engine has processed all of them.
    """
    bar, sent = Bar(f"memory {label}"), 0
    deadline = time.monotonic() + TIMEOUT_S
    while chunk := list(islice(records, CHUNK)):
        done = _wait(engine, sent - LEAD, deadline)
        bar.update(done / total, f"{done:,}/{total:,}")
        sent += produce_records(bootstrap, engine.system.events, chunk)
    _wait(engine, sent, deadline)
    bar.close(f"{sent:,} events")
    return sent


def engine_rss(endpoints: Endpoints, users: int, workdir: Path) -> dict[str, Any]:
    """Start ``tetik run`` on fresh topics; its RSS after a warm-up and after ``users``.

    The first :data:`WARMUP_EVENTS` records are the warm-up, the rest is fed by
    :func:`feed`. ``rss_users`` is the distinct identities of all records (the
    warm-up's few are in the idle figure too: a bias of under ``WARMUP_EVENTS``
    states).
    """
    run = f"mem{uuid.uuid4().hex[:6]}-{users}"
    system = dataclasses.replace(make_system("tetik", endpoints, run, workdir), name=f"tetik-{run}")
    ensure_topics(endpoints.kafka_bootstrap, system.layout)
    keys: set[bytes | None] = set()
    records = stamped(live_records(users), keys)
    boot, total = endpoints.kafka_bootstrap, users * EVENTS_PER_USER
    with running(system, workdir) as child:
        engine, label = Child(system, child, workdir), f"{users:,} users"
        sent = feed(engine, label, boot, islice(records, WARMUP_EVENTS), WARMUP_EVENTS)
        idle = proc_kib(child.pid, "VmRSS")
        started = time.monotonic()
        sent += feed(engine, label, boot, records, total)
        seconds = time.monotonic() - started
        rss, peak = proc_kib(child.pid, "VmRSS"), proc_kib(child.pid, "VmHWM")
    if seconds > IDLE_S:
        say(f"bench memory: feeding took {seconds:.0f} s; the first users may have left memory")
    return {
        "rss_users": len(keys),
        "rss_events": sent,
        "rss_idle_mib": idle / 1024,
        "rss_mib": rss / 1024,
        "rss_peak_mib": peak / 1024,
        "rss_per_user_bytes": (rss - idle) * 1024 / len(keys),
        "rss_s": round(seconds, 2),
    }


# --- both ---


def measure_size(endpoints: Endpoints, users: int, workdir: Path) -> dict[str, Any]:
    """Both figures for ``users``: Redis bytes per user, then the engine's RSS.

    Redis is measured first so that the engine's own writes do not land in the
    used_memory delta.
    """
    client = connect(endpoints.redis_url)
    prefix = f"mem-{uuid.uuid4().hex[:6]}-{users}"
    say(f"bench memory: {users:,} users, Redis")
    row = {"size": users, **redis_bytes(client, users, prefix)}
    say(f"bench memory: {users:,} users, engine RSS")
    row.update(engine_rss(endpoints, users, workdir))
    return row


def _table(rows: list[dict[str, Any]]) -> str:
    header = ["size", "Redis users", "events/user", "value B", "MEMORY USAGE B", "Redis B/user"]
    header += ["engine users", "RSS idle MiB", "RSS MiB", "RSS peak MiB", "RSS B/user", "fed in s"]
    return table(
        header,
        [
            [
                f"{r['size']:,}",
                f"{r['users']:,}",
                f"{r['events_per_user']:.1f}",
                f"{r['value_bytes_mean']:.0f}",
                f"{r['memory_usage_mean']:.0f}",
                f"{r['used_memory_delta_per_user']:.0f}",
                f"{r['rss_users']:,}",
                f"{r['rss_idle_mib']:.0f}",
                f"{r['rss_mib']:.0f}",
                f"{r['rss_peak_mib']:.0f}",
                f"{r['rss_per_user_bytes']:,.0f}",
                f"{r['rss_s']:.1f}",
            ]
            for r in rows
        ],
    )


def bench_memory(*, quick: bool = False) -> dict[str, Any]:
    """Measure at 10k and 100k users (quick: 2k and 10k); print a table, return the rows."""
    sizes = (2_000, 10_000) if quick else (10_000, 100_000)
    with (
        servers(kafka=True, progress=say) as endpoints,
        tempfile.TemporaryDirectory(prefix="tetik-memory-") as tmp,
    ):
        rows = [measure_size(endpoints, size, Path(tmp)) for size in sizes]
    print(_table(rows))
    return {"sizes": rows}
