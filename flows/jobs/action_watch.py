"""A live view of what the engine emits: actions by channel and journey, latency.

:class:`ActionWatch` tails the actions topic in a thread and keeps counts and
end-to-end latencies; :func:`render` turns a snapshot into a few lines. The
latency of an action is the time it was written to the actions topic (its
Kafka timestamp) minus the time the event that caused it reached Kafka
(``ingested_at``, set by the live flow);
actions a timer fired carry none and are counted apart.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from flows.kafka.connection import client_config


@dataclass
class Snapshot:
    """Everything the view shows, copied out of the watcher."""

    sent: Counter[str] = field(default_factory=Counter)  # by channel
    journeys: Counter[str] = field(default_factory=Counter)  # sent, by journey
    suppressed: Counter[str] = field(default_factory=Counter)  # by reason
    latencies: list[int] = field(default_factory=list)  # ms, event-caused actions
    timer_fired: int = 0

    @property
    def total(self) -> int:
        return sum(self.sent.values()) + sum(self.suppressed.values())


def percentile(values: list[int], q: float) -> int | None:
    """The ``q``-quantile (0..1) by nearest rank, or None without values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _written_at(message: Any) -> int:
    """When the engine wrote the action to Kafka (its CreateTime), else now.

    Measuring at the producer's clock keeps a slow or busy reader of the
    topic from adding its own delay to the engine's latency.
    """
    kind, stamp = message.timestamp()
    return int(stamp) if kind != 0 else time.time_ns() // 1_000_000


class ActionWatch(threading.Thread):
    """Tails every one of the ``partitions`` of ``topic`` from its start and tallies
    actions (see :class:`Snapshot`)."""

    def __init__(self, bootstrap: str, topic: str, partitions: int = 1) -> None:
        super().__init__(daemon=True, name="tetik-actions")
        self._consumer = Consumer(
            {**client_config(bootstrap), "group.id": "tetik-console", "fetch.wait.max.ms": 20}
        )
        self._consumer.assign(
            [TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)]
        )
        self._lock = threading.Lock()
        self._data = Snapshot()
        self._done = threading.Event()

    def run(self) -> None:
        try:
            while not self._done.is_set():
                # consume() returns when it has 500 messages or at the timeout: keep the
                # timeout short, or arrival times (and latencies) include the wait.
                for message in self._consumer.consume(500, 0.005):
                    value = message.value()
                    if message.error() is None and value:
                        self._add(orjson.loads(value), _written_at(message))
        finally:
            self._consumer.close()

    def _add(self, action: dict[str, object], arrived: int) -> None:
        with self._lock:
            data = self._data
            if action.get("status") == "sent":
                data.sent[str(action.get("channel"))] += 1
                data.journeys[str(action.get("journey"))] += 1
            else:
                data.suppressed[str(action.get("reason"))] += 1
            ingested = action.get("ingested_at")
            if isinstance(ingested, int):
                data.latencies.append(arrived - ingested)
            else:
                data.timer_fired += 1

    def snapshot(self) -> Snapshot:
        with self._lock:
            data = self._data
            return Snapshot(
                Counter(data.sent),
                Counter(data.journeys),
                Counter(data.suppressed),
                list(data.latencies),
                data.timer_fired,
            )

    def stop(self) -> None:
        self._done.set()
        self.join(5)


def _counts(counter: Counter[str]) -> str:
    return "  ".join(f"{k} {v:,}" for k, v in counter.most_common()) or "-"


def latency_line(data: Snapshot) -> str:
    p50, p99 = percentile(data.latencies, 0.50), percentile(data.latencies, 0.99)
    if p50 is None or p99 is None:
        return "latency  (no event-triggered action yet)"
    return (
        f"latency  event -> action on Kafka: p50 {p50} ms  p99 {p99} ms  "
        f"({len(data.latencies):,} event-triggered, {data.timer_fired:,} fired by timers)"
    )


def render(data: Snapshot, events: int, dlq: int, elapsed: float) -> list[str]:
    """The view's lines for one refresh."""
    return [
        f"tetik live  {elapsed:5.0f} s  events sent {events:,}  invalid -> dlq {dlq:,}  "
        f"actions {data.total:,}",
        f"sent by channel     {_counts(data.sent)}",
        f"sent by journey     {_counts(data.journeys)}",
        f"suppressed (reason) {_counts(data.suppressed)}",
        latency_line(data),
    ]
