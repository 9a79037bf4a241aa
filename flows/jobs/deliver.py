"""The delivery job: Kafka ``actions`` -> channel adapters -> outcomes back into Kafka.

``tetik deliver`` consumes what a running ``tetik run`` emits. Per record:

1. decode the value as an :class:`~engine.actions.Action`; a record that is
   not one goes to ``actions.dlq`` untouched (key, value) with the reason and
   its source in headers, so it is never lost;
2. skip ``suppressed`` actions (a record of a decision, nothing to deliver);
3. skip actions the ledger has already seen (see below);
4. hand the action to its channel's adapter (:mod:`channels.config`);
5. ``delivered``/``bounced``: write the ledger, and feed an SPEC ``engagement``
   event back to the ``events`` topic (key = user id, ``event_id``
   ``tetik-<kind>-<action_id>``), so journeys see bounces and deliveries;
6. ``failed``: the original record goes to ``actions.dlq`` with headers
   ``tetik.error.reason``, ``tetik.channel``, ``tetik.adapter``,
   ``tetik.attempts`` and its source; not in the ledger, so a re-drive sends.

Sends run in parallel. A batch (up to :data:`BATCH` records) is sorted first
(steps 1-3, in order, on the job's thread); then each route's sends go to its
:class:`~channels.pool.ChannelPool`: at most the route's ``concurrency`` in
flight, one lane per user so a user's actions go out in the order they came,
the ledger written on the pool's thread right after each send; then outcomes
are counted, dead-lettered and fed back in record order (steps 5-6). The same
action twice in one batch is sent (or found in the ledger) after the first
one's outcome. A route whose circuit is open (:mod:`channels.breaker`) fails
its actions at once, so a dead endpoint costs seconds, not minutes; they are
dead-lettered with the reason like any failure. Failures are logged as one
warning per channel per batch, ``delivery failed: sms x494: REASON (circuit
open 30s: 489 not tried); dead-lettered``. On ``stop`` the lanes send nothing
more; offsets are committed only up to each partition's first unsent record,
so the rest is read again (what was sent is in the ledger by then).

After each batch the producer is flushed (every dead letter and feedback
event acknowledged) and only then are the consumer offsets committed. A flush
failure stops the job without committing, so the batch is read again.

Exactly once, as far as it goes. The ledger
(:class:`~flows.stores.deliveries.DeliveryLedger`) is
``SET {P:delivered:ACTION_ID} "<outcome> <adapter> <ms>" NX PX <retention>``,
written right after the adapter returns, and checked before sending. So:

* the same action twice in the topic, a re-read after a crash before the
  commit, or a second consumer group over the same topic send nothing twice;
* a crash *between* the send and the ledger write re-sends that one action
  on restart. The onsite inbox deduplicates by ``action_id`` itself; a
  webhook gets the same ``Idempotency-Key`` both times, so a receiver that
  honours it delivers once; SMTP and Kafka carry the ``action_id``
  (``Message-ID``, header) for the reader to deduplicate;
* an action already in the ledger has its feedback event produced again:
  its ``event_id`` is deterministic, so the engine drops the repeat, and a
  crash between the ledger write and the flush loses no feedback.

The ledger's retention (default 30 days) must outlast the actions topic's.

Metrics (:mod:`flows.metrics`): every record counts in
``tetik_deliveries_total{channel, outcome, reason}`` (a failure's reason is
``no_adapter``, ``adapter_error``, ``circuit_open`` or ``send_failed``, a suppressed action's
the engine's reason; channels outside the contract's count as ``other``),
the consumer's lag per partition is set every few seconds, and Kafka errors
count. With ``metrics_port`` the job serves them with ``/healthz`` (the
consume loop turned within :data:`LIVE_STALE_S`) and ``/readyz`` (Redis and
Kafka answer, the loop runs).
"""

from __future__ import annotations

import contextlib
import functools
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
import orjson
import redis
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from channels.base import Delivery
from channels.breaker import CIRCUIT_OPEN
from channels.config import ChannelConfig, Resources, Router, default_config
from channels.pool import ChannelPool, failed
from channels.smtp import Recipient
from engine.actions import Action
from engine.errors import ConfigError
from engine.events import CHANNELS
from flows.clock import wall_ms
from flows.kafka.topics import ensure_topics
from flows.metrics import Metrics, installed
from flows.metrics.health import Health, kafka_check, redis_check
from flows.metrics.http import serve_job
from flows.metrics.kafka import LAG_EVERY_S, group_lag
from flows.metrics.names import DELIVERIES, ERRORS, NONE, bounded
from flows.report import say, warn
from flows.retry import connect
from flows.settings import Settings
from flows.stores.deliveries import DeliveryLedger
from flows.stores.states import Shoppers

BATCH: Final = 500
# /healthz fails once the loop has not turned for this long: past librdkafka's
# max.poll.interval.ms (5 min), the longest a batch of slow sends may take.
LIVE_STALE_S: Final = 330.0
FEEDBACK_KINDS: Final = frozenset({"delivered", "bounced"})

Headers = list[tuple[str, str | bytes | None]]

# Group timings that let a consumer join in ~3 s instead of ~20 s on small
# clusters (and tansu); max.poll.interval.ms keeps librdkafka's 5 minutes,
# because a batch of slow webhooks with retries may take a while.
CONSUMER_DEFAULTS: Final[Mapping[str, Any]] = {
    "auto.offset.reset": "earliest",
    "enable.auto.commit": False,
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 500,
}


@dataclass
class Tally:
    """What the job did: counts by (outcome, channel).

    Outcomes: ``delivered``, ``bounced``, ``failed`` (from adapters),
    ``suppressed`` (skipped), ``duplicate`` (the ledger had it), ``invalid``
    (not an action; dead-lettered, channel ``-``).
    """

    counts: Counter[tuple[str, str]] = field(default_factory=Counter)

    def add(self, outcome: str, channel: str) -> None:
        self.counts[(outcome, channel)] += 1

    def total(self, outcome: str | None = None) -> int:
        return sum(n for (o, _), n in self.counts.items() if outcome in (None, o))

    def line(self) -> str:
        """One human line, e.g. ``delivered 12 (email 9, onsite 3) | failed 1 (sms 1)``."""
        parts = []
        for outcome in sorted({o for o, _ in self.counts}):
            by_channel = sorted((c, n) for (o, c), n in self.counts.items() if o == outcome)
            detail = ", ".join(f"{c} {n}" for c, n in by_channel)
            parts.append(f"{outcome} {self.total(outcome)} ({detail})")
        return "actions " + (" | ".join(parts) if parts else "none yet")


def profile_email(store: Shoppers) -> Recipient:
    """The SMTP recipient lookup: ``profile.email`` from the user's state."""

    def lookup(user_id: str) -> str | None:
        state = store.load(user_id)
        email = None if state is None else state.profile.get("email")
        return email if isinstance(email, str) else None

    return lookup


def feedback_event(action: Action, kind: str, at: int) -> bytes:
    """The SPEC ``engagement`` event for an outcome; its id is fixed per action and kind."""
    return orjson.dumps(
        {
            "event_id": f"tetik-{kind}-{action.action_id}",
            "type": "engagement",
            "ts": at,
            "user_id": action.user_id,
            "action_id": action.action_id,
            "channel": action.channel,
            "kind": kind,
        }
    )


@dataclass(frozen=True)
class Topics:
    """Where the job reads and writes: the topics of its settings."""

    actions: str
    dlq: str
    events: str

    @classmethod
    def of(cls, settings: Settings) -> Topics:
        return cls(settings.actions_topic, settings.actions_dlq_topic, settings.events_topic)


_decoder = msgspec.json.Decoder(Action)
_CIRCUIT_NOTE = re.compile(rf" \(({CIRCUIT_OPEN} [^)]*)\)$")


@dataclass(eq=False)
class _Send:
    """One record of a batch on its way through an adapter."""

    message: Message
    action: Action
    result: Delivery | None = None  # None while (or when, on stop) not sent
    repeat: bool = False  # its action id came earlier in the same batch
    duplicate: str | None = None  # a repeat whose first got this outcome

    @property
    def pending(self) -> bool:
        return self.result is None and self.duplicate is None


@dataclass
class _Failures:
    """A batch's failures: one log line per channel, never one per action."""

    reasons: dict[str, Counter[str]] = field(default_factory=dict)
    refused: Counter[str] = field(default_factory=Counter)
    circuit: dict[str, str] = field(default_factory=dict)

    def add(self, channel: str, detail: str) -> None:
        note = _CIRCUIT_NOTE.search(detail)
        if note:
            self.refused[channel] += 1
            self.circuit[channel] = note.group(1)
            detail = detail[: note.start()]
        self.reasons.setdefault(channel, Counter())[detail] += 1

    def report(self, show: Callable[[str], None] = warn) -> None:
        for channel, reasons in sorted(self.reasons.items()):
            show(self.line(channel, reasons))

    def line(self, channel: str, reasons: Counter[str]) -> str:
        """E.g. ``delivery failed: sms x494: POST ...: refused (circuit open 30s: 489
        not tried); dead-lettered``."""
        total = sum(reasons.values())
        top, count = reasons.most_common(1)[0]
        note = ""
        if self.refused[channel]:
            note = f" ({self.circuit[channel]}: {self.refused[channel]} not tried)"
        others = f"; {total - count} with other reasons" if total > count else ""
        return f"delivery failed: {channel} x{total}: {top}{note}{others}; dead-lettered"


class Deliverer:
    """One consumer, one producer, the adapters and the ledger; see the module docstring."""

    def __init__(
        self,
        router: Router,
        ledger: DeliveryLedger,
        producer: Producer,
        topics: Topics,
        metrics: Metrics | None = None,
    ) -> None:
        self.router = router
        self.ledger = ledger
        self.producer = producer
        self.topics = topics
        self.tally = Tally()
        self.metrics = metrics if metrics is not None else installed()
        self._errors: list[str] = []

    def handle(self, message: Message) -> None:
        """Deliver (or skip, or dead-letter) one consumed record."""
        self.handle_batch([message], threading.Event())

    def handle_batch(self, records: list[Message], stop: threading.Event) -> list[Message]:
        """Deliver a batch, its sends in parallel (module docstring); return the records
        whose offsets may be committed (on ``stop``, up to each partition's first unsent)."""
        sends: list[_Send] = []
        repeats: list[_Send] = []
        for message in records:
            send = self._triage(message, {s.action.action_id for s in sends})
            if send is not None:
                (repeats if send.repeat else sends).append(send)
        self._send_all([s for s in sends if s.result is None], stop)
        for send in repeats:  # the same action twice in a batch: after the first's outcome
            if not stop.is_set():
                self._repeat(send)
        handled = _committable(records, {id(s.message) for s in sends + repeats if s.pending})
        done = {id(m) for m in handled}
        failures = _Failures()
        for send in sends + repeats:
            if id(send.message) not in done:
                continue
            if send.duplicate is not None:
                self._note("duplicate", send.action.channel)
                self._feedback(send.action, send.duplicate)
            elif send.result is not None:
                self._finish(send.action, send.message, send.result, failures)
        failures.report()
        return handled

    def _triage(self, message: Message, batch: set[str]) -> _Send | None:
        """Decode and skip what needs no send; a :class:`_Send` for the rest."""
        action = self._decode(message)
        if action is None:
            self._note("invalid", "-", "not_an_action")
            return None
        if action.status == "suppressed":
            self._note("suppressed", action.channel, action.reason or NONE)
            return None
        if action.action_id in batch:
            return _Send(message, action, repeat=True)
        recorded = self.ledger.seen(action.action_id)
        if recorded is not None:
            self._note("duplicate", action.channel)
            self._feedback(action, recorded)
            return None
        if self.router.pool_for(action.channel) is None:
            reason = f"no adapter for channel {action.channel!r}: add it or `default` to the config"
            return _Send(message, action, failed(action, "-", reason))
        return _Send(message, action)

    def _send_all(self, sends: list[_Send], stop: threading.Event) -> None:
        """Each route's sends on its pool; one lane per user keeps a user's actions in order."""
        lanes: dict[tuple[int, str], list[_Send]] = {}
        pools: dict[int, ChannelPool] = {}
        for send in sends:
            pool = self.router.pool_for(send.action.channel)
            assert pool is not None  # _triage failed the actions without one
            pools[id(pool)] = pool
            lanes.setdefault((id(pool), send.action.user_id), []).append(send)
        futures = [
            pools[key[0]].submit(functools.partial(self._lane, pools[key[0]], lane, stop))
            for key, lane in lanes.items()
        ]
        for future in futures:
            future.result()

    def _lane(self, pool: ChannelPool, lane: list[_Send], stop: threading.Event) -> None:
        """On a pool thread: send in order; write the ledger right after each send."""
        for send in lane:
            if stop.is_set():
                return
            send.result = pool.send(send.action)
            if send.result.outcome != "failed":
                self.ledger.record(send.result)

    def _repeat(self, send: _Send) -> None:
        recorded = self.ledger.seen(send.action.action_id)
        if recorded is not None:
            send.result = None
            send.duplicate = recorded
            return
        pool = self.router.pool_for(send.action.channel)
        assert pool is not None  # the first of the pair had one
        self._lane(pool, [send], threading.Event())

    def _note(self, outcome: str, channel: str, reason: str = NONE) -> None:
        self.tally.add(outcome, channel)
        label = bounded(channel, (*CHANNELS, "-"))
        self.metrics.count(DELIVERIES, channel=label, outcome=outcome, reason=reason)

    def _decode(self, message: Message) -> Action | None:
        """The record's action, or None after dead-lettering what is not one."""
        value = message.value()
        if value is None:
            self._dead_letter(message, "record has no value (tombstone); expected an action", [])
            return None
        try:
            return _decoder.decode(value)
        except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
            self._dead_letter(message, f"not an action: {exc}", [])
            return None

    def _finish(
        self, action: Action, message: Message, result: Delivery, failures: _Failures
    ) -> None:
        """Count the outcome; dead-letter a failure, feed back the others."""
        self._note(result.outcome, action.channel, _reason(result))
        if result.outcome == "failed":
            failures.add(action.channel, result.detail)
            self._dead_letter(message, result.detail, _failure_headers(result))
            return
        self._feedback(action, result.outcome)

    def _feedback(self, action: Action, kind: str) -> None:
        # Engagement events exist only for the contract's channels and need an identity.
        if kind in FEEDBACK_KINDS and action.channel in CHANNELS and action.user_id:
            value = feedback_event(action, kind, wall_ms())
            self._produce(self.topics.events, action.user_id.encode(), value, [])

    def _dead_letter(self, message: Message, reason: str, extra: Headers) -> None:
        headers = [("tetik.error.reason", reason.encode()), *extra, *_source_headers(message)]
        self._produce(self.topics.dlq, message.key(), message.value(), headers)

    def _produce(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers
    ) -> None:
        while True:
            try:
                self.producer.produce(
                    topic, key=key, value=value, headers=headers, on_delivery=self._acked
                )
                return
            except BufferError:  # local queue full: let the broker catch up
                self.producer.poll(0.05)

    def _acked(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self.metrics.count(ERRORS, system="kafka", kind="producer")
            self._errors.append(err.str())

    def flush(self, timeout: float = 30.0) -> None:
        """Wait for every dead letter and feedback event; raise if any was not written."""
        left = self.producer.flush(timeout)
        if left or self._errors:
            reason = self._errors[0] if self._errors else f"{left} records unacknowledged"
            raise RuntimeError(f"writing dead letters/feedback failed ({reason}); not committing")


def _reason(result: Delivery) -> str:
    """A bounded reason for the metrics (never the free-text detail)."""
    if result.outcome != "failed":
        return NONE
    if result.adapter == "-":
        return "no_adapter"
    if result.attempts == 0 and CIRCUIT_OPEN in result.detail:
        return "circuit_open"
    return "adapter_error" if result.detail.startswith("adapter error:") else "send_failed"


def _failure_headers(result: Delivery) -> Headers:
    return [
        ("tetik.channel", result.channel.encode()),
        ("tetik.adapter", result.adapter.encode()),
        ("tetik.attempts", str(result.attempts).encode()),
    ]


def _source_headers(message: Message) -> Headers:
    return [
        ("tetik.source.topic", str(message.topic()).encode()),
        ("tetik.source.partition", str(message.partition()).encode()),
        ("tetik.source.offset", str(message.offset()).encode()),
        ("tetik.error.at", str(wall_ms()).encode()),
    ]


@dataclass
class Limits:
    """When the loop ends besides ``stop``: idle seconds while assigned, or K records."""

    idle_exit: float | None = None
    max_actions: int | None = None
    handled: int = 0
    last_activity: float = field(default_factory=time.monotonic)
    assigned: bool = False

    def batch_size(self) -> int:
        left = BATCH if self.max_actions is None else self.max_actions - self.handled
        return max(min(BATCH, left), 0)

    def note(self, records: int) -> None:
        self.handled += records
        if records or not self.assigned:
            self.last_activity = time.monotonic()

    def done(self) -> bool:
        if self.max_actions is not None and self.handled >= self.max_actions:
            return True
        idle = time.monotonic() - self.last_activity
        return self.idle_exit is not None and self.assigned and idle >= self.idle_exit


def run_deliver(
    settings: Settings,
    *,
    config: ChannelConfig | None = None,
    group: str = "",
    stop: threading.Event | None = None,
    idle_exit: float | None = None,
    max_actions: int | None = None,
    ledger_ttl_ms: int = 0,
    progress_every: float = 10.0,
    progress: Callable[[str], None] = say,
    consumer_config: Mapping[str, Any] | None = None,
    metrics_port: int = 0,
) -> Tally:
    """Deliver actions until ``stop`` is set, ``idle_exit`` seconds pass without a
    record (counted once partitions are assigned), or ``max_actions`` records are
    handled; with ``metrics_port``, metrics and health are served there
    (module docstring). It reads ``settings.actions_topic`` and writes dead letters to
    ``settings.actions_dlq_topic`` and feedback to ``settings.events_topic``; missing
    topics are created as :meth:`~flows.settings.Settings.topic_layout` lays them out,
    as every job does. ``config`` defaults to :func:`channels.config.default_config`.
    Returns the tally.

    Raises ConfigError when Redis or Kafka is not configured, or the config
    asks for something the job cannot give; RuntimeError when dead letters or
    feedback cannot be written (offsets of that batch are then not committed).
    """
    require_servers(settings)
    topics = Topics.of(settings)
    ensure_topics(
        settings.kafka_bootstrap, settings.topic_layout(), timeout=settings.kafka_timeout_s
    )
    with contextlib.ExitStack() as stack:
        client = connect(settings.redis_url)
        stack.callback(client.close)
        checks = {"redis": redis_check(client), "kafka": kafka_check(settings.kafka_bootstrap)}
        health = serve_job(metrics_port, checks, stack, stale_s=LIVE_STALE_S)
        router = Router(config or default_config(), _resources(settings, client))
        stack.callback(router.close)
        job = Deliverer(
            router,
            DeliveryLedger(client, settings.prefix, ledger_ttl_ms or settings.delivery_ttl_ms),
            _producer(settings),
            topics,
            installed(),
        )
        consumer = _consumer(settings, group or settings.deliver_group, consumer_config)
        stack.callback(consumer.close)
        watch = _Progress(progress, progress_every, job.tally, health)
        _loop(job, consumer, Limits(idle_exit, max_actions), stop or threading.Event(), watch)
    progress(job.tally.line())
    return job.tally


def _resources(settings: Settings, client: redis.Redis) -> Resources:
    # No stop event for the adapters: a shutdown lets the current send finish its
    # retries instead of dead-lettering it; a second Ctrl-C aborts (nothing committed).
    return Resources(
        redis=client,
        inbox_keys=settings.keys,
        connect=connect,
        kafka_bootstrap=settings.kafka_bootstrap,
        recipient=profile_email(Shoppers(client, settings.keys)),
    )


def _producer(settings: Settings) -> Producer:
    return Producer(settings.producer_config())


def _consumer(settings: Settings, group: str, extra: Mapping[str, Any] | None) -> Consumer:
    return Consumer(settings.consumer_config(group, **CONSUMER_DEFAULTS, **(extra or {})))


def require_servers(settings: Settings) -> None:
    missing = [
        name
        for name, value in (
            ("TETIK_REDIS_URL", settings.redis_url),
            ("TETIK_KAFKA_BOOTSTRAP", settings.kafka_bootstrap),
        )
        if not value
    ]
    if missing:
        raise ConfigError(
            f"set {' and '.join(missing)}: deliver consumes the actions of a running `tetik run` "
            "and keeps its ledger in that Redis, so it needs the same servers, not private ones"
        )


@dataclass
class _Progress:
    """Every turn of the loop: the health's beat; now and then the tally's line and the
    consumer's lag."""

    show: Callable[[str], None]
    every: float
    tally: Tally
    health: Health | None = None
    last: float = field(default_factory=time.monotonic)
    measured: float = 0.0

    def tick(self, job: Deliverer, consumer: Consumer) -> None:
        if self.health is not None:
            self.health.beat()
        now = time.monotonic()
        if now - self.measured >= LAG_EVERY_S:
            self.measured = now
            group_lag(job.metrics, consumer)
        if now - self.last >= self.every:
            self.last = now
            self.show(self.tally.line())


def _loop(
    job: Deliverer, consumer: Consumer, limits: Limits, stop: threading.Event, progress: _Progress
) -> None:
    """Consume, deliver, flush, commit; until stopped, idle or the record limit."""

    def assigned(_consumer: Consumer, _partitions: list[Any]) -> None:
        limits.assigned = True
        limits.last_activity = time.monotonic()

    consumer.subscribe([job.topics.actions], on_assign=assigned)
    while not stop.is_set() and not limits.done():
        consumed = consumer.consume(limits.batch_size(), 0.25)
        records = [m for m in consumed if _usable(m, job.metrics)]
        handled = job.handle_batch(records, stop) if records else []
        if handled:
            job.flush()
            consumer.commit(offsets=_next_offsets(handled), asynchronous=False)
        limits.note(len(handled))
        progress.tick(job, consumer)


def _committable(records: list[Message], unsent: set[int]) -> list[Message]:
    """The records before each partition's first unsent one (``unsent``: their ids)."""
    blocked: set[tuple[str | None, int | None]] = set()
    handled = []
    for message in records:
        where = (message.topic(), message.partition())
        if id(message) in unsent:
            blocked.add(where)
        elif where not in blocked:
            handled.append(message)
    return handled


def _next_offsets(handled: list[Message]) -> list[TopicPartition]:
    """Commit positions: one past the last handled record of each partition."""
    last: dict[tuple[str, int], int] = {}
    for message in handled:
        topic, part, offset = message.topic(), message.partition(), message.offset()
        if topic is not None and part is not None and offset is not None:  # always, once consumed
            last[(topic, part)] = offset
    return [TopicPartition(topic, part, offset + 1) for (topic, part), offset in last.items()]


def _usable(message: Message, metrics: Metrics) -> bool:
    """Records to handle; consumer errors (not per-record problems) are only reported."""
    error = message.error()
    if error is None:
        return True
    if error.code() != KafkaError._PARTITION_EOF:
        metrics.count(ERRORS, system="kafka", kind="consumer")
        say(f"consumer: {error.str()}")
    return False
