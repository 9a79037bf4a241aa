"""The ingest dataflow: Kafka ``events`` -> validated events -> per-user state in Redis.

Steps (each owned by one function below):

1. ``decode``: :func:`decode_message` validates the message value with
   :func:`engine.events.decode_event`; the stream splits into ok and rejected.
2. ``dlq``: rejected messages go to ``events.dlq`` with their original key and
   bytes as value and the reason and source (topic, partition, offset) in
   headers, as Kafka Connect's dead-letter queues do, so they can be fixed and
   re-driven untouched.
3. ``identity``: events are keyed by identity (``user_id``, else ``anon_id``),
   so one user's events stay in order on one worker.
4. ``state``: :class:`UserLogic` loads the user's state on first touch, applies
   the batch with :func:`engine.state.apply` and emits the new bytes.
5. ``redis``: :class:`RedisStateSink` writes a whole batch of users in one
   pipeline, with the flow's counters.

:func:`build_ingest_flow` takes the source and sinks, so tests use Bytewax's
``TestingSource``/``TestingSink`` or the real Kafka and Redis.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeGuard, cast

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSink, KafkaSinkMessage, KafkaSourceMessage
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import DynamicSink, Sink, StatelessSinkPartition

from engine.errors import InvalidEvent
from engine.events import Event, check_not_future, decode_event
from engine.state import UserState, apply, dumps, loads, prune
from engine.windows import DEFAULT_CONFIG, WindowConfig
from flows.lifecycle import StoppableKafkaSource
from flows.settings import Settings
from flows.store import BatchLoader, Loader, StateStore, prefetching

Clock = Callable[[], int]


def now_ms() -> int:
    """The wall clock in epoch milliseconds (the live flow's clock)."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class Rejected:
    """A message that is not a valid event (or whose processing failed), and why."""

    message: KafkaSourceMessage[Any, Any]
    reason: str
    error: str = "InvalidEvent"  # the exception class, in the dead letter's headers


@dataclass(frozen=True)
class StateWrite:
    """What one user's batch changed: new state bytes (None: unchanged) and counts."""

    identity: str
    data: bytes | None
    counts: dict[str, int] = field(default_factory=dict)


def decode_message(message: KafkaSourceMessage[Any, Any]) -> Event | Rejected:
    """Validate one Kafka message; never raises for bad input.

    Besides the contract, ``ts`` may be at most a day after the time the
    message reached Kafka (its timestamp; the wall clock when it has none).
    """
    if message.value is None:
        return Rejected(message, "message has no value (tombstone); expected one JSON event")
    try:
        event = decode_event(message.value)
        check_not_future(event, kafka_time(message) or now_ms())
    except InvalidEvent as exc:
        return Rejected(message, exc.reason)
    return event


def kafka_time(message: KafkaSourceMessage[Any, Any]) -> int | None:
    """When the message reached Kafka (CreateTime or LogAppendTime), or None."""
    stamp = message.timestamp
    return stamp[1] if stamp is not None and stamp[0] != 0 else None


def _is_rejected(item: Event | Rejected) -> TypeGuard[Rejected]:
    return isinstance(item, Rejected)


def to_dlq(rejected: Rejected) -> KafkaSinkMessage[Any, Any]:
    """The dead-letter record: original key and bytes, reason and source in headers."""
    source = rejected.message
    headers = [
        ("tetik.error.reason", rejected.reason.encode()),
        ("tetik.error.class", rejected.error.encode()),
        ("tetik.source.topic", str(source.topic).encode()),
        ("tetik.source.partition", str(source.partition).encode()),
        ("tetik.source.offset", str(source.offset).encode()),
        ("tetik.error.at", str(now_ms()).encode()),
    ]
    return KafkaSinkMessage(key=source.key, value=source.value, headers=headers)


class UserLogic(StatefulBatchLogic[Event, StateWrite, bytes]):
    """One user's state inside the dataflow.

    The state is loaded on the first batch (through the Loader, which batches
    the reads) and kept while the user is active; after ``idle_ms`` without
    events the logic is discarded (the state is already in Redis), so worker
    memory follows active users only.
    """

    def __init__(
        self, load: Loader, windows: WindowConfig, clock: Clock, idle_ms: int, resume: bytes | None
    ) -> None:
        self._load = load
        self._windows = windows
        self._clock = clock
        self._idle = timedelta(milliseconds=idle_ms)
        self._state = None if resume is None else loads(resume)
        self._identity = ""
        self._touched = datetime.now(UTC)

    def on_batch(self, values: list[Event]) -> tuple[Iterable[StateWrite], bool]:
        identity = values[0].key
        state = self._state_for(identity)
        now = self._clock()
        counts = Counter(apply(state, event, now, self._windows) for event in values)
        self._touched = datetime.now(UTC)
        data = None
        if counts["applied"]:
            prune(state, now, self._windows)
            data = dumps(state)
        return [
            StateWrite(identity, data, {str(k): v for k, v in counts.items()})
        ], StatefulBatchLogic.RETAIN

    def _state_for(self, identity: str) -> UserState:
        if not self._identity:
            self._identity = identity
            loaded = self._load.load(identity)  # also marks the user live for prefetch
            if self._state is None:  # not resumed from a recovery snapshot
                self._state = loaded or UserState(key=identity)
        assert self._state is not None
        return self._state

    def notify_at(self) -> datetime:
        return self._touched + self._idle

    def on_notify(self) -> tuple[Iterable[StateWrite], bool]:
        if self._identity:
            self._load.release(self._identity)
        return [], StatefulBatchLogic.DISCARD

    def snapshot(self) -> bytes:
        return dumps(self._state or UserState())


class _RedisStatePartition(StatelessSinkPartition[StateWrite]):
    def __init__(self, store: StateStore) -> None:
        self._store = store

    def write_batch(self, items: list[StateWrite]) -> None:
        counts: Counter[str] = Counter()
        states = []
        for item in items:
            counts.update(item.counts)
            if item.data is not None:
                states.append((item.identity, item.data))
        counts["batches"] += 1
        self._store.write(states, counts)


class RedisStateSink(DynamicSink[StateWrite]):
    """Writes each batch of user states (and the counters) in one Redis pipeline."""

    def __init__(self, store: StateStore) -> None:
        self._store = store

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _RedisStatePartition:
        return _RedisStatePartition(self._store)


def _key(event: Event) -> str:
    return event.key


def build_ingest_flow(
    source: Source[KafkaSourceMessage[Any, Any]],
    dlq_sink: Sink[KafkaSinkMessage[Any, Any]],
    state_sink: Sink[StateWrite],
    load: Loader,
    *,
    windows: WindowConfig = DEFAULT_CONFIG,
    clock: Clock = now_ms,
    idle_ms: int = 60_000,
    flow_id: str = "tetik_ingest",
) -> Dataflow:
    """The ingest dataflow over any source of Kafka messages and any sinks."""
    flow = Dataflow(flow_id)
    messages = op.input("events", flow, source)
    decoded = op.map("decode", messages, decode_message)
    split = op.branch("split", decoded, _is_rejected)
    # Whatever is not rejected is an Event (decode_message returns one or the other).
    events = cast(Stream[Event], split.falses)
    op.output("dlq", op.map("dlq_record", split.trues, to_dlq), dlq_sink)
    keyed = op.key_on(
        "identity", op.flat_map_batch("prefetch", events, prefetching(load, _key)), _key
    )

    def builder(resume: bytes | None) -> UserLogic:
        return UserLogic(load, windows, clock, idle_ms, resume)

    writes = op.key_rm("unkey", op.stateful_batch("state", keyed, builder))
    invalid = op.map("count_invalid", split.trues, lambda _: StateWrite("", None, {"invalid": 1}))
    op.output("redis", op.merge("writes", writes, invalid), state_sink)
    return flow


def kafka_ingest_flow(
    settings: Settings,
    *,
    tail: bool = True,
    stop: threading.Event | None = None,
    batch_size: int = 1000,
) -> Dataflow:
    """The ingest flow on the real Kafka topics and Redis of ``settings``.

    With ``tail=False`` it ends at the end of the topic; with ``stop`` it ends
    once that event is set (see :mod:`flows.lifecycle`).
    """
    brokers = [settings.kafka_bootstrap]
    source = StoppableKafkaSource(
        brokers,
        [settings.events_topic],
        tail=tail,
        batch_size=batch_size,
        stop=stop or threading.Event(),
    )
    dlq = KafkaSink(brokers, settings.dlq_topic, add_config={"linger.ms": "5"})
    store = StateStore.from_url(settings.redis_url, settings.prefix, settings.windows)
    return build_ingest_flow(
        source,  # type: ignore[arg-type]  # raise_on_errors=True: only messages come out
        dlq,
        RedisStateSink(store),
        BatchLoader(store),
        windows=settings.windows,
    )
