"""The Kafka source of tetik's flows: graceful stop, broker faults, offsets and the clock.

Graceful stop: Bytewax turns a Ctrl-C that lands inside a source into a worker
panic. tetik instead catches SIGINT/SIGTERM itself and sets a
:class:`threading.Event`; every partition of a :class:`StoppableKafkaSource`
then ends at its next batch, so the dataflow flushes its sinks and returns
normally. A partition that must stop the engine (see the policy below) calls
the source's ``fail`` with one line (the live flow passes
:meth:`flows.pipeline.breaker.Halt.request`, which ends the sources and makes the job
exit with that line, never a traceback); without ``fail`` it prints the line
and sets the stop event.

Polls never block: Bytewax's partition waited 1 ms per partition per poll, a
third of the live engine's main thread at 7,000 events/s. A poll that found
nothing asks Bytewax to come back :data:`IDLE_POLL` later.

Rules of the source (each partition is read by one consumer, by assignment,
with ``auto.offset.reset=error``: librdkafka never moves an offset silently):

* **Snapshot.** A partition snapshots ``{"offset", "clock", "topic_id"}``:
  the next offset to read, its clock (:meth:`flows.pipeline.watermark.Watermark.reached`,
  restored at the next start) and the topic's id. A bare offset (snapshots
  written before this format) is accepted.
* **Caught up.** A poll reports ``at_end`` only when the consumer stands at
  the high watermark of the latest fetch response, and has stood there for
  :data:`END_SETTLE_S` with nothing new: long enough for another fetch to
  come back. A new consumer knows no high watermark until its first fetch
  response, so an empty first poll (a slow broker) is never taken for caught
  up; and tansu answers a fetch with one part of a backlog and a high
  watermark that lags its log, so standing at that mark once proves nothing
  (found by ``tetik chaos``'s slow-broker scenario: reminders fired ahead of
  purchases already in the broker). Once caught up, a partition following
  live traffic settles for :data:`LIVE_SETTLE_S` (30 ms) only, once its
  consumer has been open :data:`LIVE_AFTER_S` (5 s: a restarted engine reads
  the backlog of its absence in parts); a full batch (a backlog) or a new
  consumer brings the long settle back. With the long
  settle always, a partition with gaps in its traffic held timers up to
  300 ms (the timers' p99 at any load). After the broker was away, a partition
  is not caught up for :data:`BACK_GRACE_S` (10 s) once it answers again:
  producers deliver what they buffered during the outage late, and a
  reminder must not fire ahead of a purchase still in a producer's buffer.
* **Broker away.** A transient consumer error (broker restarting, transport
  errors, all brokers down) never crashes the engine: one line every
  :data:`NOTE_EVERY_S` while it lasts, and the partition keeps polling. It
  stops reading until the broker answers again and the topic's identity has
  been checked (so nothing is read from a topic that came back empty before
  we know it did). A fatal error (``KafkaError.fatal()``) stops the engine
  with one line.
* **Stuck consumer.** A partition that has read nothing for :data:`STALL_S`
  asks the broker for the partition's end (``ListOffsets``, never blocking).
  If the broker holds events past the partition's position and the consumer
  still read none of them, the consumer is stuck: the partition says so in one
  line and reopens it at its position. librdkafka consumers by assignment
  sometimes stop fetching after a broker restart without reporting an error
  (librdkafka issue 5153; found by ``tetik chaos``'s broker-restart scenario:
  one partition of four read nothing more until the run ended). A partition
  whose position is not an offset yet (a start from the beginning) is not
  checked.

Policy for a topic that was recreated or whose offsets are out of range
(never skip silently):

========================================  ==========================================
what the source sees                       what it does
========================================  ==========================================
the topic's id differs from the one in     *recreated*: every event in the new topic
the snapshot, or from the one recorded     is new to the engine, so the partition is
in Redis (``{prefix}:topics``) for a       read from its beginning (one line). No
bare-offset snapshot, or after the         event is skipped and none is read twice.
broker came back
offset beyond the partition's end, same    *truncated* (an unclean leader election):
topic id, for :data:`TRUNCATED_AFTER_S`    the events past the end are gone from the
                                           log and were read already; go on from the
                                           end (one line). Nothing new is skipped.
                                           An end that catches up with the offset in
                                           that time was a high watermark that lagged
                                           (Apache Kafka restores it from a checkpoint
                                           after a restart, and a new leader learns it
                                           late): reading goes on from the offset,
                                           nothing is read twice.
offset beyond the end, topic id unknown    taken as *recreated*: read from the
(broker without topic ids)                 beginning. Events read twice are dropped
                                           by the users' event-id dedup and the action
                                           ledger; skipped ones would be lost.
offset below the partition's start         *deleted by retention*: unread events are
                                           gone. The engine stops with one line saying
                                           how many, unless ``TETIK_RESET_OFFSETS=
                                           earliest``: then it goes on from the
                                           earliest kept event, saying how many it
                                           lost.
the topic does not exist (a broker that    the source re-creates tetik's topics with
came back empty)                           the configured layout, then reads it from
                                           the beginning.
========================================  ==========================================

The topic id comes from ``DescribeTopics`` (tansu 0.6 and Apache Kafka >= 2.8
have one; see :func:`flows.topics.topic_id`). tansu does not answer a fetch
beyond the end with ``OFFSET_OUT_OF_RANGE``; its fetch responses carry the
right high watermark, which is what the *beyond the end* check reads. Its
``ListOffsets`` answer lags the log, so no decision here rests on it except
the out-of-range error path, which only real Kafka takes.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any, Protocol

import redis
from bytewax.connectors.kafka import KafkaSource, KafkaSourceMessage, _list_parts
from bytewax.inputs import StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from engine.errors import TetikError
from flows import logs, report
from flows.kafka.connection import client_config
from flows.kafka.topics import (
    ensure_topics,
    read_end_offset,
    read_topic_id,
    request_end_offset,
    request_topic_id,
)

IDLE_POLL = timedelta(milliseconds=2)
AWAY_POLL = timedelta(milliseconds=100)
# How long a partition must stand at the high watermark, with empty polls, to
# count as caught up: two fetch round trips to a broker 80 ms away plus the
# 20 ms fetch wait. Timers on a quiet partition are this much later, at most.
END_SETTLE_S = 0.3
# Once a partition has been caught up and follows the live traffic, a short settle
# suffices: the long one is for a backlog (tansu's lagging mark). A full batch means
# a backlog again, and so does a new consumer. 30 ms: about one fetch wait.
LIVE_SETTLE_S = 0.03
# A new consumer (a start, a restart after a crash) reads the backlog of the
# time it was away in parts, each answered with a mark that lags the log
# (tansu): standing at one such mark for 30 ms proves nothing. It keeps the
# long settle until it has been open this long (found by ``tetik chaos``'s
# slow-broker scenario: a reminder fired 1.5 s after a restart, ahead of a
# purchase already in the broker).
LIVE_AFTER_S = 5.0
# After the broker comes back, a partition does not count as caught up for this
# long: storefront producers buffered what they sent during the outage and
# deliver it late (librdkafka reconnects with backoff up to 10 s), and a timer
# must not fire ahead of a purchase still in a producer's buffer.
BACK_GRACE_S = 10.0
CHECK_S = 0.5  # how often a partition whose broker is away asks whether it is back
# An end below the position must stay below it this long to count as a truncation: a
# high watermark lags for a moment after a broker restart or a new topic's first writes
# (found by ``tetik chaos``'s broker-restart scenario: 5 rewinds in 40 runs, each
# reading events again at a later clock than the first time).
TRUNCATED_AFTER_S = 5.0
NOTE_EVERY_S = 10.0  # at most one "broker away" line per source this often
STALL_S = 5.0  # a partition that read nothing this long asks the broker for its end

_OUT_OF_RANGE = frozenset({KafkaError._AUTO_OFFSET_RESET, KafkaError.OFFSET_OUT_OF_RANGE})
# librdkafka settings only a consumer reads; given to a producer or an admin client,
# each makes a CONFWARN line at start.
CONSUMER_ONLY = frozenset(
    {
        "fetch.wait.max.ms",
        "fetch.min.bytes",
        "fetch.max.bytes",
        "max.partition.fetch.bytes",
        "group.id",
        "enable.auto.commit",
        "auto.offset.reset",
        "enable.partition.eof",
        "isolation.level",
        "session.timeout.ms",
        "heartbeat.interval.ms",
        "queued.min.messages",
    }
)
_QUIET = logs.KAFKA  # librdkafka's own lines; ours say it in one


class SourceFault(TetikError):
    """The source stopped the engine; the message says what happened and what to do."""


def say(line: str) -> None:
    """One line for humans on stderr (the log, :mod:`flows.report`)."""
    report.warn(line)


class PartitionClock(Protocol):
    """What the source tells the live flow's clock (:class:`flows.pipeline.watermark.Watermark`)."""

    def polled(self, partition: str, count: int, at_end: bool = True) -> None: ...

    def restore(self, partition: str, reached: int) -> None: ...

    def reached(self, partition: str) -> int: ...


class PartitionWatch(Protocol):
    """What the source tells the job's metrics and health (:mod:`flows.metrics.kafka`):
    each poll (the partition's next offset, its consumer) and each consumer error."""

    def polled(self, topic: str, index: int, position: int, consumer: Consumer) -> None: ...

    def error(self, fatal: bool) -> None: ...


@dataclass(frozen=True)
class Resume:
    """Where a partition goes on from: a decoded snapshot."""

    offset: int = OFFSET_BEGINNING
    clock: int = 0
    topic_id: str = ""


def decode_snapshot(state: Any) -> Resume:
    """A snapshot of any format (None, a bare offset, or the current dict) as Resume."""
    if state is None:
        return Resume()
    if isinstance(state, int):
        return Resume(offset=state)
    return Resume(
        offset=int(state.get("offset", OFFSET_BEGINNING)),
        clock=int(state.get("clock", 0)),
        topic_id=str(state.get("topic_id", "")),
    )


@dataclass(frozen=True)
class Verdict:
    """What to do with a partition's offset against the partition's bounds."""

    case: str  # "ok", "recreated", "truncated", "deleted"; "lagged": not truncated after all
    offset: int  # where to read from next


def judge(offset: int, low: int, high: int, same_topic: bool | None) -> Verdict:
    """The policy of the module docstring for ``offset`` in a partition ``[low, high)``.

    ``same_topic`` is True/False when the topic ids were compared, None when unknown.
    """
    if same_topic is False:
        return Verdict("recreated", OFFSET_BEGINNING)
    if offset < 0:
        return Verdict("ok", offset)
    if offset > high:
        if same_topic:
            return Verdict("truncated", high)
        return Verdict("recreated", OFFSET_BEGINNING)
    if offset < low:
        return Verdict("deleted", low)
    return Verdict("ok", offset)


@dataclass
class _Notes:
    """Rate-limited lines shared by a source's partitions."""

    log: Callable[[str], None] = say
    every_s: float = NOTE_EVERY_S
    _last: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, key: str, line: str) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -self.every_s) < self.every_s:
                return
            self._last[key] = now
        self.log(line)


@dataclass(frozen=True)
class SourcePolicy:
    """How a :class:`StoppableKafkaSource` meets faults (see the module rules).

    ``topic_ids``: each topic's id now ("" when unknown), compared with snapshots.
    ``recreated``: topics whose id changed since the last run (from Redis), which
    makes bare-offset snapshots of them start over. ``layout``: the topics to
    re-create when the broker comes back without them. ``reset_earliest``: go on
    from the earliest kept event when retention deleted unread ones.
    """

    topic_ids: Mapping[str, str] = field(default_factory=dict)
    recreated: frozenset[str] = frozenset()
    layout: Mapping[str, int] = field(default_factory=dict)
    reset_earliest: bool = False
    log: Callable[[str], None] = say


class _Partition(StatefulSourcePartition[Any, Any]):
    """One Kafka partition, read by its own consumer (see the module rules)."""

    def __init__(self, spec: _Spec, resume: Resume) -> None:
        self._spec = spec
        self._tp = TopicPartition(spec.topic, spec.index)
        self._next = resume.offset
        self._topic_id = resume.topic_id
        self._eof = False
        self._idle = False
        self._end_since: float | None = None  # when the position reached the mark
        self._end_high = -1  # the mark it reached
        self._live = False  # caught up since the consumer opened, no backlog since
        self._opened = 0.0  # when the current consumer opened (monotonic)
        self._back_at: float | None = None  # when the broker answered again
        self._away_since: float | None = None  # the broker went away, or we doubt the topic
        self._why = ""
        self._end_hint: int | None = None  # the partition's end, when the offset was past it
        self._short_since: float | None = None  # the broker's end was first below the offset
        self._erred = False  # the broker was away since the last consumer opened
        self._checked = 0.0
        self._admin: AdminClient | None = None
        self._pending: Future[Any] | None = None  # an identity check on its way
        self._stall: Future[Any] | None = None  # a stuck-consumer check on its way
        self._stall_at = -1  # the position when it was asked
        self._progress_at = 0.0  # when the consumer last read (or opened, or was checked)
        self._consumer = self._open(self._next)

    # -- Bytewax interface -------------------------------------------------

    def next_batch(self) -> list[Any]:
        if self._spec.stop.is_set() or self._eof:
            raise StopIteration
        if self._away_since is not None:
            self._recheck()
            self._report(0, at_end=False)
            return []
        batch = self._read(self._consumer.consume(self._spec.batch_size, 0))
        if batch:
            self._end_since = None
            self._progress_at = time.monotonic()
            if len(batch) >= self._spec.batch_size:
                self._live = False  # a backlog: settle long again
        elif self._away_since is None:
            self._check_stall()
        at_end = not batch and self._away_since is None and self._at_end()
        self._report(len(batch), at_end)
        return batch

    def next_awake(self) -> datetime | None:
        if self._away_since is not None:
            return datetime.now(UTC) + AWAY_POLL
        return datetime.now(UTC) + IDLE_POLL if self._idle else None

    def snapshot(self) -> Any:
        clock = self._spec.clock.reached(self._spec.name) if self._spec.clock else 0
        return {"offset": self._next, "clock": clock, "topic_id": self._topic_id}

    def close(self) -> None:
        self._consumer.close()

    # -- reading -----------------------------------------------------------

    def _open(self, offset: int) -> Consumer:
        """A fresh consumer at ``offset``: it knows no high watermark before it fetches."""
        consumer = Consumer({**self._spec.config, "error_cb": self._on_error, "logger": _QUIET})
        self._opened = self._progress_at = time.monotonic()
        self._stall = None
        consumer.assign([TopicPartition(self._spec.topic, self._spec.index, offset)])
        return consumer

    def _reopen(self, offset: int, back: bool = True) -> None:
        """A new consumer at ``offset``; ``back``: the broker was away (BACK_GRACE_S)."""
        self._consumer.close()
        self._next = offset
        self._away_since = None
        self._erred = False
        if back:
            self._back_at = time.monotonic()
        self._end_hint = None
        self._live = False
        self._consumer = self._open(offset)

    def _read(self, messages: list[Any]) -> list[Any]:
        batch: list[Any] = []
        for msg in messages:
            error = msg.error()
            if error is None:
                batch.append(_message(msg))
                self._next = msg.offset() + 1
            elif error.code() == KafkaError._PARTITION_EOF:
                self._eof = True
                break
            elif error.code() in _OUT_OF_RANGE:
                self._out_of_range()
                break
            else:
                self._on_error(error)
        return batch

    def _at_end(self) -> bool:
        """The consumer stands at the end of the latest fetch response (module rules)."""
        low, high = self._consumer.get_watermark_offsets(self._tp, cached=True)
        if high < 0:
            return False  # no fetch response yet
        if self._next > high:
            self._doubt(f"offset {self._next} is past the partition's end {high}", high)
            return False
        if (self._next if self._next >= 0 else low) < high:
            self._end_since = None
            return False
        now = time.monotonic()
        if self._back_at is not None and now - self._back_at < BACK_GRACE_S:
            return False  # producers may still deliver what they buffered (BACK_GRACE_S)
        if self._end_since is None or high != self._end_high:
            self._end_since, self._end_high = now, high
        settle = LIVE_SETTLE_S if self._live else END_SETTLE_S
        if now - self._end_since < settle:
            return False
        self._live = now - self._opened >= LIVE_AFTER_S
        return True

    def _report(self, count: int, at_end: bool) -> None:
        self._idle = count == 0
        if self._spec.clock is not None:
            self._spec.clock.polled(self._spec.name, count, at_end)
        if self._spec.watch is not None:
            self._spec.watch.polled(self._spec.topic, self._spec.index, self._next, self._consumer)

    # -- faults ------------------------------------------------------------

    def _on_error(self, error: KafkaError) -> None:
        """librdkafka's error callback, and per-partition errors (see the module rules)."""
        if self._spec.watch is not None:
            self._spec.watch.error(error.fatal())
        if error.fatal():
            self._fail(f"Kafka reported a fatal error ({error.str()}); restart tetik run")
            return
        self._spec.notes.note(
            "away", f"Kafka unreachable ({error.str()}); still polling, resuming when it is back"
        )
        self._erred = True
        self._doubt(f"Kafka was unreachable ({error.name()})", None)

    def _doubt(self, why: str, end: int | None) -> None:
        """Read nothing more until the broker answers and the topic's identity is checked."""
        self._live = False
        if self._away_since is None:
            self._away_since = time.monotonic()
            self._why = why
            self._checked = 0.0
        if end is not None:
            self._end_hint = end

    def _recheck(self) -> None:
        """Is the broker back, and is the topic the one we were reading? (never blocks)"""
        if self._pending is None:
            if time.monotonic() - self._checked < CHECK_S:
                return
            self._checked = time.monotonic()
            self._pending = request_topic_id(self._admin_client(), self._spec.topic, timeout=2.0)
        if not self._pending.done():
            return
        pending, self._pending = self._pending, None
        try:
            current = read_topic_id(pending, timeout=0.1)
        except KafkaException as exc:
            away = time.monotonic() - (self._away_since or 0.0)
            reason = exc.args[0].str() if exc.args else str(exc)
            self._spec.notes.note(
                "away", f"Kafka unreachable for {away:.0f} s ({reason}); still polling"
            )
            return
        if current is None:
            self._recreate_topics()
            return
        self._settle(current)

    def _admin_client(self) -> AdminClient:
        if self._admin is None:
            self._admin = AdminClient(client_config(self._spec.bootstrap))
        return self._admin

    def _check_stall(self) -> None:
        """Reopen a consumer that reads nothing while the broker holds more (module rules;
        never blocks: the answer is read at a later poll)."""
        if self._stall is None:
            if self._next < 0 or time.monotonic() - self._progress_at < STALL_S:
                return
            self._stall_at = self._next
            self._stall = request_end_offset(
                self._admin_client(), self._spec.topic, self._spec.index, timeout=2.0
            )
            return
        if not self._stall.done():
            return
        future, self._stall = self._stall, None
        self._progress_at = time.monotonic()  # the next check is STALL_S from now
        try:
            end = read_end_offset(future, timeout=0.1)
        except KafkaException:
            return  # the broker does not answer: the consumer's own errors say so
        if end <= self._next or self._next != self._stall_at:
            return
        self._spec.notes.log(
            f"partition {self._spec.name}: its consumer read nothing for {STALL_S:g} s "
            f"while the broker holds {end - self._next} more event(s) from offset "
            f"{self._next} (a stuck consumer); reopening it there"
        )
        self._reopen(self._next, back=False)

    def _settle(self, current: str) -> None:
        """Go on reading, from where the policy says (the broker answered with ``current``)."""
        same = None if not (current and self._topic_id) else current == self._topic_id
        high = self._end_hint if self._end_hint is not None else max(self._next, 0)
        verdict = judge(self._next, 0, high, same)
        if verdict.case == "truncated":
            confirmed = self._truncation()
            if confirmed is None:
                return  # undecided: still away, asked again at the next check
            verdict = confirmed
        self._topic_id = current or self._topic_id
        if verdict.case == "lagged":
            if not self._erred:  # only a mark that lagged: the same consumer reads on
                self._away_since, self._end_hint = None, None
                return
            verdict = Verdict("ok", self._next)  # the broker was away: a new consumer
        away = time.monotonic() - (self._away_since or time.monotonic())
        where = f"partition {self._spec.name}"
        if verdict.case == "recreated":
            self._spec.notes.log(
                f"{where}: the topic was recreated ({self._why}); reading the new one from "
                "its beginning"
            )
        elif verdict.case == "truncated":
            self._spec.notes.log(
                f"{where}: the broker's log ends at {verdict.offset}, before offset "
                f"{self._next} already read (truncated); going on from {verdict.offset}"
            )
        else:
            self._spec.notes.note("back", f"Kafka answers again after {away:.1f} s")
        self._reopen(verdict.offset)

    def _truncation(self) -> Verdict | None:
        """Confirm a truncation with the marks of the fetch answers that keep coming while
        the partition reads nothing (module policy; tansu's ``ListOffsets`` lags its log,
        so it proves nothing): "truncated" once the mark has stayed below the offset for
        TRUNCATED_AFTER_S, "lagged" as soon as it reaches the offset, None until then."""
        now = time.monotonic()
        if self._short_since is None:
            self._short_since = now
        _, end = self._consumer.get_watermark_offsets(self._tp, cached=True)
        if end >= self._next:
            self._short_since = None
            return Verdict("lagged", self._next)
        if now - self._short_since < TRUNCATED_AFTER_S:
            return None
        self._short_since = None
        return Verdict("truncated", end if end >= 0 else (self._end_hint or 0))

    def _recreate_topics(self) -> None:
        layout = dict(self._spec.layout)
        if self._spec.topic not in layout:
            self._spec.notes.note(
                "missing", f"topic {self._spec.topic!r} does not exist; waiting for it"
            )
            return
        self._spec.notes.note(
            "missing",
            f"topic {self._spec.topic!r} is gone (a broker that came back empty?); "
            "creating tetik's topics again",
        )
        try:
            ensure_topics(self._spec.bootstrap, layout, timeout=5.0)
        except (TetikError, RuntimeError, TimeoutError, KafkaException) as exc:
            self._spec.notes.note("missing", f"creating the topics failed ({exc}); retrying")

    def _out_of_range(self) -> None:
        """The broker refused our offset (real Kafka): ask for the bounds, apply the policy."""
        try:
            low, high = self._consumer.get_watermark_offsets(self._tp, timeout=5.0, cached=False)
        except KafkaException as exc:
            self._on_error(exc.args[0])
            return
        verdict = judge(self._next, low, high, None if self._next > high else True)
        if verdict.case != "deleted":
            self._doubt(f"offset {self._next} is out of range [{low}, {high})", high)
            return
        lost = low - self._next
        where = f"partition {self._spec.name}"
        if not self._spec.reset_earliest:
            self._fail(
                f"{where}: offset {self._next} was deleted by retention before it was read "
                f"(earliest kept: {low}, {lost} event(s) lost); raise the topic's retention, "
                "then restart with TETIK_RESET_OFFSETS=earliest to go on from the earliest kept"
            )
            return
        self._spec.notes.log(
            f"{where}: offset {self._next} was deleted by retention; {lost} event(s) lost, "
            f"going on from {low} (TETIK_RESET_OFFSETS=earliest)"
        )
        self._reopen(low)

    def _fail(self, line: str) -> None:
        if self._spec.fail is not None:
            self._spec.fail(line)
        else:
            self._spec.notes.log(line)
            self._spec.stop.set()


def _message(msg: Any) -> KafkaSourceMessage[Any, Any]:
    return KafkaSourceMessage(
        key=msg.key(),
        value=msg.value(),
        topic=msg.topic(),
        headers=msg.headers() or [],
        latency=msg.latency(),
        offset=msg.offset(),
        partition=msg.partition(),
        timestamp=msg.timestamp(),
    )


@dataclass(frozen=True)
class _Spec:
    """What every partition of one source shares."""

    config: dict[str, Any]
    bootstrap: str
    topic: str
    index: int
    name: str
    batch_size: int
    stop: threading.Event
    fail: Callable[[str], None] | None
    clock: PartitionClock | None
    notes: _Notes
    layout: Mapping[str, int]
    reset_earliest: bool
    watch: PartitionWatch | None = None


class StoppableKafkaSource(KafkaSource):
    """Bytewax's KafkaSource with tetik's partitions (see the module rules).

    ``clock``, when given, hears each poll (``polled(partition, count, at_end)``,
    ``partition`` as Bytewax names it, ``"{index}-{topic}"``), gives the clock to
    snapshot (``reached``) and gets it back at a restart (``restore``): the live
    flow's watermark. ``policy`` says how faults are met (:class:`SourcePolicy`);
    ``fail(line)`` stops the engine with one line (see the module rules);
    ``watch`` hears every poll and consumer error (:class:`PartitionWatch`).
    """

    def __init__(
        self,
        *args: Any,
        stop: threading.Event,
        fail: Callable[[str], None] | None = None,
        clock: PartitionClock | None = None,
        policy: SourcePolicy | None = None,
        watch: PartitionWatch | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._watch = watch
        self._stop = stop
        self._fail = fail
        self._clock = clock
        self._policy = policy or SourcePolicy()
        self._notes = _Notes(self._policy.log)

    def list_parts(self) -> list[str]:
        """Each Kafka partition, listed by an admin client given no consumer settings
        (Bytewax passes it ``add_config`` whole: librdkafka warned CONFWARN at start)."""
        config = {k: v for k, v in self._add_config.items() if k not in CONSUMER_ONLY}
        admin = AdminClient({**config, "bootstrap.servers": ",".join(self._brokers)})
        return list(_list_parts(admin, self._topics))

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> Any:
        del step_id
        index, topic = for_part.split("-", 1)
        if topic not in self._topics:
            raise SourceFault(f"the snapshot reads topic {topic!r}, not {list(self._topics)}")
        if resume_state is None:
            resume = Resume(self._starting_offset, 0, self._policy.topic_ids.get(topic, ""))
        else:
            resume = self._resume(topic, decode_snapshot(resume_state), for_part)
        if self._clock is not None and resume.clock:
            self._clock.restore(for_part, resume.clock)
        spec = _Spec(
            config=self._config(),
            bootstrap=",".join(self._brokers),
            topic=topic,
            index=int(index),
            name=for_part,
            batch_size=self._batch_size,
            stop=self._stop,
            fail=self._fail,
            clock=self._clock,
            notes=self._notes,
            layout=self._policy.layout,
            reset_earliest=self._policy.reset_earliest,
            watch=self._watch,
        )
        return _Partition(spec, resume)

    def _resume(self, topic: str, resume: Resume, name: str) -> Resume:
        """Apply the *recreated* rule to a snapshot (the others apply while reading)."""
        current = self._policy.topic_ids.get(topic, "")
        if resume.offset < 0:
            return Resume(resume.offset, resume.clock, current)
        changed = bool(resume.topic_id and current and resume.topic_id != current)
        bare = not resume.topic_id and topic in self._policy.recreated
        if changed or bare:
            self._notes.log(
                f"partition {name}: the topic was recreated since the snapshot (offset "
                f"{resume.offset} is of the old one); reading the new one from its beginning"
            )
            return Resume(OFFSET_BEGINNING, resume.clock, current)
        return Resume(resume.offset, resume.clock, current or resume.topic_id)

    def _config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "group.id": "BYTEWAX_IGNORED",  # offsets live in Bytewax snapshots, not a group
            "enable.auto.commit": "false",
            "bootstrap.servers": ",".join(self._brokers),
            "enable.partition.eof": str(not self._tail),
            "auto.offset.reset": "error",  # never move an offset silently: see the policy
        }
        config.update(self._add_config)
        return config


def remember_topic_id(client: redis.Redis, key: str, topic: str, current: str) -> str | None:
    """Record ``topic``'s id in the hash ``key``; return the previous one if it differs.

    An empty ``current`` (a broker without topic ids) records nothing.
    """
    if not current:
        return None
    previous = client.hget(key, topic)
    client.hset(key, topic, current)
    if previous is None:
        return None
    text = previous.decode() if isinstance(previous, bytes) else str(previous)
    return text if text != current else None


def stop_on_signals() -> threading.Event:
    """Set the returned event on the first SIGINT/SIGTERM; a second one aborts."""
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop
