"""``tetik dlq list`` and ``tetik dlq replay``: the events' dead letters, read and re-sent.

Rules of this interface:

* :func:`read_dead_letters` reads the whole dead-letter topic
  (``TETIK_DLQ_TOPIC``, every partition from its beginning) without a consumer
  group's offsets (nothing is committed, so reading changes nothing), until
  every partition is at the end it had when the read began, or nothing came
  for ``idle_s``. Each record is a :class:`DeadLetter`: where it is in the
  topic, the headers the engine wrote (:func:`flows.pipeline.decode.to_dlq`)
  and the original key and bytes.
* :func:`select` picks the records to re-send: every one, those whose reason
  contains a substring, or those at chosen offsets (``N`` in partition 0, or
  ``P:N``); the filters combine (a record must pass each one given).
* :func:`replay_dead_letters` sends the chosen records' original key and
  bytes back to the events topic, in topic order; with ``restamp`` their
  ``ts`` are shifted so the last is now, gaps kept
  (:func:`flows.jobs.produce.restamp`); a tombstone (no value) is not sent.
  A record that is still invalid goes
  back to the dead-letter topic, with its reason, when the engine reads it;
  a valid one the engine already applied is a duplicate and changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from engine.errors import ConfigError
from flows.jobs.produce import restamp
from flows.kafka.connection import client_config
from flows.kafka.producer import produce_records
from flows.kafka.topics import ensure_topics
from flows.settings import Settings

IDLE_S = 1.5  # a read ends after this long without a record (tansu's ends can lag)
TEXT_WIDTH = 70  # the table's event column


class DeadLetter(msgspec.Struct, frozen=True):
    """One record of the dead-letter topic."""

    partition: int
    offset: int
    reason: str
    error: str  # the exception class: InvalidEvent, or what a failed processing raised
    source: str  # topic/partition/offset it was read from
    at: int  # when it was dead-lettered, epoch ms
    key: bytes | None
    value: bytes | None

    def text(self) -> str:
        """The original event as text (bytes that are not UTF-8 shown replaced)."""
        return (self.value or b"").decode("utf-8", errors="replace")

    def to_json(self) -> dict[str, Any]:
        """The record as ``tetik dlq list --json`` prints it."""
        return {
            "partition": self.partition,
            "offset": self.offset,
            "reason": self.reason,
            "error": self.error,
            "source": self.source,
            "at": self.at,
            "key": (self.key or b"").decode("utf-8", errors="replace"),
            "event": self.text(),
        }


def _require(settings: Settings) -> str:
    if not settings.kafka_bootstrap:
        raise ConfigError("set TETIK_KAFKA_BOOTSTRAP to the Kafka whose dead letters to read")
    return settings.kafka_bootstrap


def read_dead_letters(settings: Settings, idle_s: float = IDLE_S) -> list[DeadLetter]:
    """Every record of the events' dead-letter topic, in partition and offset order."""
    bootstrap = _require(settings)
    ensure_topics(bootstrap, settings.topic_layout(), timeout=settings.kafka_timeout_s)
    consumer = Consumer(
        {**client_config(bootstrap), "group.id": "tetik-dlq", "enable.auto.commit": False}
    )
    try:
        topic = settings.dlq_topic
        meta = consumer.list_topics(topic, timeout=settings.kafka_timeout_s).topics[topic]
        partitions = sorted(meta.partitions)
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), 5.0)[1] for p in partitions
        }
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        found = _drain(consumer, ends, idle_s)
    finally:
        consumer.close()
    return sorted(found, key=lambda d: (d.partition, d.offset))


def _drain(consumer: Consumer, ends: dict[int, int], idle_s: float) -> list[DeadLetter]:
    found: list[DeadLetter] = []
    left = {p for p, end in ends.items() if end > 0}
    quiet_since = time.monotonic()
    while left and time.monotonic() - quiet_since < idle_s:
        for message in consumer.consume(500, 0.2):
            if message.error() is not None:
                continue
            quiet_since = time.monotonic()
            letter = _letter(message)
            found.append(letter)
            if letter.offset + 1 >= ends.get(letter.partition, 0):
                left.discard(letter.partition)
    return found


def _letter(message: Any) -> DeadLetter:
    headers = dict(message.headers() or [])

    def header(name: str) -> str:
        value = headers.get(name)
        return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else ""

    source = "/".join(header(f"tetik.source.{part}") for part in ("topic", "partition", "offset"))
    at = header("tetik.error.at")
    return DeadLetter(
        partition=message.partition(),
        offset=message.offset(),
        reason=header("tetik.error.reason") or "-",
        error=header("tetik.error.class") or "-",
        source=source,
        at=int(at) if at.isdigit() else 0,
        key=message.key(),
        value=message.value(),
    )


def parse_offset(text: str) -> tuple[int, int]:
    """``N`` (partition 0) or ``P:N`` as (partition, offset); ValueError saying how."""
    head, _, tail = text.rpartition(":")
    try:
        partition, offset = (int(head) if head else 0), int(tail)
    except ValueError:
        raise ValueError(f"--offset {text!r}: write an offset N, or P:N for partition P") from None
    if partition < 0 or offset < 0:
        raise ValueError(f"--offset {text!r}: partitions and offsets are 0 or more")
    return partition, offset


def select(
    letters: Iterable[DeadLetter],
    reason: str | None = None,
    offsets: Sequence[tuple[int, int]] = (),
) -> list[DeadLetter]:
    """The letters that pass every filter given (none given: all of them)."""
    wanted = set(offsets)
    return [
        letter
        for letter in letters
        if (reason is None or reason.lower() in letter.reason.lower())
        and (not wanted or (letter.partition, letter.offset) in wanted)
    ]


def replay_dead_letters(
    settings: Settings, letters: Sequence[DeadLetter], restamp_now: bool = False
) -> int:
    """Send ``letters``' original records to the events topic; how many were sent."""
    bootstrap = _require(settings)
    letters = [letter for letter in letters if letter.value is not None]  # no tombstones
    values = [letter.value or b"" for letter in letters]
    if restamp_now:
        values = restamp(values, time.time_ns() // 1_000_000)
    records = [(letter.key, value) for letter, value in zip(letters, values, strict=True)]
    return produce_records(bootstrap, settings.events_topic, records)


def table(letters: Sequence[DeadLetter], partitions: bool = False) -> list[str]:
    """``tetik dlq list``'s lines: offset, reason and the event, one letter a line."""
    rows = [
        (
            f"{d.partition}:{d.offset}" if partitions else str(d.offset),
            d.reason,
            _cut(d.text()),
        )
        for d in letters
    ]
    width = max([len("offset"), *(len(r[0]) for r in rows)])
    lines = [f"{'offset':>{width}}  reason / event"]
    for offset, reason, text in rows:
        lines.append(f"{offset:>{width}}  {reason}")
        lines.append(f"{'':>{width}}    {text}")
    return lines


def _cut(text: str) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= TEXT_WIDTH else text[: TEXT_WIDTH - 3] + "..."
