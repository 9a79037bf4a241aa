"""``tetik bench collect``: events/s the Segment-compatible collector takes on one core.

The real ``tetik collect`` runs as a child process pinned to one CPU, against the
embedded Kafka; a load generator in this process (a small asyncio HTTP/1.1
keep-alive client, pinned to another CPU where there is one) posts pre-built
calls over ``CONNECTIONS`` connections, each waiting for its answer before it
sends again, as an SDK's sender does. A 200 means Kafka acknowledged the events
(:mod:`flows.collect.app`), so the rate is of events in Kafka; the bench reads
the topic back to check the count.

Two shapes: ``single`` (one ``/v1/track`` call a request, as a browser sends)
and ``batch`` (``/v1/batch`` with :data:`BATCH` calls, as the server SDKs send).
Reported per shape: events/s, requests/s, and the latency of a request (p50, p99,
from an HDR histogram of microseconds: :mod:`bench.percentiles`).
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import sys
import time
import urllib.request
from typing import Any, Final

import orjson
from confluent_kafka import Consumer, TopicPartition

from bench.percentiles import summary
from bench.tables import table
from flows.kafka.topics import ensure_topics
from flows.report import say
from flows.servers.embedded import servers
from flows.servers.process import HOST, free_port
from flows.settings import Settings

KEY: Final = "bench-key"
BATCH: Final = 100
CONNECTIONS: Final = 64
AUTH: Final = "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()


def bench_collect(*, quick: bool = False, singles: int = 0, batches: int = 0) -> dict[str, Any]:
    """Measure both shapes against one collector; print a table and return the figures."""
    singles = singles or (4_000 if quick else 30_000)
    batches = batches or (100 if quick else 600)
    with servers(progress=say) as endpoints:
        topic = f"bench-collect-{time.time_ns()}"
        settings = Settings(
            redis_url=endpoints.redis_url,
            kafka_bootstrap=endpoints.kafka_bootstrap,
            events_topic=topic,
            dlq_topic=f"{topic}.dlq",
        )
        ensure_topics(settings.kafka_bootstrap, settings.topic_layout())
        port = free_port()
        cpus = os.sched_getaffinity(0)
        child = _start_collector(settings, port)
        try:
            results = {
                "single": _measure(port, "/v1/track", _singles(singles)),
                "batch": _measure(port, "/v1/batch", _batches(batches)),
            }
        finally:
            os.sched_setaffinity(0, cpus)  # this process had left the collector's core
            child.send_signal(signal.SIGINT)
            child.wait(30)
        landed = _count(settings.kafka_bootstrap, topic, singles + batches * BATCH)
    result = {**results, "events_on_topic": landed, "connections": CONNECTIONS, "batch_size": BATCH}
    print(collect_table(result))
    print(f"events on the topic: {landed:,} of {singles + batches * BATCH:,} sent")
    return result


def collect_table(result: dict[str, Any]) -> str:
    """The Markdown table of a :func:`bench_collect` result."""
    rows = [_row(shape, result[shape]) for shape in ("single", "batch")]
    return table(["shape", "events/s", "requests/s", "p50 ms", "p99 ms"], rows)


def _row(shape: str, r: dict[str, float]) -> list[str]:
    rates = [f"{r['events_per_s']:,.0f}", f"{r['requests_per_s']:,.0f}"]
    return [shape, *rates, f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}"]


def _start_collector(settings: Settings, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "TETIK_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "TETIK_REDIS_URL": settings.redis_url,  # unused by collect, but no second one started
        "TETIK_EVENTS_TOPIC": settings.events_topic,
        "TETIK_DLQ_TOPIC": settings.dlq_topic,
        "TETIK_COLLECT_WRITE_KEYS": KEY,
    }
    command = [sys.executable, "-m", "cli.main", "collect", "--host", HOST, "--port", str(port)]
    child = subprocess.Popen(command, env=env)
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(child.pid, {cpus[0]})
    if len(cpus) > 1:  # the load generator on the other cores
        os.sched_setaffinity(0, set(cpus[1:]))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://{HOST}:{port}/healthz", timeout=1).close()
            return child
        except OSError:
            if child.poll() is not None:
                raise RuntimeError(f"tetik collect exited with code {child.returncode}") from None
            time.sleep(0.1)
    child.kill()
    raise RuntimeError("tetik collect did not answer /healthz within 30 s")


def _call(n: int) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Product Viewed",
        "userId": f"u{n % 5_000}",
        "messageId": f"m{n}",
        "properties": {"product_id": f"p{n % 997}", "price": 19.9, "category": "shoes/running"},
    }


def _singles(count: int) -> list[tuple[bytes, int]]:
    return [(orjson.dumps(_call(n)), 1) for n in range(count)]


def _batches(count: int) -> list[tuple[bytes, int]]:
    start = 1_000_000
    return [
        (orjson.dumps({"batch": [_call(start + b * BATCH + i) for i in range(BATCH)]}), BATCH)
        for b in range(count)
    ]


def _measure(port: int, path: str, bodies: list[tuple[bytes, int]]) -> dict[str, float]:
    say(f"bench collect: {len(bodies):,} requests to {path} over {CONNECTIONS} connections")
    latencies: list[float] = []
    started = time.perf_counter()
    asyncio.run(_load(port, path, bodies, latencies))
    seconds = time.perf_counter() - started
    events = sum(count for _, count in bodies)
    micros = summary([round(latency * 1e6) for latency in latencies], highest=60_000_000)
    return {
        "events_per_s": events / seconds,
        "requests_per_s": len(bodies) / seconds,
        "p50_ms": (micros["p50"] or 0) / 1000,
        "p99_ms": (micros["p99"] or 0) / 1000,
    }


async def _load(
    port: int, path: str, bodies: list[tuple[bytes, int]], latencies: list[float]
) -> None:
    queue = iter(bodies)
    await asyncio.gather(*(_connection(port, path, queue, latencies) for _ in range(CONNECTIONS)))


async def _connection(port: int, path: str, queue: Any, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    head = f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: {AUTH}\r\n"
    try:
        for body, _count in queue:
            request = f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body
            sent = time.perf_counter()
            writer.write(request)
            status = await _response(reader)
            latencies.append(time.perf_counter() - sent)
            if status != 200:
                raise RuntimeError(f"the collector answered {status} to {path}")
    finally:
        writer.close()


async def _response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(
        int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:")
    )
    await reader.readexactly(length)
    return int(lines[0].split(" ", 2)[1])


def _count(bootstrap: str, topic: str, expect: int) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-collect"})
    seen = 0
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
        deadline = time.monotonic() + 60
        while seen < expect and time.monotonic() < deadline:
            seen += sum(msg.error() is None for msg in consumer.consume(10_000, 0.5))
    finally:
        consumer.close()
    return seen
