"""``make demo``: the ingest job end to end on embedded real servers.

It starts a private Valkey and a tansu broker, runs ``tetik ingest`` as a
child process (the real job, not an in-process shortcut), streams a generated
storefront clickstream into ``events`` at a steady rate (with some malformed
records and some redeliveries), shows a live count from the counters in
Redis, then reads back the dead-letter topic, prints a sample user's state
and stops everything it started.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from bench.generator import GeneratorConfig, generate_records
from engine.state import to_view
from flows.embedded import servers
from flows.jobs import ensure_event_topics, say
from flows.producer import Record, produce_records
from flows.progress import events_done, stats_line
from flows.settings import Settings, from_env
from flows.store import StateStore

REDELIVER_EVERY = 50  # every 50th record is sent twice, as an at-least-once producer may
TIMEOUT_S = 90.0


def run_demo(*, events: int, users: int, rate: int, seed: int) -> int:
    """Run the demo; return 0 when every record was accounted for."""
    print(f"tetik demo: {events:,} synthetic storefront events through the ingest flow", flush=True)
    with servers(progress=say) as endpoints:
        settings = from_env().with_endpoints(endpoints.redis_url, endpoints.kafka_bootstrap)
        ensure_event_topics(settings)
        say(f"topics {settings.events_topic} and {settings.dlq_topic} ready")
        store = StateStore.from_url(settings.redis_url, settings.prefix, settings.windows)
        with tempfile.TemporaryDirectory(prefix="tetik-demo-") as tmp:
            child = _start_ingest(settings, Path(tmp) / "ingest.log")
            try:
                ok = _stream_and_watch(settings, store, child, events, users, rate, seed)
            finally:
                _stop(child)
            say("ingest flow stopped")
            _summary(settings, store)
    say("embedded servers stopped; nothing left running")
    return 0 if ok else 1


def _start_ingest(settings: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update(
        TETIK_REDIS_URL=settings.redis_url,
        TETIK_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
        TETIK_PREFIX=settings.prefix,
    )
    log = log_path.open("wb")
    child = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "ingest"],
        env=env,
        stdout=log,
        stderr=log,
        start_new_session=True,  # Ctrl-C reaches the demo, which stops the child itself
    )
    say(f"ingest flow started (pid {child.pid}, log {log_path.name})")
    return child


def _records(cfg: GeneratorConfig, keys: collections.Counter[bytes]) -> Iterator[Record]:
    for index, (key, value) in enumerate(generate_records(cfg)):
        keys[key] += 1
        yield key, value
        if index % REDELIVER_EVERY == REDELIVER_EVERY - 1:
            yield key, value


def _stream_and_watch(
    settings: Settings,
    store: StateStore,
    child: subprocess.Popen[bytes],
    events: int,
    users: int,
    rate: int,
    seed: int,
) -> bool:
    now = time.time_ns() // 1_000_000
    cfg = GeneratorConfig(
        users=users, events=events, seed=seed, start_ms=now - 3_600_000, invalid_ratio=0.01
    )
    keys: collections.Counter[bytes] = collections.Counter()
    sent = [0]

    def progress(count: int) -> None:
        sent[0] = count

    def produce() -> None:
        records = _records(cfg, keys)
        sent[0] = produce_records(
            settings.kafka_bootstrap,
            settings.events_topic,
            records,
            rate=rate,
            on_progress=progress,
        )
        finished.set()

    finished = threading.Event()
    producer = threading.Thread(target=produce, daemon=True)
    start = time.monotonic()
    producer.start()
    ok = _watch(store, child, finished, sent, start)
    _show_sample(store, keys)
    return ok


def _watch(
    store: StateStore,
    child: subprocess.Popen[bytes],
    finished: threading.Event,
    sent: list[int],
    start: float,
) -> bool:
    """Print the live line until every sent record is accounted for."""
    tty = sys.stdout.isatty()
    while time.monotonic() - start < TIMEOUT_S:
        stats = store.stats()
        elapsed = time.monotonic() - start
        line = f"sent {sent[0]:>6,} | {stats_line(stats, elapsed)}"
        print(f"\r{line}" if tty else line, end="" if tty else "\n", flush=True)
        if finished.is_set() and events_done(stats) >= sent[0]:
            print(f"\nall {sent[0]:,} records accounted for in {elapsed:.1f} s", flush=True)
            return True
        if child.poll() is not None:
            print(f"\ningest flow exited early with code {child.returncode}", flush=True)
            return False
        time.sleep(0.25 if tty else 1.0)
    print(f"\ntimed out after {TIMEOUT_S:.0f} s with {events_done(store.stats()):,} of {sent[0]:,}")
    return False


def _stop(child: subprocess.Popen[bytes]) -> None:
    """SIGTERM asks the flow to finish its batch and exit; SIGKILL if it will not."""
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(15)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _show_sample(store: StateStore, keys: collections.Counter[bytes]) -> None:
    known = [(n, k) for k, n in keys.items() if k and k.startswith(b"u")]
    if not known:
        return
    _, key = max(known)
    state = store.load(key.decode())
    if state is None:
        return
    view = to_view(state)
    # `tetik state` prints every stored record; here each window shows its size and latest.
    view["windows"] = {
        name: {"count": len(records), "latest": records[-1]}
        for name, records in view["windows"].items()
    }
    print(f"\nstate of the most active shopper (`tetik state {key.decode()}`, windows shortened):")
    print(orjson.dumps(view, option=orjson.OPT_INDENT_2).decode())


def _summary(settings: Settings, store: StateStore) -> None:
    count, reason = _read_dlq(settings)
    print(f"\ndead-letter topic {settings.dlq_topic}: {count} records; first reason: {reason}")
    client = redis.Redis.from_url(settings.redis_url)
    keys = list(client.scan_iter(match=f"{settings.prefix}:state:*", count=1000))
    total = sum(int(client.memory_usage(k) or 0) for k in keys)
    if keys:
        print(
            f"users with state: {len(keys):,}; Redis memory for them {total:,} B "
            f"({total / len(keys):,.0f} B per user)"
        )
    stats = store.stats()
    print(
        ", ".join(
            f"{name} {stats.get(name, 0):,}"
            for name in ("applied", "duplicate", "stale", "invalid")
        )
    )


def _read_dlq(settings: Settings) -> tuple[int, str]:
    """Count the dead-letter records by reading them (tansu's watermarks lag)."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": "tetik-demo",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(settings.dlq_topic, 0, OFFSET_BEGINNING)])
    count, reason, quiet_since = 0, "-", time.monotonic()
    try:
        while time.monotonic() - quiet_since < 1.5:
            message = consumer.poll(0.2)
            if message is None or message.error() is not None:
                continue
            count, quiet_since = count + 1, time.monotonic()
            if reason == "-":
                reason = _header(message.headers() or [], "tetik.error.reason")
        return count, reason
    finally:
        consumer.close()


def _header(headers: Any, name: str) -> str:
    value = dict(headers).get(name)
    return value.decode() if isinstance(value, bytes) else str(value)
