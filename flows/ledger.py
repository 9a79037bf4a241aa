"""Exactly-once emission of actions: a ledger of action ids in Redis.

The engine is deterministic: re-processing the same events from the same
state yields the same ``action_id``s. After a crash, Bytewax recovery
re-processes everything since its last snapshot, so every action of that
stretch is produced again; the ledger makes the ``actions`` topic receive
each id once.

Protocol for each batch of actions (one writer per identity, as each user
lives on one worker):

1. **claim**: for each id, atomically (one Lua call per batch) ``SET
   {prefix}:ledger:{id} p NX PX retention`` and, when that succeeded, add the
   id to the set ``{prefix}:ledger:pending``. Ids already in the ledger are
   dropped: they were emitted before.
2. **produce** the claimed actions to Kafka and wait until every one is
   acknowledged (or raise, leaving them pending).
3. **confirm**: mark them ``d`` (done), remove them from the pending set and
   record the highest acknowledged offset per partition in
   ``{prefix}:ledger:acked``.

A crash between 1 and 3 leaves ids pending, and nobody knows whether Kafka
got them. :func:`resolve_pending` answers it before the engine starts again:
it reads the actions topic after the acknowledged offsets; a pending id found
there is confirmed, one not found is released, so the re-processing emits it
(or, if the re-processing no longer calls for it, it was never sent).

The retention must outlast the longest journey (:func:`retention_ms`), so
that a re-processed enrollment can never send a step twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson
import redis
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from redis.client import Pipeline

from engine.actions import Action, to_json
from engine.rules.model import Branch, Rules, Step, Wait

DAY_MS = 86_400_000
MIN_RETENTION_MS = 30 * DAY_MS

_CLAIM = """
local claimed = {}
for i, key in ipairs(KEYS) do
  if redis.call('SET', key, 'p', 'NX', 'PX', ARGV[1]) then
    redis.call('SADD', ARGV[2], ARGV[i + 2])
    claimed[#claimed + 1] = i
  end
end
return claimed
"""


def retention_ms(rules: Rules) -> int:
    """How long ids stay in the ledger: the longest journey plus a day, at least 30 days."""
    longest = max((_span(j.steps) for j in rules.journeys), default=0)
    return max(MIN_RETENTION_MS, longest + DAY_MS)


def _span(steps: Sequence[Step]) -> int:
    """The longest total wait along any path of ``steps``."""
    total = 0
    for step in steps:
        if isinstance(step, Wait):
            total += step.ms
        elif isinstance(step, Branch):
            total += max(_span(step.then), _span(step.otherwise))
    return total


class Ledger:
    """The Redis side of the protocol (claim, confirm, pending)."""

    def __init__(self, client: redis.Redis, prefix: str, retention: int = MIN_RETENTION_MS):
        self.client = client
        self.prefix = prefix
        self.retention = retention
        self.pending_key = f"{prefix}:ledger:pending"
        self.acked_key = f"{prefix}:ledger:acked"
        self._claim = client.register_script(_CLAIM)

    def key(self, action_id: str) -> str:
        return f"{self.prefix}:ledger:{action_id}"

    def claim(self, actions: Sequence[Action]) -> list[Action]:
        """The actions never claimed before, now claimed (pending)."""
        if not actions:
            return []
        ids = [a.action_id for a in actions]
        args: list[str | int] = [self.retention, self.pending_key, *ids]
        positions: list[int] = self._claim(keys=[self.key(i) for i in ids], args=args)
        return [actions[i - 1] for i in positions]

    def confirm(
        self, ids: Iterable[str], offsets: dict[int, int], pipe: Pipeline | None = None
    ) -> None:
        """Mark ``ids`` emitted; remember the highest acknowledged offset per partition.

        With ``pipe`` the commands are only queued there (the caller executes
        them, e.g. in one transaction with the states of the same batch).
        """
        ids = list(ids)
        own = pipe is None
        pipe = self.client.pipeline(transaction=True) if pipe is None else pipe
        for action_id in ids:
            pipe.set(self.key(action_id), "d", xx=True, keepttl=True)
        if ids:
            pipe.srem(self.pending_key, *ids)
        if offsets:
            pipe.hset(self.acked_key, mapping={str(p): o for p, o in offsets.items()})
        if own:
            pipe.execute()

    def release(self, ids: Iterable[str]) -> None:
        """Forget claims that never reached Kafka, so re-processing emits them."""
        ids = list(ids)
        if ids:
            pipe = self.client.pipeline(transaction=True)
            pipe.delete(*(self.key(i) for i in ids))
            pipe.srem(self.pending_key, *ids)
            pipe.execute()

    def pending(self) -> set[str]:
        members: set[bytes] = self.client.smembers(self.pending_key)  # type: ignore[assignment]
        return {m.decode() for m in members}

    def acked(self) -> dict[int, int]:
        raw: dict[bytes, bytes] = self.client.hgetall(self.acked_key)  # type: ignore[assignment]
        return {int(p): int(o) for p, o in raw.items()}


class ActionEmitter:
    """Produces actions to Kafka exactly once, through the :class:`Ledger`."""

    def __init__(self, ledger: Ledger, producer: Producer, topic: str) -> None:
        self.ledger = ledger
        self._producer = producer
        self._topic = topic

    def emit(
        self,
        actions: Sequence[Action],
        value: Callable[[Action], bytes] = to_json,
        pipe: Pipeline | None = None,
    ) -> int:
        """Emit the actions not emitted before; return how many were new.

        The confirmation goes into ``pipe`` when given (executed by the caller).
        """
        claimed = self.ledger.claim(actions)
        if not claimed:
            return 0
        offsets: dict[int, int] = {}
        errors: list[str] = []
        for action in claimed:
            self._producer.produce(
                self._topic,
                value(action),
                key=action.user_id.encode(),
                on_delivery=_on_delivery(offsets, errors),
            )
        self._producer.flush()
        if errors:
            raise KafkaException(f"actions not acknowledged by Kafka: {errors[0]}")
        self.ledger.confirm((a.action_id for a in claimed), offsets, pipe)
        return len(claimed)


def _on_delivery(offsets: dict[int, int], errors: list[str]) -> Callable[[Any, Any], None]:
    def report(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            offsets[msg.partition()] = max(offsets.get(msg.partition(), -1), msg.offset())

    return report


def resolve_pending(ledger: Ledger, bootstrap: str, topic: str, idle_s: float = 1.5) -> int:
    """Settle the claims a crash left pending (see the module rules); return how many."""
    pending = ledger.pending()
    if not pending:
        return 0
    found = _ids_in_topic(bootstrap, topic, ledger.acked(), pending, idle_s)
    ledger.confirm(found, {})
    ledger.release(pending - found)
    return len(pending)


def _ids_in_topic(
    bootstrap: str, topic: str, acked: dict[int, int], wanted: set[str], idle_s: float
) -> set[str]:
    """Which of ``wanted`` appear in ``topic`` after the ``acked`` offsets."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "tetik-ledger", "enable.auto.commit": False}
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        start = [TopicPartition(topic, p, acked.get(p, -1) + 1) for p in partitions]
        consumer.assign(start)
        return _scan(consumer, wanted, idle_s)
    finally:
        consumer.close()


def _scan(consumer: Consumer, wanted: set[str], idle_s: float) -> set[str]:
    """Read until ``idle_s`` passes without a message (tansu's watermarks lag the log)."""
    found: set[str] = set()
    last = time.monotonic()
    while time.monotonic() - last < idle_s and found != wanted:
        for msg in consumer.consume(500, 0.2):
            value = msg.value()
            if msg.error() is None and value:
                last = time.monotonic()
                found.add(orjson.loads(value).get("action_id", ""))
    return found & wanted
