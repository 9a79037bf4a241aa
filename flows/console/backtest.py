"""The console's backtest: a draft rules file run over recent events, before any push.

Rules of this interface:

* The events are either pasted JSONL (one event a line, as ``tetik replay``
  reads) or the events topic's latest ``count`` records: each partition's
  share of them, read from its end (``assign`` at high watermark minus the
  share; no consumer group, no commit), in the order of their Kafka
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


def recent_events(settings: Settings, count: int) -> list[bytes]:
    """The events topic's latest ``count`` records (see the module rules)."""
    count = max(1, min(count, MAX_EVENTS))
    if not settings.kafka_bootstrap:
        raise ConfigError(
            "no events topic to read: start the console with TETIK_KAFKA_BOOTSTRAP set to the "
            "engine's Kafka, or paste the events"
        )
    consumer = Consumer(settings.consumer_config("tetik-console", **{"enable.auto.commit": False}))
    try:
        meta = consumer.list_topics(settings.events_topic, timeout=READ_TIMEOUT_S)
        topic = meta.topics.get(settings.events_topic)
        if topic is None or topic.error is not None or not topic.partitions:
            why = topic.error if topic is not None and topic.error is not None else "no such topic"
            raise ConfigError(
                f"the events topic {settings.events_topic!r} cannot be read ({why}): "
                "check TETIK_EVENTS_TOPIC, or paste the events"
            )
        partitions = sorted(topic.partitions)
        share = -(-count // max(1, len(partitions)))
        wanted, ends = [], {}
        for number in partitions:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(settings.events_topic, number), timeout=READ_TIMEOUT_S
            )
            if high > low:
                wanted.append(TopicPartition(settings.events_topic, number, max(low, high - share)))
                ends[number] = high
        return _read(consumer, wanted, ends)
    finally:
        consumer.close()


def _read(consumer: Consumer, wanted: list[TopicPartition], ends: dict[int, int]) -> list[bytes]:
    """Every record from the assigned offsets to ``ends``, by Kafka timestamp; what was
    read by :data:`READ_TIMEOUT_S` when the broker holds back the rest."""
    if not wanted:
        return []
    consumer.assign(wanted)
    found: list[tuple[int, bytes]] = []
    left = {tp.partition for tp in wanted}
    deadline = time.monotonic() + READ_TIMEOUT_S
    while left and time.monotonic() < deadline:
        for message in consumer.consume(1000, timeout=0.05):
            partition, offset = message.partition(), message.offset()
            if message.error() is not None or partition is None or offset is None:
                continue
            found.append((message.timestamp()[1], message.value() or b""))
            if offset + 1 >= ends[partition]:
                left.discard(partition)
    found.sort(key=lambda item: item[0])
    return [value for _, value in found]
