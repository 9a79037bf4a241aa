"""The pipeline's first step: a Kafka message becomes a stamped event or a dead letter.

Rules of this interface:

* :func:`decode_message` never raises for bad input: a message that is not a
  valid event (SPEC section 1), or whose ``ts`` is more than a day after the
  time it reached Kafka, is a :class:`Rejected` with a one-line reason.
* :func:`decode_stamped` also rejects a stale event: one older than its
  type's ``max_age`` (``TETIK_WINDOWS``) at the clock the watermark would
  stamp it with (:func:`engine.retention.check_not_stale`), which the shard's
  ``apply`` would refuse anyway; so it reaches the dead-letter topic with its
  reason instead of only a counter. ``tetik replay`` rejects the same events
  at its virtual clock.
* :func:`to_dlq` is the dead-letter record, as Kafka Connect's dead-letter
  queues: the original key and bytes, and the reason, exception class and
  source (topic, partition, offset) in headers, so it can be fixed and
  re-driven untouched.
* A valid event becomes a :class:`Stamped`: the event, the clock it is
  applied at (the watermark's stamp, :mod:`flows.pipeline.watermark`), when
  it reached Kafka, and where it was read (partition and offset), which the
  shard uses to skip what its stored states already reflect.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from bytewax.connectors.kafka import KafkaSinkMessage, KafkaSourceMessage

from engine.catalog import Product
from engine.errors import InvalidEvent
from engine.events import Event, check_not_future, decode_event
from engine.retention import check_not_stale
from engine.windows import DEFAULT_CONFIG, WindowConfig
from flows.clock import wall_ms


class Stamper(Protocol):
    def stamp(self, partition: str, ts: int, check: Callable[[int], None] | None = None) -> int: ...


class Counting(Protocol):
    def record(self, failed: bool, records: int = 1) -> None: ...


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message that is not a valid event (or whose processing failed), and why."""

    message: KafkaSourceMessage[Any, Any]
    reason: str
    error: str = "InvalidEvent"  # the exception class, in the dead letter's headers


@dataclass(frozen=True, slots=True)
class Route:
    """The identity resolver's tag on an event (:mod:`flows.pipeline.identity`).

    ``kind``: ``via`` (an anonymous-only event re-keyed to the user ``anon`` is
    linked to, or a login the link already covers), ``link`` (the event asks
    to link ``anon`` to its user) or ``conflict`` (``anon`` is linked to
    another user).
    """

    kind: str
    anon: str


@dataclass(frozen=True, slots=True)
class Fanout:
    """A product update's fan-out to one shopper (:mod:`flows.pipeline.catalog_fanout`):
    the shopper's shard decides the derived events from the shopper's state
    (:func:`engine.catalog.derive`), with the product as that update made it."""

    identity: str
    record: Product
    anonymous: bool = False  # ``identity`` is an anonymous id: the resolver may re-key it


@dataclass(frozen=True, slots=True)
class Stamped:
    """A valid event with the clock it is applied at, and where and when it was read.

    ``partition`` names the input partition as the watermark does (``""`` for
    a derived event, which has no offset of its own).
    """

    event: Event
    now: int
    ingested: int | None = None
    message: KafkaSourceMessage[Any, Any] | None = None
    partition: str = ""
    route: Route | None = None  # set by the identity resolver
    fanout: Fanout | None = None  # a product update on its way to one interested shopper

    @property
    def offset(self) -> int:
        offset = None if self.message is None else self.message.offset
        return -1 if offset is None else offset


def decode_message(message: KafkaSourceMessage[Any, Any]) -> Event | Rejected:
    """Validate one Kafka message (see the module rules)."""
    if message.value is None:
        return Rejected(message, "message has no value (tombstone); expected one JSON event")
    try:
        event = decode_event(message.value)
        check_not_future(event, kafka_time(message) or wall_ms())
    except InvalidEvent as exc:
        return Rejected(message, exc.reason)
    return event


def kafka_time(message: KafkaSourceMessage[Any, Any]) -> int | None:
    """When the message reached Kafka (CreateTime or LogAppendTime), or None."""
    stamp = message.timestamp
    return stamp[1] if stamp is not None and stamp[0] != 0 else None


def partition_name(message: KafkaSourceMessage[Any, Any]) -> str:
    """An input partition's name, as the source and the watermark name it."""
    return f"{message.partition}-{message.topic}"


def decode_stamped(
    clock: Stamper, breaker: Counting | None = None, windows: WindowConfig = DEFAULT_CONFIG
) -> Callable[[KafkaSourceMessage[Any, Any]], Stamped | Rejected]:
    """The ``decode`` step: a message becomes a :class:`Stamped` or a :class:`Rejected`."""

    def decode(message: KafkaSourceMessage[Any, Any]) -> Stamped | Rejected:
        item = _stamped(clock, message, windows)
        if breaker is not None:
            breaker.record(isinstance(item, Rejected))
        return item

    return decode


def _stamped(
    clock: Stamper, message: KafkaSourceMessage[Any, Any], windows: WindowConfig
) -> Stamped | Rejected:
    event = decode_message(message)
    if isinstance(event, Rejected):
        return event
    partition = partition_name(message)
    try:  # refused before it is recorded: a stamped event holds its partition until applied
        now = clock.stamp(partition, event.ts, lambda at: check_not_stale(event, at, windows))
    except InvalidEvent as exc:
        return Rejected(message, exc.reason)
    return Stamped(event, now, kafka_time(message), message, partition)


def to_dlq(rejected: Rejected) -> KafkaSinkMessage[Any, Any]:
    """The dead-letter record (see the module rules)."""
    source = rejected.message
    headers = [
        ("tetik.error.reason", rejected.reason.encode()),
        ("tetik.error.class", rejected.error.encode()),
        ("tetik.source.topic", str(source.topic).encode()),
        ("tetik.source.partition", str(source.partition).encode()),
        ("tetik.source.offset", str(source.offset).encode()),
        ("tetik.error.at", str(wall_ms()).encode()),
    ]
    return KafkaSinkMessage(key=source.key, value=source.value, headers=headers)
