"""Invalid input to the dead-letter topic, at least once, counted.

Rules of this interface:

* Each batch of dead letters is produced and waited for before the batch
  counts as written, so a Bytewax snapshot taken after it never skips an
  unsent dead letter (a crash may send one twice; never none).
* The deployment-wide counter ``invalid`` moves with each batch, and so does
  ``tetik_events_total{outcome="invalid"}`` of the sink's ``metrics``
  (:mod:`flows.metrics`; the process's installed one by default).
* Dead letters of events whose processing failed do not come here: they ride
  in their shard's outbox with the states (:mod:`flows.pipeline.shard`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bytewax.connectors.kafka import KafkaSinkMessage
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import Producer

from flows.metrics import Metrics, installed
from flows.metrics.names import EVENTS
from flows.retry import RedisClient, retrying
from flows.stores.emissions import wait_for_acks
from flows.stores.keys import Keys


class _DeadLetters(StatelessSinkPartition[KafkaSinkMessage[Any, Any]]):
    def __init__(
        self, producer: Producer, topic: str, client: RedisClient, keys: Keys, metrics: Metrics
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._client = client
        self._keys = keys
        self._metrics = metrics

    def write_batch(self, items: list[KafkaSinkMessage[Any, Any]]) -> None:
        for item in items:
            headers: list[tuple[str, str | bytes | None]] = list(item.headers)
            self._producer.produce(self._topic, item.value, key=item.key, headers=headers)
        wait_for_acks(self._producer)
        retrying(
            "counting invalid events",
            lambda: self._client.hincrby(self._keys.stats, "invalid", len(items)),
        )
        self._metrics.count(EVENTS, len(items), outcome="invalid")

    def close(self) -> None:
        wait_for_acks(self._producer)


class DeadLetterSink(DynamicSink[KafkaSinkMessage[Any, Any]]):
    """Dead letters to ``topic`` with a producer of ``producer`` settings (see the module rules)."""

    def __init__(
        self,
        producer: Mapping[str, Any],
        topic: str,
        client: RedisClient,
        keys: Keys,
        metrics: Metrics | None = None,
    ) -> None:
        self._producer = dict(producer)
        self._topic = topic
        self._client = client
        self._keys = keys
        self._metrics = metrics if metrics is not None else installed()

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _DeadLetters:
        producer = Producer(self._producer)
        return _DeadLetters(producer, self._topic, self._client, self._keys, self._metrics)
