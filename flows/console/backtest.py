"""The console's backtest: a draft rules file run over recent events, before any push.

Rules of this interface:

* The events are either pasted JSONL (one event a line, as ``tetik replay``
  reads) or read from the events topic: its latest ``count`` records (each
  partition's share of them, from its end) or those Kafka timestamped in the
  last ``minutes`` minutes (``offsets_for_times``); ``assign`` without a
  consumer group, nothing committed, in the order of their Kafka
  timestamps. At most :data:`MAX_EVENTS` either way. Without Kafka settings or
  a readable topic, :class:`~engine.errors.ConfigError` says so in one line.
* The draft is compiled with :func:`~engine.rules.loader.load_rules`; a bad
  draft raises :class:`~engine.errors.RulesError` (the page shows its
  ``FILE:LINE:COL`` lines). It is run as ``tetik replay --drain`` runs it
  (virtual clock, pending waits fired), with the state bounds of
  ``TETIK_WINDOWS``; nothing is written to Redis or Kafka.
* :class:`Outcome` holds every sent action (the first :data:`SHOWN` of them
  for the page), and counts by status, journey and channel.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from confluent_kafka import Consumer, TopicPartition

from engine.actions import Action
from engine.errors import ConfigError
from engine.journeys import Engine
from engine.replay import ReplayStats, replay
from engine.rules.loader import load_rules
from flows.clock import wall_ms
from flows.settings import Settings

MAX_EVENTS = 100_000
SHOWN = 200
READ_TIMEOUT_S = 5.0


@dataclass
class Outcome:
    """What a draft would have done."""

    events: int
    invalid: int
    actions: list[Action]
    by_status: Counter[str] = field(default_factory=Counter)
    by_journey: Counter[str] = field(default_factory=Counter)
    by_channel: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)  # bad event lines: "line N: reason"


def run(draft: str, lines: list[bytes], settings: Settings) -> Outcome:
    """Replay ``lines`` through the draft (RulesError for a bad draft)."""
    rules = load_rules(draft.encode(), "draft.yaml")
    stats = ReplayStats()
    errors: list[str] = []
    actions = replay(
        Engine(rules, settings.windows),
        lines[:MAX_EVENTS],
        drain=True,
        stats=stats,
        on_error=lambda n, reason: errors.append(f"line {n}: {reason}"),
    )
    outcome = Outcome(stats.events, stats.invalid, [a for a in actions if a.status == "sent"])
    outcome.errors = errors[:20]
    for action in actions:
        outcome.by_status[action.status] += 1
        if action.status == "sent":
            outcome.by_journey[action.journey] += 1
            outcome.by_channel[action.channel] += 1
    return outcome


def recent_events(settings: Settings, count: int, minutes: int = 0) -> list[bytes]:
    """The events topic's latest ``count`` records, or (``minutes`` > 0) those of its last
    ``minutes`` minutes, at most :data:`MAX_EVENTS` (see the module rules)."""
    if not settings.kafka_bootstrap:
        raise ConfigError(
            "no events topic to read: start the console with TETIK_KAFKA_BOOTSTRAP set to the "
            "engine's Kafka, or paste the events"
        )
    consumer = Consumer(settings.consumer_config("tetik-console", **{"enable.auto.commit": False}))
    try:
        partitions = _partitions(consumer, settings.events_topic)
        share = -(-max(1, min(count, MAX_EVENTS)) // len(partitions))
        if minutes > 0:
            share = -(-MAX_EVENTS // len(partitions))
        since = wall_ms() - minutes * 60_000 if minutes > 0 else 0
        starts = _since(consumer, settings.events_topic, partitions, since) if since else {}
        wanted, ends = [], {}
        for number in partitions:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(settings.events_topic, number), timeout=READ_TIMEOUT_S
            )
            start = max(low, high - share, starts.get(number, low))
            if high > start:
                wanted.append(TopicPartition(settings.events_topic, number, start))
                ends[number] = high
        return _read(consumer, wanted, ends, since, share)
    finally:
        consumer.close()


def _partitions(consumer: Consumer, name: str) -> list[int]:
    """The topic's partition numbers; ConfigError when it cannot be read."""
    topic = consumer.list_topics(name, timeout=READ_TIMEOUT_S).topics.get(name)
    if topic is None or topic.error is not None or not topic.partitions:
        why = topic.error if topic is not None and topic.error is not None else "no such topic"
        raise ConfigError(
            f"the events topic {name!r} cannot be read ({why}): "
            "check TETIK_EVENTS_TOPIC, or paste the events"
        )
    return sorted(topic.partitions)


def _since(consumer: Consumer, name: str, partitions: list[int], since: int) -> dict[int, int]:
    """Per partition, the first offset written at ``since`` (epoch ms) or later, as the
    broker finds it (some find the start of the batch that holds it); a partition with
    none starts at its end."""
    asked = [TopicPartition(name, number, since) for number in partitions]
    found = consumer.offsets_for_times(asked, timeout=READ_TIMEOUT_S)
    return {tp.partition: (tp.offset if tp.offset >= 0 else 1 << 62) for tp in found}


def _read(
    consumer: Consumer,
    wanted: list[TopicPartition],
    ends: dict[int, int],
    since: int = 0,
    share: int = MAX_EVENTS,
) -> list[bytes]:
    """Every partition's records from its assigned offset to its end (at most its last
    ``share``, timestamped at ``since`` or later), all in Kafka timestamp order; what was
    read by :data:`READ_TIMEOUT_S` when the broker holds back the rest. The share is
    counted here as well, as a broker that reports its end by batch (tansu) hands out
    whole batches from before the offset asked for."""
    if not wanted:
        return []
    consumer.assign(wanted)
    found: dict[int, list[tuple[int, int, bytes]]] = {tp.partition: [] for tp in wanted}
    left = set(found)
    deadline = time.monotonic() + READ_TIMEOUT_S
    while left and time.monotonic() < deadline:
        for message in consumer.consume(1000, timeout=0.05):
            partition, offset = message.partition(), message.offset()
            if message.error() is not None or partition is None or offset is None:
                continue
            stamp = message.timestamp()[1]
            if stamp >= since:
                found[partition].append((offset, stamp, message.value() or b""))
            if offset + 1 >= ends[partition]:
                left.discard(partition)
    kept = [record for rows in found.values() for record in sorted(rows)[-share:]]
    return [value for _, _, value in sorted(kept, key=lambda record: record[1])]
