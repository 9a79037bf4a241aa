"""Reads what the engine writes while a chaos run goes on: ``actions`` and ``events.dlq``.

Rules of this interface:

* A :class:`Watch` thread reads every partition of both topics from the
  start, without a consumer group (nothing is committed; a broker restart is
  ridden out by the client's own reconnects).
* Every action record is kept with its Kafka timestamp (the engine's send
  time), duplicates included: counting them is the point. Dead letters are
  kept as ``(value, headers)``.
* Read-only snapshots (:meth:`Watch.actions`, :meth:`Watch.dead_letters`) may
  be taken at any time; :meth:`Watch.stop` ends the thread.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from chaos.compare import Emitted
from flows.kafka.connection import client_config

__all__ = ["Watch"]


class Watch(threading.Thread):
    """Follows the actions topic and the dead-letter topic (see the module rules)."""

    def __init__(self, bootstrap: str, partitions: Mapping[str, int], actions_topic: str) -> None:
        """Read every partition of ``partitions`` (topic -> count); one is the actions topic,
        the others hold dead letters."""
        super().__init__(daemon=True, name="chaos-watch")
        self._consumer = Consumer(
            {
                **client_config(bootstrap),
                "group.id": "tetik-chaos-watch",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 50,
                "log.connection.close": False,
            }
        )
        self._consumer.assign(
            [
                TopicPartition(topic, p, OFFSET_BEGINNING)
                for topic, count in partitions.items()
                for p in range(count)
            ]
        )
        self._actions_topic = actions_topic
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._actions: list[Emitted] = []
        self._dlq: list[tuple[bytes, dict[str, bytes]]] = []
        self.unreadable = 0  # action records that are not JSON objects

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                for msg in self._consumer.consume(500, 0.1):
                    if msg.error() is None:
                        self._keep(msg)
        finally:
            self._consumer.close()

    def _keep(self, msg: Message) -> None:
        value = msg.value() or b""
        if msg.topic() == self._actions_topic:
            try:
                action = orjson.loads(value)
            except orjson.JSONDecodeError:
                action = None
            with self._lock:
                if isinstance(action, dict):
                    self._actions.append(Emitted(action=action, kafka_ms=msg.timestamp()[1]))
                else:
                    self.unreadable += 1
            return
        raw_headers = msg.headers() or []
        pairs = raw_headers.items() if isinstance(raw_headers, dict) else raw_headers
        headers = {name: _bytes(raw) for name, raw in pairs}
        with self._lock:
            self._dlq.append((value, headers))

    def actions(self) -> list[Emitted]:
        with self._lock:
            return list(self._actions)

    def action_ids(self) -> set[str]:
        with self._lock:
            return {e.action["action_id"] for e in self._actions}

    def dead_letters(self) -> list[tuple[bytes, dict[str, bytes]]]:
        with self._lock:
            return list(self._dlq)

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


def _bytes(raw: str | bytes | None) -> bytes:
    """A header value as bytes (librdkafka hands them over as bytes, or None)."""
    if raw is None:
        return b""
    return raw.encode() if isinstance(raw, str) else raw
