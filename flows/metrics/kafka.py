"""Kafka's side of the metrics: consumer lag per partition, client errors, the loop's beat.

Rules of this module:

* Lag is the partition's high watermark as the consumer's latest fetch
  response gave it (``get_watermark_offsets(cached=True)``: no request to
  the broker) minus the next offset to read; nothing is set before the
  first fetch response. :class:`SourceWatch` measures it at most every
  ``every_s`` per partition, whatever the poll rate.
* Errors count in ``tetik_errors_total{system="kafka"}`` with a bounded kind:
  ``consumer``, ``fatal``, ``producer``.
* :class:`SourceWatch` is the engine's :class:`flows.pipeline.source.PartitionWatch`:
  every poll also beats the job's :class:`~flows.metrics.health.Health`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from flows.metrics import Metrics
from flows.metrics.names import ERRORS, LAG

LAG_EVERY_S = 1.0


def partition_lag(consumer: Consumer, topic: str, index: int, position: int) -> int | None:
    """Records of ``topic``/``index`` past ``position``; None before a fetch response."""
    low, high = consumer.get_watermark_offsets(TopicPartition(topic, index), cached=True)
    if high < 0:
        return None
    start = low if position in (OFFSET_BEGINNING, -1001) or position < 0 else position
    return max(high - start, 0)


class SourceWatch:
    """Lag, errors and heartbeats of the engine's Kafka source (see the module rules)."""

    def __init__(
        self,
        metrics: Metrics,
        beat: Callable[[], None] = lambda: None,
        every_s: float = LAG_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._metrics = metrics
        self._beat = beat
        self._every_s = every_s
        self._clock = clock
        self._measured: dict[tuple[str, int], float] = {}

    def polled(self, topic: str, index: int, position: int, consumer: Consumer) -> None:
        self._beat()
        now = self._clock()
        if now - self._measured.get((topic, index), -self._every_s) < self._every_s:
            return
        self._measured[(topic, index)] = now
        lag = partition_lag(consumer, topic, index, position)
        if lag is not None:
            self._metrics.set(LAG, float(lag), topic=topic, partition=str(index))

    def error(self, fatal: bool) -> None:
        self._metrics.count(ERRORS, system="kafka", kind="fatal" if fatal else "consumer")


def group_lag(metrics: Metrics, consumer: Consumer) -> None:
    """Set the lag of every partition assigned to a group ``consumer`` (``tetik deliver``)
    from its positions; partitions without a position yet are left alone."""
    assigned = consumer.assignment()
    if not assigned:
        return
    for tp in consumer.position(assigned):
        lag = partition_lag(consumer, tp.topic, tp.partition, tp.offset)
        if lag is not None and tp.offset >= 0:
            metrics.set(LAG, float(lag), topic=tp.topic, partition=str(tp.partition))


def producer_errors(metrics: Metrics) -> Callable[[Any], None]:
    """A librdkafka ``error_cb`` for a producer: each error counts (kind ``producer``)."""
    return lambda _error: metrics.count(ERRORS, system="kafka", kind="producer")
