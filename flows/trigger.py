"""The live engine: Kafka ``events`` -> journeys -> ``actions``, state and timers in Redis.

Steps (each owned by one function or class below):

1. ``decode``: :func:`decode_stamped` validates each message and stamps the
   event with its clock (:meth:`flows.watermark.Watermark.stamp`) and the
   time it reached Kafka; invalid messages go to ``events.dlq`` as in the
   ingest flow (:func:`flows.ingest.to_dlq`).
2. ``identity``: events are keyed by identity, so one user's events stay in
   order on one worker.
3. ``engine``: :class:`UserLogic` runs the journeys core for one user. It
   loads the state from Redis on first touch (reads batched by
   :class:`flows.store.BatchLoader`), fires the user's due timers before
   each event, runs :meth:`engine.journeys.Engine.handle`, and arms a Bytewax
   notification for the next timer. A timer fires when the input watermark
   has passed its due time, each step at its due time.
4. ``out``: :class:`OutcomeSink` emits each batch's actions exactly once
   (:mod:`flows.ledger`) and only then writes the changed states and
   counters in one Redis pipeline, so the state in Redis never runs ahead of
   the actions emitted.

With Bytewax recovery on, offsets, user states and pending timers are
snapshotted every epoch; after a crash the stretch since the last snapshot
is processed again and the ledger drops the actions already emitted.
:func:`build_trigger_flow` takes its source and sinks, so tests pass
Bytewax's ``TestingSource``/``TestingSink`` or the real Kafka and Redis.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeGuard, cast

import bytewax.operators as op
import msgspec
from bytewax.connectors.kafka import KafkaSinkMessage, KafkaSourceMessage
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import DynamicSink, Sink, StatelessSinkPartition

from engine.actions import Action
from engine.events import Event
from engine.state import UserState, dumps, loads, prune
from flows.ingest import Rejected, decode_message, to_dlq
from flows.ledger import ActionEmitter
from flows.runtime import RulesRuntime
from flows.store import Loader, StateStore, prefetching
from flows.watermark import Clock, Watermark, wall_ms

RETRY_MS = 100  # a due timer held back by the watermark looks again this much later
# Timers wake on 100 ms ticks, so the users due in one tick fire in one activation
# and their actions and states go out in one sink batch (a Kafka flush and a Redis
# transaction) instead of one each; an action's `at` is still its due time.
TICK_MS = 100


@dataclass(frozen=True, slots=True)
class Stamped:
    """A valid event with the clock it is applied at and when it reached Kafka."""

    event: Event
    now: int
    ingested: int | None = None


@dataclass(frozen=True)
class Outcome:
    """What one user's batch (or timer) produced: actions, new state bytes, counts."""

    identity: str
    data: bytes | None
    actions: list[Action] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


def decode_stamped(watermark: Watermark) -> Callable[[KafkaSourceMessage[Any, Any]], Any]:
    """The ``decode`` step: a message becomes a :class:`Stamped` or a ``Rejected``."""

    def decode(message: KafkaSourceMessage[Any, Any]) -> Stamped | Rejected:
        event = decode_message(message)
        if isinstance(event, Rejected):
            return event
        partition = f"{message.partition}-{message.topic}"
        return Stamped(event, watermark.stamp(partition, event.ts), _kafka_time(message))

    return decode


def _kafka_time(message: KafkaSourceMessage[Any, Any]) -> int | None:
    stamp = message.timestamp
    return stamp[1] if stamp is not None and stamp[0] != 0 else None


def _is_rejected(item: Stamped | Rejected) -> TypeGuard[Rejected]:
    return isinstance(item, Rejected)


def _caused(actions: list[Action], ingested: int | None) -> list[Action]:
    if ingested is None:
        return actions
    return [msgspec.structs.replace(a, ingested_at=ingested) for a in actions]


def _to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


class UserLogic(StatefulBatchLogic[Stamped, Outcome, bytes]):
    """One user inside the live flow (see the module docstring, step 3).

    The logic stays resident while the user has a pending timer; without one
    it is discarded after ``idle_ms`` without events (its state is in Redis),
    so worker memory follows active users and pending timers only.
    """

    def __init__(
        self,
        runtime: RulesRuntime,
        load: Loader,
        watermark: Watermark,
        clock: Clock,
        idle_ms: int,
        resume: bytes | None,
    ) -> None:
        self._runtime = runtime
        self._load = load
        self._watermark = watermark
        self._clock = clock
        self._idle_ms = idle_ms
        self._state = None if resume is None else loads(resume)
        self._loaded = False
        self._touched = clock()
        self._retry_at = 0

    def on_batch(self, values: list[Stamped]) -> tuple[Iterable[Outcome], bool]:
        engine = self._runtime.current()
        state = self._state_for(values[0].event.key)
        actions: list[Action] = []
        counts: Counter[str] = Counter()
        for item in values:
            outcome, fired, caused = engine.handle(state, item.event, item.now)
            counts[outcome] += 1
            actions.extend(fired)
            actions.extend(_caused(caused, item.ingested))
        self._touched = self._clock()
        changed = bool(counts["applied"] or actions)
        if changed:
            prune(state, values[-1].now, engine.windows)
        return [self._outcome(state, actions, counts, changed)], StatefulBatchLogic.RETAIN

    def _outcome(
        self, state: UserState, actions: list[Action], counts: Counter[str], changed: bool
    ) -> Outcome:
        for action in actions:
            counts[f"actions.{action.status}"] += 1
        data = dumps(state) if changed else None
        return Outcome(state.key, data, actions, {str(k): v for k, v in counts.items()})

    def _state_for(self, identity: str) -> UserState:
        if not self._loaded:
            self._loaded = True
            loaded = self._load.load(identity)  # also marks the user live for prefetch
            if self._state is None:  # not resumed from a recovery snapshot
                self._state = loaded or UserState(key=identity)
        assert self._state is not None
        return self._state

    def notify_at(self) -> datetime | None:
        state = self._state
        due = None if state is None else self._runtime.engine.next_due(state)
        if due is None:
            return _to_datetime(self._touched + self._idle_ms)
        wake = max(due, self._retry_at)
        return _to_datetime(-(-wake // TICK_MS) * TICK_MS)

    def on_notify(self) -> tuple[Iterable[Outcome], bool]:
        state = self._state
        engine = self._runtime.current()
        now = self._clock()
        due = None if state is None else engine.next_due(state)
        if state is None or due is None:
            return self._idle(now)
        if due > now:
            return [], StatefulBatchLogic.RETAIN
        self._state_for(state.key)
        actions = engine.advance(state, min(now, self._watermark.value()))
        following = engine.next_due(state)
        self._retry_at = now + RETRY_MS if following is not None and following <= now else 0
        if not actions and following == due:
            return [], StatefulBatchLogic.RETAIN
        prune(state, now, engine.windows)
        return [self._outcome(state, actions, Counter(), True)], StatefulBatchLogic.RETAIN

    def _idle(self, now: int) -> tuple[Iterable[Outcome], bool]:
        if now < self._touched + self._idle_ms:
            return [], StatefulBatchLogic.RETAIN
        if self._state is not None and self._loaded:
            self._load.release(self._state.key)
        return [], StatefulBatchLogic.DISCARD

    def snapshot(self) -> bytes:
        return dumps(self._state or UserState())


class _OutcomePartition(StatelessSinkPartition[Outcome]):
    def __init__(self, emitter: ActionEmitter, store: StateStore, runtime: RulesRuntime) -> None:
        self._emitter = emitter
        self._store = store
        self._runtime = runtime

    def write_batch(self, items: list[Outcome]) -> None:
        actions = [a for item in items for a in item.actions]
        counts: Counter[str] = Counter()
        # One transaction confirms the actions and stores the states they came from.
        pipe = self._store.client.pipeline(transaction=True)
        counts["actions.emitted"] = self._emitter.emit(actions, pipe=pipe)
        states = []
        for item in items:
            counts.update(item.counts)
            if item.data is not None:
                states.append((item.identity, item.data))
        counts.update({f"ended.{k}": v for k, v in self._runtime.drain_ended().items()})
        counts["batches"] += 1
        self._store.queue(pipe, states, counts)
        pipe.execute()


class OutcomeSink(DynamicSink[Outcome]):
    """Actions exactly once to Kafka, then states and counters to Redis (one pipeline)."""

    def __init__(
        self,
        make_emitter: Callable[[], ActionEmitter],
        store: StateStore,
        runtime: RulesRuntime,
    ) -> None:
        self._make_emitter = make_emitter
        self._store = store
        self._runtime = runtime

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _OutcomePartition:
        return _OutcomePartition(self._make_emitter(), self._store, self._runtime)


def _key(item: Stamped) -> str:
    return item.event.key


def build_trigger_flow(
    source: Source[KafkaSourceMessage[Any, Any]],
    dlq_sink: Sink[KafkaSinkMessage[Any, Any]],
    out_sink: Sink[Outcome],
    load: Loader,
    runtime: RulesRuntime,
    watermark: Watermark,
    *,
    clock: Clock = wall_ms,
    idle_ms: int = 60_000,
    flow_id: str = "tetik_run",
) -> Dataflow:
    """The live engine's dataflow over any source of Kafka messages and any sinks."""
    flow = Dataflow(flow_id)
    messages = op.input("events", flow, source)
    decoded = op.map("decode", messages, decode_stamped(watermark))
    split = op.branch("split", decoded, _is_rejected)
    events = cast(Stream[Stamped], split.falses)
    op.output("dlq", op.map("dlq_record", split.trues, to_dlq), dlq_sink)
    keyed = op.key_on(
        "identity", op.flat_map_batch("prefetch", events, prefetching(load, _key)), _key
    )

    def builder(resume: bytes | None) -> UserLogic:
        return UserLogic(runtime, load, watermark, clock, idle_ms, resume)

    outcomes = op.key_rm("unkey", op.stateful_batch("engine", keyed, builder))
    invalid = op.map("count_invalid", split.trues, lambda _: Outcome("", None, [], {"invalid": 1}))
    op.output("out", op.merge("outcomes", outcomes, invalid), out_sink)
    return flow
