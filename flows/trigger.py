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

Failures stay with the record that caused them: an invalid event, one dated
more than a day after it reached Kafka, or one whose processing raises, goes
to ``events.dlq`` with the reason, the exception class and its source
(topic, partition, offset); the user's state is as if it never came, and
that user's other events and everyone else's go on. A
:class:`flows.breaker.Breaker` stops the engine loudly when most of the input
fails. A timer whose step raises is counted (``errors.timer``), reported,
and retried with a growing delay, never in a loop.

With Bytewax recovery on, offsets, user states and pending timers are
snapshotted every epoch; after a crash the stretch since the last snapshot
is processed again and the ledger drops the actions already emitted.
:func:`build_trigger_flow` takes its source and sinks, so tests pass
Bytewax's ``TestingSource``/``TestingSink`` or the real Kafka and Redis.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeGuard, cast

import bytewax.operators as op
import msgspec
from bytewax.connectors.kafka import KafkaSourceMessage
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import DynamicSink, Sink, StatelessSinkPartition

from engine.actions import Action
from engine.events import Event
from engine.journeys import Engine
from engine.state import UserState, dumps, loads, prune
from flows.breaker import Breaker, Halt
from flows.ingest import Rejected, decode_message, kafka_time, to_dlq
from flows.ledger import ActionEmitter
from flows.retry import retrying
from flows.runtime import RulesRuntime
from flows.store import Loader, StateStore, prefetching
from flows.watermark import Clock, Watermark, wall_ms

RETRY_MS = 100  # a due timer held back by the watermark looks again this much later
# Timers wake on 100 ms ticks, so the users due in one tick fire in one activation
# and their actions and states go out in one sink batch (a Kafka flush and a Redis
# transaction) instead of one each; an action's `at` is still its due time.
TICK_MS = 100
TIMER_BACKOFF_MS = (1_000, 600_000)  # a failing timer waits 1 s, doubling up to 10 min


@dataclass(frozen=True, slots=True)
class Stamped:
    """A valid event with the clock it is applied at and when it reached Kafka."""

    event: Event
    now: int
    ingested: int | None = None
    message: KafkaSourceMessage[Any, Any] | None = None  # kept for the dead-letter queue
    partition: str = ""  # as the watermark names it; "" when not stamped by one


@dataclass(frozen=True)
class Outcome:
    """What one user's batch (or timer) produced: actions, new state bytes, counts."""

    identity: str
    data: bytes | None
    actions: list[Action] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    dead: tuple[Rejected, ...] = ()  # events whose processing failed, for the DLQ


def decode_stamped(
    watermark: Watermark, breaker: Breaker | None = None
) -> Callable[[KafkaSourceMessage[Any, Any]], Any]:
    """The ``decode`` step: a message becomes a :class:`Stamped` or a ``Rejected``."""

    def decode(message: KafkaSourceMessage[Any, Any]) -> Stamped | Rejected:
        item = _decoded(watermark, message)
        if breaker is not None:
            breaker.record(isinstance(item, Rejected))
        return item

    return decode


def _decoded(watermark: Watermark, message: KafkaSourceMessage[Any, Any]) -> Stamped | Rejected:
    event = decode_message(message)  # also refuses a ts too far after the Kafka time
    if isinstance(event, Rejected):
        return event
    ingested = kafka_time(message)
    partition = f"{message.partition}-{message.topic}"
    return Stamped(event, watermark.stamp(partition, event.ts), ingested, message, partition)


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
        self._good = resume  # the state's last bytes known to serialise (None: not yet)
        self._loaded = False
        self._touched = clock()
        self._retry_at = 0
        self._timer_backoff = 0

    def on_batch(self, values: list[Stamped]) -> tuple[Iterable[Outcome], bool]:
        engine = self._runtime.current()
        state = self._state_for(values[0].event.key)
        self._touched = self._clock()
        try:
            return [self._run(engine, state, values)], StatefulBatchLogic.RETAIN
        except Exception:  # one event's failure must not stop everyone
            return [self._isolate(engine, values)], StatefulBatchLogic.RETAIN
        finally:  # they no longer hold the watermark back (flows.watermark rules)
            self._watermark.applied((v.partition, v.now) for v in values if v.partition)

    def _run(self, engine: Engine, state: UserState, values: list[Stamped]) -> Outcome:
        """The common path: the whole batch at once."""
        actions: list[Action] = []
        counts: Counter[str] = Counter()
        for item in values:
            outcome, fired, caused = engine.handle(state, item.event, item.now)
            counts[outcome] += 1
            actions.extend(fired)
            actions.extend(_caused(caused, item.ingested))
        changed = bool(counts["applied"] or actions)
        if changed:
            prune(state, values[-1].now, engine.windows)
        return self._outcome(state, actions, counts, changed)

    def _isolate(self, engine: Engine, values: list[Stamped]) -> Outcome:
        """The batch failed: redo it from the last good state, one event at a time.

        An event whose processing (or the state's serialisation after it)
        raises is left out, as if it never came, and goes to the dead-letter
        queue with its reason and exception class; the others are applied as
        the common path would have applied them.
        """
        state = self._restored()
        actions: list[Action] = []
        counts: Counter[str] = Counter()
        dead: list[Rejected] = []
        for item in values:
            before = dumps(state)
            try:
                outcome, fired, caused = engine.handle(state, item.event, item.now)
                dumps(state)
            except Exception as exc:  # see the module docstring
                state = loads(before)
                dead.append(_dead_letter(item, exc))
                counts["failed"] += 1
                continue
            counts[outcome] += 1
            actions.extend(fired)
            actions.extend(_caused(caused, item.ingested))
        self._state = state
        prune(state, values[-1].now, engine.windows)
        result = self._outcome(state, actions, counts, True)
        return Outcome(result.identity, result.data, result.actions, result.counts, tuple(dead))

    def _restored(self) -> UserState:
        """The user's state as of the last batch that went through."""
        assert self._state is not None
        if self._good is None:
            return UserState(key=self._state.key)
        return loads(self._good)

    def _outcome(
        self, state: UserState, actions: list[Action], counts: Counter[str], changed: bool
    ) -> Outcome:
        for action in actions:
            counts[f"actions.{action.status}"] += 1
            if action.reason is not None:  # e.g. actions.suppressed.template_error
                counts[f"actions.{action.status}.{action.reason}"] += 1
        data = dumps(state) if changed else None
        if data is not None:
            self._good = data
        return Outcome(state.key, data, actions, {str(k): v for k, v in counts.items()})

    def _state_for(self, identity: str) -> UserState:
        if not self._loaded:
            self._loaded = True
            loaded = self._load.load(identity)  # also marks the user live for prefetch
            if self._state is None:  # not resumed from a recovery snapshot
                self._state = loaded or UserState(key=identity)
                self._good = None if loaded is None else dumps(loaded)
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
        if due > now or now < self._retry_at:
            return [], StatefulBatchLogic.RETAIN
        self._state_for(state.key)
        try:
            outcome = self._fire(engine, state, now, due)
        except Exception as exc:  # a broken step must not stop everyone
            return [self._timer_failed(state, now, exc)], StatefulBatchLogic.RETAIN
        self._timer_backoff = 0
        return ([] if outcome is None else [outcome]), StatefulBatchLogic.RETAIN

    def _fire(self, engine: Engine, state: UserState, now: int, due: int) -> Outcome | None:
        actions = engine.advance(state, min(now, self._watermark.value()))
        following = engine.next_due(state)
        self._retry_at = now + RETRY_MS if following is not None and following <= now else 0
        if not actions and following == due:
            return None
        prune(state, now, engine.windows)
        return self._outcome(state, actions, Counter(), True)

    def _timer_failed(self, state: UserState, now: int, exc: Exception) -> Outcome:
        """Undo the failed step, report it, and look again later (1 s, doubling)."""
        low, high = TIMER_BACKOFF_MS
        self._timer_backoff = min(high, max(low, self._timer_backoff * 2))
        self._retry_at = now + self._timer_backoff
        self._state = self._restored()
        _report_once(
            f"a timer of user {state.key!r} failed ({type(exc).__name__}: {exc}); "
            f"retrying in {self._timer_backoff / 1000:g} s (counted as errors.timer)"
        )
        return Outcome(state.key, None, [], {"errors.timer": 1})

    def _idle(self, now: int) -> tuple[Iterable[Outcome], bool]:
        if now < self._touched + self._idle_ms:
            return [], StatefulBatchLogic.RETAIN
        if self._state is not None and self._loaded:
            self._load.release(self._state.key)
        return [], StatefulBatchLogic.DISCARD

    def snapshot(self) -> bytes:
        return dumps(self._state or UserState())


class _OutcomePartition(StatelessSinkPartition[Outcome]):
    def __init__(
        self,
        emitter: ActionEmitter,
        store: StateStore,
        runtime: RulesRuntime,
        on_back: Callable[[], None] | None,
    ) -> None:
        self._emitter = emitter
        self._store = store
        self._runtime = runtime
        self._on_back = on_back

    def write_batch(self, items: list[Outcome]) -> None:
        """Claim, produce, then confirm and store in one transaction; Redis steps retried."""
        ledger = self._emitter.ledger
        actions = [a for item in items for a in item.actions]
        token = uuid.uuid4().hex  # the same for every retry of this batch's claim
        claimed = retrying(
            "claiming actions in the ledger",
            lambda: ledger.claim(actions, token),
            on_back=self._on_back,
        )
        dead = [to_dlq(d) for item in items for d in item.dead]
        offsets = self._emitter.produce(claimed, dead_letters=dead) if claimed or dead else {}
        counts: Counter[str] = Counter({"actions.emitted": len(claimed)})
        states = []
        for item in items:
            counts.update(item.counts)
            if item.data is not None:
                states.append((item.identity, item.data))
        counts.update({f"ended.{k}": v for k, v in self._runtime.drain_ended().items()})
        counts["batches"] += 1

        def commit() -> None:
            # One transaction confirms the actions and stores the states they came from.
            pipe = self._store.client.pipeline(transaction=True)
            ledger.confirm((a.action_id for a in claimed), offsets, pipe)
            self._store.queue(pipe, states, counts)
            pipe.execute()

        retrying("storing states and confirming actions", commit, on_back=self._on_back)


class OutcomeSink(DynamicSink[Outcome]):
    """Actions exactly once (and dead letters) to Kafka, then states and counters to Redis.

    ``on_back`` runs when Redis answers again after a fault (the deployment
    marker's check, :mod:`flows.deployment`).
    """

    def __init__(
        self,
        make_emitter: Callable[[], ActionEmitter],
        store: StateStore,
        runtime: RulesRuntime,
        on_back: Callable[[], None] | None = None,
    ) -> None:
        self._make_emitter = make_emitter
        self._store = store
        self._runtime = runtime
        self._on_back = on_back

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _OutcomePartition:
        return _OutcomePartition(self._make_emitter(), self._store, self._runtime, self._on_back)


def _dead_letter(item: Stamped, exc: Exception) -> Rejected:
    assert item.message is not None, "live events carry their Kafka message"
    return Rejected(item.message, f"processing failed: {exc}"[:1000], type(exc).__name__)


_reported: dict[str, float] = {}


def _report_once(line: str, every_s: float = 10.0) -> None:
    """A line on stderr, at most once per ``every_s`` seconds for the same kind of line."""
    kind = line.split("(", 1)[-1][:60]
    now = time.monotonic()
    if now - _reported.get(kind, -every_s) >= every_s:
        _reported[kind] = now
        print(f"tetik run: {line}", file=sys.stderr, flush=True)


def _key(item: Stamped) -> str:
    return item.event.key


def build_trigger_flow(
    source: Source[KafkaSourceMessage[Any, Any]],
    out_sink: Sink[Outcome],
    load: Loader,
    runtime: RulesRuntime,
    watermark: Watermark,
    *,
    clock: Clock = wall_ms,
    idle_ms: int = 60_000,
    flow_id: str = "tetik_run",
    breaker: Breaker | None = None,
) -> Dataflow:
    """The live engine's dataflow over any source of Kafka messages and one sink.

    Dead letters ride on the outcomes (``Outcome.dead``): the sink produces
    them with the batch's actions, so one wait for Kafka's acknowledgements
    covers both (a separate DLQ sink waited once more per batch that held a
    bad record). ``breaker`` counts failed records (see :mod:`flows.breaker`);
    without one a fresh breaker whose :class:`Halt` nobody watches is used.
    """
    breaker = breaker if breaker is not None else Breaker(Halt())
    flow = Dataflow(flow_id)
    messages = op.input("events", flow, source)
    decoded = op.map("decode", messages, decode_stamped(watermark, breaker))
    split = op.branch("split", decoded, _is_rejected)
    events = cast(Stream[Stamped], split.falses)
    keyed = op.key_on(
        "identity", op.flat_map_batch("prefetch", events, prefetching(load, _key)), _key
    )

    def builder(resume: bytes | None) -> UserLogic:
        return UserLogic(runtime, load, watermark, clock, idle_ms, resume)

    outcomes = op.key_rm("unkey", op.stateful_batch("engine", keyed, builder))

    def count_failed(_step: str, outcome: Outcome) -> None:
        if outcome.dead:
            breaker.record(True, len(outcome.dead))

    op.inspect("count_failed", outcomes, count_failed)
    invalid = op.map("invalid", split.trues, _invalid)
    op.output("out", op.merge("outcomes", outcomes, invalid), out_sink)
    return flow


def _invalid(rejected: Rejected) -> Outcome:
    return Outcome("", None, [], {"invalid": 1}, (rejected,))
