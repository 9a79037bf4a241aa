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
    generated events of the size (:data:`EVENTS_PER_USER` per user, ``ts``
    stamped with the wall clock so they are live) go to Kafka as one backlog,
    and the moment the engine has processed all of them ``VmRSS``
    (``rss_mib``) and ``VmHWM`` (``rss_peak_mib``) are read.
    ``rss_per_user_bytes`` is ``(rss - idle) / users``, ``users`` being the
    distinct identities produced. The figure holds everything the process
    grew by for them: the states of the users touched in the last
    ``idle_ms`` (60 s; every user here, as long as the backlog is processed
    within that), the journey enrollments and pending timers (``wait: 3s``),
    the Python objects of the logic and the prefetch cache, Bytewax's state
    and recovery snapshots, librdkafka's buffers, and whatever the Python
    allocator keeps after freeing. It is the worst case of a burst in which
    every user is active at once; users idle for ``idle_ms`` without a
    pending timer are dropped from memory (their state stays in Redis).
"""

from __future__ import annotations

import dataclasses
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import orjson
import redis

from bench.e2e import System, _tetik_processed, make_system, running
from bench.generator import GeneratorConfig, generate, generate_records
from bench.progress import Bar
from bench.report import table
from engine.events import decode_event
from engine.state import UserState, apply, dumps
from engine.windows import DEFAULT_CONFIG
from flows.embedded import Endpoints, servers
from flows.ingest import now_ms
from flows.jobs import say
from flows.producer import Record, produce_records
from flows.store import StateStore, state_ttl_ms
from flows.topics import ensure_topics

REDIS_EVENTS_PER_USER = 20  # history depth of the Redis figure
EVENTS_PER_USER = 5  # backlog of the RSS figure
WARMUP_EVENTS = 50
SEED = 5
TIMEOUT_S = 300.0  # processing the backlog (and the warm-up) must finish within this


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
    store = StateStore(client, prefix=prefix, ttl_ms=state_ttl_ms(DEFAULT_CONFIG))
    before = int(client.info("memory")["used_memory"])
    items = [(k, dumps(s)) for k, s in states.items()]
    for start in range(0, len(items), 1000):
        store.write(items[start : start + 1000], {})
    after = int(client.info("memory")["used_memory"])
    sample = [store.key(k) for k in list(states)[:2000]]
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
        doc = orjson.loads(value)
        doc["ts"] = time.time_ns() // 1_000_000
        yield key, orjson.dumps(doc)


def proc_kib(pid: int, field: str) -> int:
    """A ``kB`` field (``VmRSS``, ``VmHWM``) of ``/proc/PID/status``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


class Engine:
    """A running ``tetik run`` child and how far it got."""

    def __init__(
        self, system: System, child: subprocess.Popen[bytes], workdir: Path, client: redis.Redis
    ) -> None:
        self.system, self.child, self.workdir = system, child, workdir
        self.prefix = system.env["TETIK_PREFIX"]
        self.client = client

    def processed(self) -> int:
        return _tetik_processed(self.client, self.prefix)

    def wait_for(self, count: int, label: str) -> None:
        """Wait until ``count`` events are processed (RuntimeError after TIMEOUT_S)."""
        bar, started = Bar(f"memory {label}"), time.monotonic()
        while (done := self.processed()) < count:
            self.check()
            if time.monotonic() - started > TIMEOUT_S:
                raise RuntimeError(self.stuck(f"processed {done:,} of {count:,} events"))
            bar.update(done / count, f"{done:,}/{count:,}")
            time.sleep(0.05)
        bar.close(f"{count:,} events")

    def check(self) -> None:
        if self.child.poll() is not None:
            raise RuntimeError(self.stuck(f"exited with {self.child.returncode}"))

    def stuck(self, what: str) -> str:
        log = (self.workdir / f"{self.system.name}.log").read_text(errors="replace")
        return f"tetik run {what}; the end of its log:\n{log[-2000:]}"


def engine_rss(endpoints: Endpoints, users: int, workdir: Path) -> dict[str, Any]:
    """Start ``tetik run`` on fresh topics; its RSS after a warm-up and after ``users``.

    The first :data:`WARMUP_EVENTS` records are the warm-up; the rest is produced
    as one backlog. ``rss_users`` is the distinct identities of all records (the
    warm-up's few are in the idle figure too, a bias of under ``WARMUP_EVENTS``
    states).
    """
    run = f"mem{uuid.uuid4().hex[:6]}-{users}"
    system = dataclasses.replace(make_system("tetik", endpoints, run, workdir), name=f"tetik-{run}")
    ensure_topics(endpoints.kafka_bootstrap, {system.events: 4, system.output: 1})
    client = redis.Redis.from_url(endpoints.redis_url)
    records, keys = live_records(users), set[bytes | None]()
    with running(system, workdir) as child:
        engine = Engine(system, child, workdir, client)
        sent = produce_records(
            endpoints.kafka_bootstrap, system.events, stamped(islice(records, WARMUP_EVENTS), keys)
        )
        engine.wait_for(sent, f"{users:,} users warm-up")
        idle = proc_kib(child.pid, "VmRSS")
        started = time.monotonic()
        sent += produce_records(endpoints.kafka_bootstrap, system.events, stamped(records, keys))
        engine.wait_for(sent, f"{users:,} users backlog")
        seconds = time.monotonic() - started
        rss, peak = proc_kib(child.pid, "VmRSS"), proc_kib(child.pid, "VmHWM")
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
    client = redis.Redis.from_url(endpoints.redis_url)
    prefix = f"mem-{uuid.uuid4().hex[:6]}-{users}"
    say(f"bench memory: {users:,} users, Redis")
    row = {"size": users, **redis_bytes(client, users, prefix)}
    say(f"bench memory: {users:,} users, engine RSS")
    row.update(engine_rss(endpoints, users, workdir))
    return row


def _table(rows: list[dict[str, Any]]) -> str:
    header = ["users", "events/user", "value B", "MEMORY USAGE B", "Redis B/user"]
    header += ["RSS users", "RSS idle MiB", "RSS MiB", "RSS peak MiB", "RSS B/user"]
    return table(
        header,
        [
            [
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
