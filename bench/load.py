"""Offered load: the generated clickstream sent to Kafka at a set rate, step by step.

The load runs in its own process (:class:`LoadProcess`), so its pacing and the
harness's reading of outputs do not share a GIL. It holds one generator for
its whole life: every step continues the same seeded stream, so each system
under test receives the same events in the same order.

Each record's ``ts`` is rewritten to the wall clock at the moment it is
produced; its Kafka timestamp (CreateTime, set by ``produce``) is the send
time that end-to-end latency is measured from.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import orjson
from confluent_kafka import Producer

from bench.percentiles import percentile
from clickstream.generator import GeneratorConfig, generate_records
from flows.kafka.producer import send_record

_MARK = "\x00ts\x00"
_QUOTED = orjson.dumps(_MARK)

# librdkafka's default linger (5 ms), as a storefront's producer would have it: it is
# part of the measured latency. Shorter lingers multiply the batches tansu stores,
# and its in-memory storage slows down with their number.
PRODUCER_CONFIG = {"linger.ms": 5, "acks": "1", "queue.buffering.max.messages": 1_000_000}


@dataclass(frozen=True)
class Template:
    """A record whose ``ts`` is filled in at send time."""

    key: bytes | None
    head: bytes
    tail: bytes  # empty when the value has no ts to rewrite (kept as generated)

    def value(self, now_ms: int) -> bytes:
        if not self.tail:
            return self.head
        return self.head + str(now_ms).encode() + self.tail


def template(key: bytes | None, value: bytes) -> Template:
    """Split a generated record around its ``ts`` (malformed records stay as they are)."""
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return Template(key, value, b"")
    if not isinstance(doc, dict) or "ts" not in doc:
        return Template(key, value, b"")
    doc["ts"] = _MARK
    head, tail = orjson.dumps(doc).split(_QUOTED, 1)
    return Template(key, head, tail or b" ")


@dataclass(frozen=True)
class StepDone:
    """What one step sent, and when (wall-clock epoch ms)."""

    sent: int
    started_ms: int
    ended_ms: int
    # Broker acknowledgement time of the step's records (ms after produce): when it
    # grows, the broker itself is the bottleneck, not the system under test.
    ack_p50_ms: int = 0
    ack_p99_ms: int = 0


def send_paced(producer: Producer, topic: str, batch: list[Template], rate: float) -> StepDone:
    """Produce ``batch`` at ``rate`` records/s, in 1 ms slices; wait for acks."""
    started = time.monotonic()
    started_ms = time.time_ns() // 1_000_000
    sent = 0
    acks: list[int] = []

    def acked(_err: object, message: Any) -> None:
        acks.append(time.time_ns() // 1_000_000 - message.timestamp()[1])

    while sent < len(batch):
        due = min(len(batch), int((time.monotonic() - started) * rate) + 1)
        now_ms = time.time_ns() // 1_000_000
        for item in batch[sent:due]:
            send_record(producer, topic, item.key, item.value(now_ms), acked)
        sent = due
        producer.poll(0)
        time.sleep(0.001)
    ended_ms = time.time_ns() // 1_000_000
    producer.flush(30)
    p50, p99 = percentile(acks, 50) or 0, percentile(acks, 99) or 0
    return StepDone(sent, started_ms, ended_ms, p50, p99)


def _templates(stream: Iterator[tuple[bytes | None, bytes]], count: int) -> list[Template]:
    return [template(key, value) for key, value in _take(stream, count)]


def _take(stream: Iterator[Any], count: int) -> Iterator[Any]:
    for _ in range(count):
        item = next(stream, None)
        if item is None:
            return
        yield item


def _serve(conn: Connection, bootstrap: str, cfg: GeneratorConfig) -> None:
    """The load process: ``("topic", name)`` sets where to send; ``("prepare", count)``
    generates the next ``count`` records (answered with True); ``("go", rate)`` sends
    them (answered with :class:`StepDone`); None ends it."""
    stream = iter(generate_records(cfg))
    producer = Producer({"bootstrap.servers": bootstrap, **PRODUCER_CONFIG})
    batch: list[Template] = []
    topic = ""
    while (request := conn.recv()) is not None:
        verb, arg = request
        if verb == "topic":
            topic = str(arg)
        elif verb == "prepare":
            batch = _templates(stream, int(arg))
            conn.send(True)
        else:
            conn.send(send_paced(producer, topic, batch, float(arg)))
    producer.flush(30)


class LoadProcess:
    """A child process that sends steps of load, continuing one generated stream."""

    def __init__(self, bootstrap: str, cfg: GeneratorConfig) -> None:
        context = multiprocessing.get_context("spawn")  # the parent has Kafka threads
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(child, bootstrap, cfg), daemon=True, name="tetik-load"
        )
        self._process.start()

    @property
    def pid(self) -> int:
        return self._process.pid or 0

    def topic(self, name: str) -> None:
        """Send the next steps to topic ``name``."""
        self._conn.send(("topic", name))

    def prepare(self, count: int) -> None:
        """Generate the next step's ``count`` records (blocks until they are ready)."""
        self._conn.send(("prepare", count))
        self._conn.recv()

    def go(self, rate: float) -> None:
        """Start sending the prepared records at ``rate`` records/s."""
        self._conn.send(("go", rate))

    def poll(self, timeout: float) -> StepDone | None:
        """The finished step, or None if it is still running after ``timeout`` s."""
        if self._conn.poll(timeout):
            done: StepDone = self._conn.recv()
            return done
        return None

    def close(self) -> None:
        self._conn.send(None)
        self._process.join(30)
        if self._process.is_alive():
            self._process.kill()
