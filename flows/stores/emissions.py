"""Exactly-once emission without waiting: an outbox written with the states.

The engine is deterministic and each shard's states are written together with
what they caused, so tetik needs no per-action ledger and never waits for
Kafka on the hot path:

1. **write**: a shard's batch writes its changed states and, in the same
   Redis transaction (:meth:`flows.stores.states.ShardStore.commit`), the
   records they caused (actions, dead letters) into the shard's outbox.
2. **produce** those records without waiting (:meth:`Emitter.send`); the
   producer is idempotent and retries without a time limit, so a record it
   accepted reaches Kafka once.
3. **confirm**: the acknowledgements that came back are removed from the
   outbox in the shard's next write (or by a write of their own when the shard
   is idle), together with the highest acknowledged offset per partition of
   the actions topic.

A crash between 1 and 3 leaves records in the outbox, and nobody knows
whether Kafka got them. :func:`settle_outboxes` answers it before the engine
starts again: it reads the actions topic after the offsets each shard last
recorded; an action found there is dropped from the outbox, one not found is
produced (and waited for). Dead letters are produced again without looking
(at least once). Re-processing after the crash never causes a record twice:
the states already reflect the events and timers that caused it
(:class:`flows.pipeline.shard.ShardLogic` skips input offsets its states
reflect, and a derived event's id is remembered like any event's).

Kafka faults never lose or double a record: the producer waits without a time
limit (``message.timeout.ms`` 0), reporting a line every few seconds while
the broker is away.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
import orjson
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from engine.actions import Action, to_json
from flows.kafka.connection import EXACTLY_ONCE_PRODUCER, client_config
from flows.report import say
from flows.retry import RedisClient
from flows.stores.keys import Keys
from flows.stores.states import ShardStore

FLUSH_REPORT_S = 5.0
MAX_QUEUED = 200_000  # records waiting in librdkafka before send() waits for room

# The outbox's producer: never drops a message, never writes one twice.
PRODUCER_CONFIG: Final = EXACTLY_ONCE_PRODUCER


class Record(msgspec.Struct, array_like=True, frozen=True):
    """One record to produce: where, key, value and headers."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = []


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Record).decode


def pack(record: Record) -> bytes:
    return _encode(record)


def unpack(data: bytes) -> Record:
    return _decode(data)


def action_record(action: Action, topic: str) -> Record:
    """An action as the ``actions`` topic carries it: key = identity, value = SPEC JSON."""
    return Record(topic, action.user_id.encode(), to_json(action))


@dataclass
class _Acks:
    ids: list[str] = field(default_factory=list)
    offsets: dict[int, int] = field(default_factory=dict)
    outstanding: int = 0
    since: float = 0.0  # time.monotonic() of the oldest acknowledgement in ids


class Emitter:
    """Produces outbox records without waiting; collects their acknowledgements per shard.

    One per process (the Kafka producer is thread-safe); every shard of the
    process sends through it. ``actions_topic`` is the topic whose offsets
    :func:`settle_outboxes` reads after a crash.
    """

    def __init__(self, producer: Producer, actions_topic: str) -> None:
        self._producer = producer
        self._actions_topic = actions_topic
        self._lock = threading.Lock()
        self._acks: dict[int, _Acks] = {}
        self._failed: list[str] = []

    def send(self, shard: int, records: Mapping[str, Record]) -> None:
        """Produce ``records`` (id -> record) without waiting for Kafka."""
        if not records:
            return
        with self._lock:
            self._acks.setdefault(shard, _Acks()).outstanding += len(records)
        for rid, record in records.items():
            self._produce(record, self._on_delivery(shard, rid, record.topic))
        self._producer.poll(0)

    def collect(self, shard: int) -> tuple[list[str], dict[int, int]]:
        """The ids acknowledged since the last call, and the actions topic's highest offsets."""
        self._producer.poll(0)
        with self._lock:
            if self._failed:
                raise KafkaException(f"Kafka refused a record: {self._failed[0]}")
            acks = self._acks.get(shard)
            if acks is None or not acks.ids:
                return [], {}
            ids, offsets = acks.ids, acks.offsets
            acks.ids, acks.offsets = [], {}
            return ids, offsets

    def acked_since(self, shard: int) -> float | None:
        """When (``time.monotonic()``) the oldest acknowledgement not collected yet came
        back; None when there is none (served first, as :meth:`collect` does)."""
        self._producer.poll(0)
        with self._lock:
            acks = self._acks.get(shard)
            return None if acks is None or not acks.ids else acks.since

    def outstanding(self, shard: int) -> int:
        """Records of ``shard`` sent and not yet collected as acknowledged."""
        with self._lock:
            acks = self._acks.get(shard)
            return 0 if acks is None else acks.outstanding + len(acks.ids)

    def in_flight(self) -> int:
        """Records of every shard sent and not yet acknowledged by Kafka."""
        with self._lock:
            return sum(acks.outstanding for acks in self._acks.values())

    def flush(self) -> None:
        """Wait for every record sent (at the end of a run), a line every few seconds."""
        wait_for_acks(self._producer)

    def _produce(self, record: Record, callback: Callable[[Any, Any], None]) -> None:
        waited = time.monotonic()
        while True:
            try:
                self._producer.produce(
                    record.topic,
                    record.value,
                    key=record.key,
                    headers=_headers(record),
                    on_delivery=callback,
                )
                return
            except BufferError:  # the local queue is full: let deliveries drain it
                self._producer.poll(0.05)
                if time.monotonic() - waited > FLUSH_REPORT_S:
                    say(f"Kafka's producer queue is full ({len(self._producer)}); waiting")
                    waited = time.monotonic()

    def _on_delivery(self, shard: int, rid: str, topic: str) -> Callable[[Any, Any], None]:
        def report(err: Any, msg: Any) -> None:
            with self._lock:
                acks = self._acks.setdefault(shard, _Acks())
                acks.outstanding -= 1
                if err is not None:
                    self._failed.append(f"{rid}: {err}")
                    return
                if not acks.ids:
                    acks.since = time.monotonic()
                acks.ids.append(rid)
                if topic == self._actions_topic:
                    part = msg.partition()
                    acks.offsets[part] = max(acks.offsets.get(part, -1), msg.offset())

        return report


def _headers(record: Record) -> list[tuple[str, str | bytes | None]] | None:
    return [(k, v) for k, v in record.headers] or None


def wait_for_acks(producer: Producer) -> None:
    """Flush ``producer``, saying every few seconds while Kafka does not answer."""
    started = time.monotonic()
    while producer.flush(FLUSH_REPORT_S) > 0:
        say(
            f"Kafka has not acknowledged {len(producer)} record(s) for "
            f"{time.monotonic() - started:.0f} s; waiting (nothing is lost or sent twice)"
        )


def settle_outboxes(
    client: RedisClient, keys: Keys, bootstrap: str, actions_topic: str, idle_s: float = 1.5
) -> int:
    """Settle what a crash left in the outboxes (see the module rules); return how many."""
    stores = [ShardStore(client, shard, 0) for shard in keys.all_shards()]
    pending = {store.keys.shard: store.outbox() for store in stores}
    if not any(pending.values()):
        return 0
    records = {s: {rid: unpack(data) for rid, data in box.items()} for s, box in pending.items()}
    wanted = {rid for box in records.values() for rid, r in box.items() if r.topic == actions_topic}
    start = _scan_start(stores, records, actions_topic)
    found = _ids_in_topic(bootstrap, actions_topic, start, wanted, idle_s) if wanted else set()
    producer = Producer(client_config(bootstrap, PRODUCER_CONFIG))
    for box in records.values():
        for rid, record in box.items():
            if rid not in found:
                producer.produce(
                    record.topic, record.value, key=record.key, headers=_headers(record)
                )
    wait_for_acks(producer)
    for store in stores:
        ids = list(records[store.keys.shard])
        if ids:
            client.hdel(store.keys.outbox, *ids)
    return sum(len(box) for box in records.values())


EMITTED_TTL_S = 7 * 86_400  # long enough to re-derive the lost states from the events topic


def rebuild_emitted(client: RedisClient, keys: Keys, bootstrap: str, topic: str) -> int:
    """After Redis lost its data: remember every action id in ``topic``; return how many.

    Each id goes to its shard's ``emitted`` set (the shard of the action's
    identity, the record's key), for :data:`EMITTED_TTL_S`. While the set
    exists the shard drops an action whose id it holds: re-deriving the lost
    states from the events topic calls for those actions again, and they
    were sent.
    """
    consumer = Consumer(
        {**client_config(bootstrap), "group.id": "tetik-rebuild", "enable.auto.commit": False}
    )
    count = 0
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        last = time.monotonic()
        while time.monotonic() - last < 1.5:
            messages = [m for m in consumer.consume(500, 0.2) if m.error() is None and m.value()]
            if messages:
                last = time.monotonic()
            pipe = client.pipeline(transaction=False)
            for message in messages:
                action = orjson.loads(message.value() or b"{}")
                shard = keys.of(str(action.get("user_id", "")))
                pipe.sadd(shard.emitted, str(action.get("action_id", "")))
                pipe.expire(shard.emitted, EMITTED_TTL_S)
                count += 1
            pipe.execute()
    finally:
        consumer.close()
    return count


def _scan_start(
    stores: Iterable[ShardStore], records: Mapping[int, Mapping[str, Record]], topic: str
) -> dict[int, int]:
    """Per partition, where to start looking: after the lowest offset a shard with
    pending actions recorded (0 where one recorded none).

    One producer per process and in-order acknowledgements per partition make
    a shard's pending action come after the offsets that shard recorded.
    """
    starts: dict[int, int] | None = None
    for store in stores:
        if not any(r.topic == topic for r in records[store.keys.shard].values()):
            continue
        after = {p: o + 1 for p, o in store.acked().items()}
        if starts is None:
            starts = after
        else:
            starts = {p: min(starts.get(p, 0), after.get(p, 0)) for p in starts.keys() | after}
    return starts or {}


def _ids_in_topic(
    bootstrap: str, topic: str, start: Mapping[int, int], wanted: set[str], idle_s: float
) -> set[str]:
    """Which of ``wanted`` appear in ``topic`` from ``start`` (0 where not given) on."""
    consumer = Consumer(
        {**client_config(bootstrap), "group.id": "tetik-outbox", "enable.auto.commit": False}
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, start.get(p, 0)) for p in partitions])
        found: set[str] = set()
        last = time.monotonic()
        while time.monotonic() - last < idle_s and not wanted <= found:
            for msg in consumer.consume(500, 0.2):
                value = msg.value()
                if msg.error() is None and value:
                    last = time.monotonic()
                    found.add(str(orjson.loads(value).get("action_id", "")))
        return found & wanted
    finally:
        consumer.close()
