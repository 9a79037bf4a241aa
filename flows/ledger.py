"""Exactly-once emission of actions: a ledger of action ids in Redis.

The engine is deterministic: re-processing the same events from the same
state yields the same ``action_id``s. After a crash, Bytewax recovery
re-processes everything since its last snapshot, so every action of that
stretch is produced again; the ledger makes the ``actions`` topic receive
each id once.

Protocol for each batch of actions (one writer per identity, as each user
lives on one worker):

1. **claim**: for each id, atomically (one Lua call per batch) ``SET
   {prefix}:ledger:{id} TOKEN NX PX retention`` and, when that succeeded, add
   the id to the set ``{prefix}:ledger:pending``. Ids already in the ledger
   are dropped: they were emitted before. ``TOKEN`` is unique to the batch, so
   a claim retried after a lost reply (:mod:`flows.retry`) finds its own
   claims and keeps them instead of taking them for older ones.
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
that a re-processed enrollment can never send a step twice; it is capped at
:data:`MAX_RETENTION_MS` (Redis refuses larger expiries).

Kafka faults never lose or double an action: the producer is idempotent
and waits without a time limit (``message.timeout.ms`` 0), reporting a line
every few seconds while the broker is away. A Redis that lost its data
loses the ledger with it; :func:`rebuild_from_topic` marks every id found
in the actions topic as emitted again (see :mod:`flows.deployment`).
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson
import redis
from bytewax.connectors.kafka import KafkaSinkMessage
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from redis.client import Pipeline

from engine.actions import Action, to_json
from engine.rules.model import Rules, longest_wait

DAY_MS = 86_400_000
MIN_RETENTION_MS = 30 * DAY_MS
MAX_RETENTION_MS = 11 * 365 * DAY_MS  # journeys are bounded to 10 years of waits
FLUSH_REPORT_S = 5.0

# A producer that never drops a message and never writes one twice: the
# idempotent producer retries inside librdkafka, without a time limit.
PRODUCER_CONFIG = {"linger.ms": 1, "enable.idempotence": True, "message.timeout.ms": 0}

_CLAIM = """
local claimed = {}
for i, key in ipairs(KEYS) do
  if redis.call('SET', key, ARGV[2], 'NX', 'PX', ARGV[1])
      or redis.call('GET', key) == ARGV[2] then
    redis.call('SADD', ARGV[3], ARGV[i + 3])
    claimed[#claimed + 1] = i
  end
end
return claimed
"""


def retention_ms(rules: Rules) -> int:
    """How long ids stay in the ledger: the longest journey plus a day, at least 30 days."""
    longest = max((longest_wait(j.steps) for j in rules.journeys), default=0)
    return min(MAX_RETENTION_MS, max(MIN_RETENTION_MS, longest + DAY_MS))


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

    def claim(self, actions: Sequence[Action], token: str | None = None) -> list[Action]:
        """The actions never claimed before (or claimed with ``token``), now pending.

        Pass the same ``token`` when retrying one batch's claim; without one a
        fresh token is used, so only never-claimed ids come back.
        """
        if not actions:
            return []
        ids = [a.action_id for a in actions]
        token = token or uuid.uuid4().hex
        args: list[str | int] = [self.retention, token, self.pending_key, *ids]
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

    def __init__(
        self, ledger: Ledger, producer: Producer, topic: str, dlq_topic: str = "events.dlq"
    ) -> None:
        self.ledger = ledger
        self._producer = producer
        self._topic = topic
        self._dlq_topic = dlq_topic

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
        offsets = self.produce(claimed, value)
        self.ledger.confirm((a.action_id for a in claimed), offsets, pipe)
        return len(claimed)

    def produce(
        self,
        claimed: Sequence[Action],
        value: Callable[[Action], bytes] = to_json,
        dead_letters: Sequence[KafkaSinkMessage[Any, Any]] = (),
    ) -> dict[int, int]:
        """Produce claimed actions (and dead letters), wait for every acknowledgement.

        Returns the highest acknowledged offset per partition of the actions topic.
        """
        offsets: dict[int, int] = {}
        errors: list[str] = []
        for letter in dead_letters:
            self._producer.produce(
                self._dlq_topic,
                letter.value,
                key=letter.key,
                headers=list(letter.headers),
                on_delivery=_on_delivery({}, errors),
            )
        for action in claimed:
            self._producer.produce(
                self._topic,
                value(action),
                key=action.user_id.encode(),
                on_delivery=_on_delivery(offsets, errors),
            )
        started = time.monotonic()
        while self._producer.flush(FLUSH_REPORT_S) > 0:
            waiting = len(self._producer)
            print(
                f"tetik: Kafka has not acknowledged {waiting} action(s) for "
                f"{time.monotonic() - started:.0f} s; waiting (nothing is lost or sent twice)",
                file=sys.stderr,
                flush=True,
            )
        if errors:
            raise KafkaException(f"actions not acknowledged by Kafka: {errors[0]}")
        return offsets


def _on_delivery(offsets: dict[int, int], errors: list[str]) -> Callable[[Any, Any], None]:
    def report(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            offsets[msg.partition()] = max(offsets.get(msg.partition(), -1), msg.offset())

    return report


def rebuild_from_topic(ledger: Ledger, bootstrap: str, topic: str, idle_s: float = 1.5) -> int:
    """Mark every action id found in ``topic`` as emitted; return how many.

    For a Redis that lost its data: the actions topic is the record of what
    went out, so re-processing after it cannot send those ids again (as long
    as the topic's retention covers the ledger's).
    """
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "tetik-ledger", "enable.auto.commit": False}
    )
    count = 0
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        last = time.monotonic()
        acked: dict[int, int] = {}
        while time.monotonic() - last < idle_s:
            messages = consumer.consume(500, 0.2)
            ids = [_action_id(m) for m in messages if m.error() is None and m.value()]
            for m in messages:
                partition, offset = m.partition(), m.offset()
                if m.error() is None and partition is not None and offset is not None:
                    acked[partition] = max(acked.get(partition, -1), offset)
            if messages:
                last = time.monotonic()
            pipe = ledger.client.pipeline(transaction=False)
            for action_id in filter(None, ids):
                pipe.set(ledger.key(action_id), "d", px=ledger.retention)
                count += 1
            pipe.execute()
        if acked:
            ledger.client.hset(ledger.acked_key, mapping={str(p): o for p, o in acked.items()})
    finally:
        consumer.close()
    return count


def _action_id(message: Any) -> str:
    return str(orjson.loads(message.value()).get("action_id", ""))


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
