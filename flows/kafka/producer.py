"""Sending records to Kafka at a steady rate, with progress."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import orjson
from confluent_kafka import Producer

from engine.events import PRODUCT_UPDATE
from flows import logs
from flows.kafka.connection import client_config

Record = tuple[bytes | None, bytes]


def identity_of(value: bytes) -> bytes | None:
    """The Kafka key of a raw event: user_id else anon_id (None if unreadable); a
    ``product_update`` (no shopper) by its product_id, so one product's updates
    stay in order on one partition."""
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    if doc.get("type") == PRODUCT_UPDATE:
        key = doc.get("product_id")
    else:
        key = doc.get("user_id") or doc.get("anon_id")
    return key.encode() if isinstance(key, str) else None


def produce_records(
    bootstrap: str,
    topic: str,
    records: Iterable[Record],
    *,
    rate: float = 0.0,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Send ``(key, value)`` records; ``rate`` > 0 paces them (records/s).

    Returns the number sent once every record is acknowledged by the broker;
    raises RuntimeError if any delivery failed.
    """
    producer = Producer(
        {**client_config(bootstrap), "linger.ms": 5, "acks": "all", "logger": logs.KAFKA}
    )
    failures: list[str] = []

    def delivered(err: object, _msg: object) -> None:
        if err is not None:
            failures.append(str(err))

    start = time.monotonic()
    sent = 0
    for key, value in records:
        send_record(producer, topic, key, value, delivered)
        sent += 1
        if rate > 0:
            _pace(start, sent, rate)
        if on_progress and sent % 500 == 0:
            on_progress(sent)
    producer.flush(30)
    if failures:
        raise RuntimeError(f"{len(failures)} records were not delivered to {topic}: {failures[0]}")
    return sent


def send_record(
    producer: Producer, topic: str, key: bytes | None, value: bytes, cb: Callable[..., None]
) -> None:
    while True:
        try:
            producer.produce(topic, value=value, key=key, on_delivery=cb)
            producer.poll(0)
            return
        except BufferError:  # local queue full: let the broker catch up
            producer.poll(0.05)


def _pace(start: float, sent: int, rate: float) -> None:
    ahead = sent / rate - (time.monotonic() - start)
    if ahead > 0.002:
        time.sleep(ahead)
