"""The Kafka adapter: actions to a topic that another system (an ESP connector) consumes.

Rules:

* The value is the SPEC section 4 action JSON, the key the ``user_id`` (so a
  user's actions stay in order on one partition), and the headers
  ``tetik.action_id`` and ``tetik.channel``, so a consumer can route and
  deduplicate without parsing the value.
* One topic for every channel (``topic``, default ``actions.out``), or one
  per channel, ``{prefix}.{channel}``, when ``prefix`` is given.
* ``send`` waits for the broker's acknowledgement (a flush per call), so
  ``delivered`` means the record is in the log. librdkafka retries
  internally for up to ``timeout`` seconds (``message.timeout.ms``); an error
  after that -- broker down, topic missing where topics are not auto-created
  -- is ``failed``. The producer is idempotent, so its own retries never
  duplicate a record; a second ``send`` of the same action is a second record
  with the same ``action_id`` (Kafka cannot deduplicate across sends).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from channels.base import Attempt, Delivery, delivery
from engine.actions import Action, to_json

DEFAULT_TOPIC = "actions.out"


class KafkaChannel:
    """Produces actions to Kafka and waits for each acknowledgement."""

    name = "kafka"

    def __init__(
        self,
        bootstrap: str,
        *,
        topic: str = DEFAULT_TOPIC,
        prefix: str | None = None,
        timeout: float = 10.0,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self.topic = topic
        self.prefix = prefix
        self.timeout = timeout
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,
                "linger.ms": 0,  # one record per flush: batching would only add latency
                "message.timeout.ms": max(int(timeout * 1000), 1),
                **(config or {}),
            }
        )

    def topic_for(self, channel: str) -> str:
        """The topic that carries actions of ``channel``."""
        return f"{self.prefix}.{channel}" if self.prefix else self.topic

    def send(self, action: Action) -> Delivery:
        topic = self.topic_for(action.channel)
        errors: list[KafkaError | None] = []
        try:
            self._producer.produce(
                topic,
                key=action.user_id.encode(),
                value=to_json(action),
                headers=[("tetik.action_id", action.action_id), ("tetik.channel", action.channel)],
                on_delivery=lambda err, _msg: errors.append(err),
            )
        except (BufferError, KafkaException, ValueError, RuntimeError) as exc:
            return delivery(action, self.name, Attempt("fatal", f"produce to {topic}: {exc}"))
        # A second past the message timeout: librdkafka reports the failure itself by then.
        self._producer.flush(self.timeout + 1.0)
        return delivery(action, self.name, _verdict(topic, errors))

    def close(self) -> None:
        self._producer.flush(self.timeout)


def _verdict(topic: str, errors: list[KafkaError | None]) -> Attempt:
    if not errors:
        return Attempt("fatal", f"{topic}: no acknowledgement from the broker")
    if errors[0] is not None:
        return Attempt("fatal", f"{topic}: {errors[0].str()}")
    return Attempt("delivered", f"acknowledged by {topic}")
