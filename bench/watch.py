"""Reading a system's output topic: latencies and counts, for one bench run.

Every system under test writes JSON records to its output topic. A record
caused by an event carries ``ingested_at``, the Kafka timestamp of that event
(its producer's send time); its latency is the output record's own Kafka
timestamp minus that. A record a timer fired carries ``at`` (when it was due)
and no ``ingested_at``; its lateness is its timestamp minus ``at``.

Samples are kept as (send time, latency) pairs so that a step's figures can be
cut out afterwards by send time; :func:`bench.percentiles.summary` turns a cut
into percentiles from an HDR histogram.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition


@dataclass
class Samples:
    """What the watcher has seen so far."""

    records: int = 0
    caused: list[tuple[int, int]] = field(default_factory=list)  # (sent at, latency) ms
    fired: list[tuple[int, int]] = field(default_factory=list)  # (due at, lateness) ms


class OutputWatch(threading.Thread):
    """Tails partition 0 of ``topic`` from its start and keeps :class:`Samples`."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(daemon=True, name="bench-watch")
        self._consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": "bench-watch", "fetch.wait.max.ms": 20}
        )
        self._consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        self._lock = threading.Lock()
        self._samples = Samples()
        self._done = threading.Event()

    def run(self) -> None:
        try:
            while not self._done.is_set():
                batch = self._consumer.consume(1000, 0.05)
                self._add([m for m in batch if m.error() is None and m.value()])
        finally:
            self._consumer.close()

    def _add(self, messages: list[Any]) -> None:
        caused, fired = [], []
        for message in messages:
            written = int(message.timestamp()[1])
            doc = orjson.loads(message.value())
            ingested = doc.get("ingested_at")
            if isinstance(ingested, int):
                caused.append((ingested, written - ingested))
            elif isinstance(doc.get("at"), int):
                fired.append((doc["at"], written - doc["at"]))
        with self._lock:
            self._samples.records += len(messages)
            self._samples.caused.extend(caused)
            self._samples.fired.extend(fired)

    @property
    def records(self) -> int:
        with self._lock:
            return self._samples.records

    def between(self, start_ms: int, end_ms: int) -> tuple[list[int], list[int]]:
        """Latencies of records caused by events sent in ``[start, end]``, and timer
        latenesses of records due in that span."""
        with self._lock:
            caused = [lat for sent, lat in self._samples.caused if start_ms <= sent <= end_ms]
            fired = [late for due, late in self._samples.fired if start_ms <= due <= end_ms]
        return caused, fired

    def stop(self) -> None:
        self._done.set()
        self.join(10)
