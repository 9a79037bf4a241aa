"""One shard of shoppers: the journeys core over a batch, state and timers in Redis.

A shard is one Bytewax key (:func:`flows.stores.keys.shard_of` of the
identity). Its :class:`ShardLogic` is the only writer of the shard's Redis keys
and holds no shopper for longer than its bounded cache, so worker memory does
not grow with the shoppers who wait.

Rules of this interface:

* **A batch** (``on_batch``): the events of many shoppers. The states the
  cache lacks come in one ``MGET``; each shopper's events run in order
  through :meth:`engine.journeys.Engine.handle` (due timers first, each at its
  due time); then one transaction (:meth:`flows.stores.states.ShardStore.commit`)
  writes the changed states, their next due times, the actions and dead
  letters into the outbox, the input offsets the states now reflect, the
  counters and the journey measures' counts (:mod:`flows.pipeline.measures`);
  then the outbox records are produced without waiting
  (:mod:`flows.stores.emissions`).
* **Offsets**: an event read at an input offset the shard's stored states
  already reflect is skipped (``skipped``). After a crash Bytewax resumes the
  input from its last snapshot, which may be older than Redis: those events
  are read again and skipped, so nothing is applied or emitted twice, and the
  Bytewax snapshot holds offsets only, never shoppers.
* **The cache** holds the bytes of the states the shard last wrote or read
  (``cache_users`` of them, least recently used out), decoded per batch: the
  only copy of a shopper between batches is Redis's, and the worker holds no
  object graph for the garbage collector to walk. A fan-out's shoppers are
  not cached (each is read once, ahead of its slice): they would push out
  the shoppers whose own events go on.
* **Timers**: the shard keeps in memory the head of its timer index as its
  last commit left it (:class:`~flows.stores.states.TimerHead`: the entries
  due within a minute, at most 64; the shard is the index's only writer).
  Once the watermark (:mod:`flows.pipeline.watermark`) has passed the
  earliest, up to ``timer_batch`` due shoppers are taken from the head (or,
  when it cannot tell, read from the index), advanced to the watermark, each
  step at its due time, and written in one transaction.
* **Failures stay with their record**: a shopper whose events raise is redone
  from its stored state one event at a time, and an event that raises becomes
  a dead letter (in the outbox, so it is not lost), as if it never came; a
  shopper whose timer raises is looked at again later (1 s, doubling to 10
  min), counted ``errors.timer``.
* **Identity** (:mod:`flows.pipeline.identity`, SPEC section 7): a
  :class:`~flows.pipeline.identity.LinkRequest` puts a pending link in the
  anonymous id's state and its time in the timer index; when the watermark
  passes it, the link, the hand-off and the deletion of the anonymous id's
  state are one commit. A user's event tagged for an id it has not merged
  holds the user's events until the hand-off (or a conflict) is there; the
  shard polls its waiting users every activation and merges in one commit.
* **The catalog** (SPEC section 10): a product update's
  :class:`~flows.pipeline.decode.Fanout` to a shopper derives that shopper's
  events from its state (:func:`engine.catalog.derive`), each then handled
  like the shopper's own (kept with a pending link or a hold, so the merged
  state decides). The commit that writes a state also writes the shopper's
  interest entries for the products its applied events touched and the
  bought-together counts of its applied purchases
  (:mod:`flows.stores.catalog`), so both agree with the states after a crash.
* **Derived work is sliced**: the derived items of a fan-out (no input
  partition) queue in the shard, and an activation applies the shoppers' own
  events first, then at most :data:`DERIVED_SLICE` queued items, and asks to
  be woken at once while the queue is not empty. So one activation never
  holds the worker for a whole page, and the events behind it in the
  dataflow (each step of Bytewax's graph waits for the activation before it)
  are not delayed by more than a slice; meanwhile (and while this process's
  fan-out stage has inputs to page through) every shard's timer pass (due
  steps, deferred events, confirmations) runs every :data:`SLICING_TIMERS_MS`
  rather than at every wake-up. The queue is in the shard's Bytewax snapshot
  (at most the fan-out's credit window, :mod:`flows.pipeline.derive`), so a
  crash loses none of it; the fan-out's credit counts applied items.
* **Commits run behind the worker**: an activation's commits (its batch, its
  timer pass) go to the process's one committer thread
  (:mod:`flows.pipeline.committer`: staged until the shards step of the turn
  is done, then those waiting together share one round trip; a shard's own
  commits stay in the order submitted), which writes, then produces the
  records (the outbox rule holds: a record is produced only once the commit
  that holds it is in Redis), then reads the next slice's states; the events'
  input partitions pass the watermark only then (a fan-out reads the
  interest entries they wrote). Until a commit lands, this shard reads the
  states it wrote from memory, never from Redis; its next activation (or
  snapshot, end of input, or an in-line commit: a hand-off, the end of a
  bounded run) waits for it to land first, and a shard with a commit running
  asks to be woken at once. So
  the worker never waits for Redis to write, and Redis works while the worker
  runs the rest of the graph. A kill -9 loses a commit not run yet as it
  loses a batch not applied yet: its events (and queued items) come again
  from the last snapshot, which every commit before it had landed in.
* Acknowledgements from Kafka are confirmed (outbox entries removed) in the
  shard's next write, or by a write of their own once the oldest has waited
  ``confirm_ms`` (a timer pass that writes nothing else does not write them
  sooner).
"""

from __future__ import annotations

import functools
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Container, Iterable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
from bytewax.operators import StatefulBatchLogic

from engine.actions import Action
from engine.bought_together import pairs
from engine.catalog import derive
from engine.events import Event
from engine.identity import link
from engine.interest import interest_of, products_of, touched
from engine.journeys import Engine
from engine.state import MAX_HELD, Holding, Linking, UserState, dumps, loads, prune
from flows.clock import Clock, wall_ms
from flows.pipeline import books
from flows.pipeline.committer import Committer
from flows.pipeline.decode import Rejected, Route, Stamped, to_dlq
from flows.pipeline.identity import (
    POLL_MS,
    Handoff,
    LinkRequest,
    delete_handoffs,
    held,
    identity_of,
    pack_handoff,
    read_handoffs,
    read_links,
    unheld,
)
from flows.pipeline.link_book import LinkBook, look_up
from flows.pipeline.measures import count_into, install, sink_of
from flows.pipeline.sweep import PAGE as SWEEP_PAGE
from flows.pipeline.sweep import Sweep, SweepMark, Visiting
from flows.pipeline.sweep import pack as pack_mark
from flows.pipeline.sweep import unpack as unpack_mark
from flows.report import warn
from flows.retry import retrying
from flows.stores.catalog import RedisCatalog, forget_interest, pack_interest
from flows.stores.emissions import Emitter, Record, action_record, pack
from flows.stores.keys import Keys, shard_of
from flows.stores.states import ShardStore, ShardWrite, TimerHead

TIMER_BACKOFF_MS = (1_000, 600_000)  # a failing timer waits 1 s, doubling up to 10 min
EVERYTHING = 2**62  # _release up to here: every deferred event (a link is due, or the end)
RETRY_MS = 10  # a due timer held back by the watermark looks again this much later
HOLD_LOOK_MS = 100  # a holding user's due timer looks again this much later
DERIVED_SLICE = 100  # queued derived items one activation applies (module rules)
SLICING_TIMERS_MS = 20  # while derived items are applied, timer passes are this far apart

Item = Stamped | LinkRequest


@functools.cache
def shared_committer() -> Committer:
    """The process's one committer thread: commits run behind in the order submitted,
    those waiting together in one round trip (:mod:`flows.pipeline.committer`)."""
    return Committer()


@dataclass(frozen=True, slots=True)
class Wake:
    """A nudge that creates (or wakes) a shard's logic: sent to every shard at start."""

    shard: int


@dataclass(frozen=True)
class _Landed:
    """A commit run behind the worker, done: what it wrote, the head of the timer index
    it left, and the states read after it (identity -> bytes, None where there is none)."""

    write: ShardWrite
    head: TimerHead
    states: dict[str, bytes | None]


@dataclass(frozen=True)
class ShardReport:
    """What one activation of a shard did: the actions it emitted and its counts."""

    shard: int
    actions: list[Action] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class ShardConfig:
    """What every shard of a process shares (built once by the dataflow's owner)."""

    runtime: Any  # flows.pipeline.rules_runtime.RulesRuntime (current(), drain_ended())
    watermark: Any  # flows.pipeline.watermark.Watermark (value(), applied())
    emitter: Emitter
    client: Any  # redis.Redis or RedisCluster
    keys: Keys
    ttl_ms: int
    actions_topic: str
    dlq_topic: str
    events_topic: str = ""  # where an anonymous id's late event is forwarded to its user
    clock: Clock = wall_ms
    cache_users: int = 1_000  # per shard
    timer_batch: int = 500
    confirm_ms: int = 20
    on_back: Callable[[], None] | None = None
    sweeps: Sequence[Sweep | Visiting] = ()
    sweep_page: int = SWEEP_PAGE
    # A bounded run (flows.pipeline.bounded): True when the end of the input means every
    # event was read (not a stop); None (live): the end of the input decides nothing.
    input_complete: Callable[[], bool] | None = None
    catalog: RedisCatalog | None = None  # product(), bought_together(): built from client
    credit: Any = None  # flows.pipeline.derive.Credit: derived items applied (the fan-out's pace)
    # Runs a slice's commit behind the worker (module rules); None: every commit in line.
    committer: Executor | None = field(default_factory=lambda: shared_committer())

    def __post_init__(self) -> None:
        if self.catalog is None:
            self.catalog = RedisCatalog(self.client, self.keys)
        if sink_of(self.runtime.engine) is None:
            install(self.runtime.engine)  # journey measurement (flows.pipeline.measures)

    # What the process knows of links (flows.pipeline.link_book), shared with the resolver.
    links: LinkBook = field(default_factory=LinkBook)


Snapshot = int | tuple[int, list[Stamped]]  # the shard, and its queued derived items


class ShardLogic(StatefulBatchLogic[Stamped | LinkRequest | Wake, ShardReport, Snapshot]):
    """One shard inside the live flow (see the module rules)."""

    def __init__(self, config: ShardConfig, resume: Snapshot | None = None) -> None:
        self._c = config
        self._shard = -1
        self._store: ShardStore | None = None
        # The bytes this shard last wrote (or read) per shopper: no object graphs for the
        # garbage collector to walk (a cache of decoded states made its pauses the p99).
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._offsets: dict[str, int] | None = None  # read from Redis at the first activation
        self._next_due: int | None = None
        self._head: TimerHead | None = None  # the timer index as the last commit left it
        self._batch_mark: int | None = None  # the watermark as this batch read it (_defers)
        self._backoff: dict[str, int] = {}
        self._held_until = 0  # a due timer was held back by the watermark until then
        self._recovering = False  # Redis lost its data: drop actions already in the topic
        self._marks: dict[str, SweepMark] = {}
        self._waiting: dict[str, str] = {}  # user -> the anonymous id its held events wait for
        # The catalog (SPEC section 10): per identity, the products whose interest this
        # activation's applied events may have changed, and the purchases to count.
        self._touched: dict[str, set[str]] = {}
        self._bought: dict[str, list[Event]] = {}
        self._moved_interest: dict[str, set[str]] = {}  # merged anon -> its products
        # When the waiting users' links were last looked up (_settle_due): the book's
        # version then, the clock then, and whether users started waiting since.
        self._settled_version = -1
        self._settled_at = 0
        self._new_waiters = False
        self._queued: list[Stamped] = []  # derived items not applied yet (module rules)
        self._timers_at = 0.0  # when (monotonic s) the last timer pass ran
        self._pending: list[Future[_Landed]] = []  # commits running behind, in order
        # The states those commits write (identity -> bytes), newest last: what this
        # shard reads for them until they land (Redis may not have them yet).
        self._unlanded: dict[str, bytes] = {}
        # States read ahead for the next derived slice, each used once (not cached: a
        # fan-out's shoppers do not take the places of shoppers whose events go on).
        self._ahead: dict[str, bytes] = {}
        if isinstance(resume, tuple):
            shard, queued = resume
            self._queued = list(queued)
            self._bind(shard)
        elif resume is not None:
            self._bind(resume)

    @property
    def _shard_store(self) -> ShardStore:
        assert self._store is not None, "bound at the first item"
        return self._store

    def _bind(self, shard: int) -> None:
        """Bytewax's builder does not know the key: the first item (or the snapshot) tells."""
        if self._store is None:
            self._shard = shard
            keys = self._c.keys.shard(shard)
            self._store = ShardStore(self._c.client, keys, self._c.ttl_ms)
            self._c.links.own(shard, self._c.keys.shards)

    # -- Bytewax entry points ---------------------------------------------------------

    def on_batch(
        self, values: list[Stamped | LinkRequest | Wake]
    ) -> tuple[Iterable[ShardReport], bool]:
        items: list[Item] = []
        for v in values:
            if isinstance(v, Stamped) and not v.partition:
                self._queued.append(v)  # derived: applied in slices, after own events
            elif not isinstance(v, Wake):
                items.append(v)
        first = values[0]
        shards = self._c.keys.shards
        self._bind(first.shard if isinstance(first, Wake) else shard_of(identity_of(first), shards))
        return self._activate(items), StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[Iterable[ShardReport], bool]:
        if self._store is None:
            return [], StatefulBatchLogic.RETAIN
        reports = self._activate([])
        if self._c.sweeps:
            reports.append(self._sweeps())
        return reports, StatefulBatchLogic.RETAIN

    def _activate(self, items: list[Item], whole: bool = False) -> list[ShardReport]:
        """Apply ``items`` and a slice of the queued derived items (every one if
        ``whole``); without items (a wake-up), also the due timers; then settle the
        waiting users."""
        self._land()
        taken = len(self._queued) if whole else min(len(self._queued), DERIVED_SLICE)
        derived, self._queued = self._queued[:taken], self._queued[taken:]
        credit = self._c.credit
        try:
            self._start()
            engine = self._c.runtime.current()
            batch = [*items, *derived]
            defer = not whole  # the commits may run behind (module rules)
            reports = [self._apply(engine, batch, defer)] if batch else []
            busy = bool(derived) or (credit is not None and credit.fanning_out)
            if not items and self._timer_pass_due(busy):
                reports.append(self._timers(defer))  # woken (not by events): due timers
            if self._settle_due():
                reports.append(self._settle(engine))
            return reports
        finally:
            self._applied([(v.partition, v.now) for v in items if _read(v)])
            if credit is not None and derived:  # the fan-out's next page may go
                credit.add(len(derived))

    def _applied(self, marks: list[tuple[str, int]]) -> None:
        """The events ``marks`` (partition, clock) no longer hold the watermark back
        (:mod:`flows.pipeline.watermark` rules) once their states are in Redis: at
        once, or when the commit running behind has written them (a fan-out reads the
        interest entries they wrote)."""
        if not marks:
            return
        watermark = self._c.watermark
        if self._pending:
            self._pending[-1].add_done_callback(lambda _: watermark.applied(marks))
        else:
            watermark.applied(marks)

    def _timer_pass_due(self, slicing: bool) -> bool:
        """Whether a wake-up runs the timer pass: always, but while derived items are
        being applied or this process's fan-out stage has inputs to page through (a
        wake-up every activation) at most every :data:`SLICING_TIMERS_MS`: each pass
        that releases deferred events is a commit of its own, and during a fan-out
        those commits took a fifth of the worker."""
        now = time.monotonic()
        if slicing and (now - self._timers_at) * 1000 < SLICING_TIMERS_MS:
            return False
        self._timers_at = now
        return True

    def on_eof(self) -> tuple[Iterable[ShardReport], bool]:
        """The input ended: at the end of a bounded run's input, decide the pending links
        (:mod:`flows.pipeline.bounded`); then wait for what was sent and confirm it."""
        if self._store is None:
            return [], StatefulBatchLogic.RETAIN
        self._land()
        self._start()
        reports: list[ShardReport] = []
        complete = self._c.input_complete is not None and self._c.input_complete()
        if self._queued:  # the input ended: nothing else waits for the worker
            reports.extend(self._activate([], whole=True))
        if complete:
            reports.extend(self._decide_links(self._c.runtime.current()))
        self._confirm_sent()
        if complete:  # the settle step builds this shard's logic from it
            reports.append(ShardReport(self._shard))
        return reports, StatefulBatchLogic.RETAIN

    def settle_waiting(self) -> list[ShardReport]:
        """After every shard decided its links at the end of a bounded run's input: merge
        the waiting users, round after round while a round answers someone (a merged
        user's held events may wait for another anonymous id, decided too by then)."""
        self._land()
        self._start()
        engine = self._c.runtime.current()
        reports: list[ShardReport] = []
        while self._waiting:
            before = dict(self._waiting)
            reports.append(self._settle(engine))
            if self._waiting == before:
                break
        self._confirm_sent()
        return reports

    def _confirm_sent(self) -> None:
        """Wait until Kafka has every record sent, and confirm them (outbox entries removed)."""
        self._land()
        self._c.emitter.flush()
        write = ShardWrite()
        self._collect(write)
        if not write.empty():
            self._commit(write)

    def notify_at(self) -> datetime | None:
        """When to be woken (Bytewax asks after each activation); commits that ran
        behind already are landed here."""
        if self._store is None:
            return None
        now = self._c.clock()
        if self._pending and all(f.done() for f in self._pending):
            self._land()  # landed already: nothing waits
        if self._queued or self._pending:  # the next slice, or the landing
            return datetime.fromtimestamp(now / 1000, UTC)
        wake: list[int] = []
        if self._next_due is not None:
            wake.append(max(self._next_due, self._held_until))
        if self._c.emitter.outstanding(self._shard):
            wake.append(now + self._c.confirm_ms)
        if self._waiting:
            wake.append(now + POLL_MS)
        wake.extend(self._sweep_wakes(now))
        if not wake:
            return None
        return datetime.fromtimestamp(max(min(wake), now) / 1000, UTC)

    def snapshot(self) -> Snapshot:
        """Which shard this is (its shoppers, timers and offsets are all in Redis) and
        the derived items it has not applied yet (a slice's commit lands first)."""
        self._land()
        return (self._shard, list(self._queued)) if self._queued else self._shard

    # -- events -----------------------------------------------------------------------

    def _start(self) -> None:
        catalog = self._c.catalog
        assert catalog is not None
        engine = self._c.runtime.current()
        if engine.catalog is not catalog:  # a new rules version: it reads the same catalog
            engine.use_catalog(catalog)
        catalog.begin()  # a batch sees one version of each product it reads
        if self._offsets is None:
            self._offsets = self._retrying("reading a shard's offsets", self._shard_store.offsets)
            self._next_due = self._retrying("reading a shard's timers", self._shard_store.next_due)
            self._recovering = self._retrying(
                "reading a shard's state", self._shard_store.recovering
            )
            marks = self._retrying("reading a shard's sweeps", self._shard_store.sweep_cursors)
            self._marks = {name: unpack_mark(text) for name, text in marks.items()}
            self._waiting = self._retrying("reading waiting users", self._shard_store.waiting)

    def _apply(self, engine: Engine, events: list[Item], defer: bool = False) -> ShardReport:
        assert self._offsets is not None
        self._batch_mark = None  # the watermark, read when an event first needs it
        write = ShardWrite()
        fresh = self._fresh(events, write)
        by_user: dict[str, list[Item]] = {}
        for item in fresh:
            by_user.setdefault(identity_of(item), []).append(item)
        fanned = {i for i, items in by_user.items() if all(_fanned(item) for item in items)}
        states = self._states(list(by_user), uncached=fanned)
        if engine.reads_products:  # product(): the batch's products in one round trip
            catalog = self._c.catalog
            assert catalog is not None
            pids = [i.event.product_id for i in fresh if isinstance(i, Stamped)]
            self._retrying("reading products", lambda: catalog.prefetch(p for p in pids if p))
        links = self._links_of(by_user, states)
        actions: list[Action] = []
        records: dict[str, Record] = {}
        for identity, items in by_user.items():
            stored = states[identity]
            linked = links.get(identity)
            if stored is None and linked is not None:  # moved to its user: forward
                items = self._linked_away(linked, items, records, write.counts)
                if not items:
                    continue
            if stored is None and all(_fanned(item) for item in items):
                write.counts["catalog.no_state"] += len(items)  # interest outlived the state
                continue
            if stored is None:
                write.new.add(identity)
            state = stored or UserState(key=identity)
            before = self._due(engine, state) if stored is not None else None
            was = books.before(engine, stored)
            mine: list[Action] = []
            counts: Counter[str] = Counter()
            mark = self._mark()
            try:
                data = self._run(engine, state, items, mine, counts)
            except Exception:  # one event's failure must not stop everyone
                mine, counts = [], Counter()
                self._drop(mark)
                self._bought.pop(identity, None)  # counted again as the events are redone
                state = self._isolate(engine, identity, items, mine, counts, records)
                data = self._pruned(engine, state, items[-1].now)
            actions.extend(mine)
            write.counts.update(counts)
            if data is not None:
                write.state(identity, data, self._due(engine, state), before)
                books.note(write, engine, identity, was, state)
                self._note_catalog(write, engine, state)
                if identity in fanned:  # not cached (read from _unlanded until it lands)
                    self._cache.pop(identity, None)
                else:
                    self._remember(identity, data)
                if state.holding is not None and identity not in self._waiting:
                    write.waiting[identity] = state.holding.anon
        return self._finish(write, actions, records, defer)

    def _fresh(self, events: list[Item], write: ShardWrite) -> list[Item]:
        """The events the stored states do not reflect yet; records their offsets."""
        assert self._offsets is not None
        fresh: list[Item] = []
        for item in events:
            if not item.partition:
                fresh.append(item)  # derived: its event id is what dedupes it
                continue
            if item.offset <= self._offsets.get(item.partition, -1):
                write.counts["skipped"] += 1
                continue
            fresh.append(item)
            write.offsets[item.partition] = max(item.offset, write.offsets.get(item.partition, -1))
        return fresh

    def _run(
        self,
        engine: Engine,
        state: UserState,
        items: list[Item],
        actions: list[Action],
        counts: Counter[str],
    ) -> bytes | None:
        """The common path: one shopper's events at once; the new state bytes if it changed."""
        changed = False
        for item in items:
            changed = self._one(engine, state, item, actions, counts) or changed
        return self._pruned(engine, state, items[-1].now) if changed else None

    def _one(
        self,
        engine: Engine,
        state: UserState,
        item: Item,
        actions: list[Action],
        counts: Counter[str],
    ) -> bool:
        """One item for one identity: kept for a hand-over, or handled; True if it changed."""
        if isinstance(item, LinkRequest):
            return _requested(state, item, counts)
        if item.fanout is not None:
            return self._fanned_in(engine, state, item, actions, counts)
        event, route = item.event, item.route
        pending = state.linking
        if pending is not None and event.user_id is None and event.ts >= pending.at:
            if len(pending.held) < MAX_HELD:  # it travels to the user with the hand-off
                pending.held.append(held(item))
                counts["identity.kept"] += 1
                return True
            counts["identity.kept_over"] += 1
        if self._defers(state, item):
            state.deferred.append(held(item))
            counts["identity.deferred"] += 1
            return True
        hold = state.holding
        if hold is not None:
            if len(hold.held) < MAX_HELD:
                hold.held.append(held(item))
                counts["identity.held"] += 1
                return True
            counts["identity.held_over"] += 1  # past the bound: applied now, out of turn
        elif route is not None and route.kind != "conflict" and _unmerged(state, route.anon):
            state.holding = Holding(anon=route.anon, held=[held(item)])
            counts["identity.held"] += 1
            return True
        if route is not None and route.kind == "conflict":
            counts["identity_conflict"] += 1
        outcome, fired, caused = self._handle(engine, state, event, item.now)
        counts[outcome] += 1
        actions.extend(fired)
        actions.extend(_caused(caused, item.ingested))
        return outcome == "applied" or bool(fired)

    def _fanned_in(
        self,
        engine: Engine,
        state: UserState,
        item: Stamped,
        actions: list[Action],
        counts: Counter[str],
    ) -> bool:
        """A product update's fan-out to this identity: kept for the user while a link is
        handed over (the merged state decides), else derived now, after the deferred
        events up to the update's time (the watermark has passed it)."""
        pending, hold = state.linking, state.holding
        if pending is not None and item.event.ts >= pending.at and len(pending.held) < MAX_HELD:
            pending.held.append(held(item))
            counts["catalog.kept"] += 1
            return True
        if hold is not None and len(hold.held) < MAX_HELD:
            hold.held.append(held(item))
            counts["catalog.held"] += 1
            return True
        released = bool(state.deferred) and self._release(
            engine, state, item.event.ts, actions, counts
        )
        return self._fan_in(engine, state, item, actions, counts) or released

    def _fan_in(
        self,
        engine: Engine,
        state: UserState,
        item: Stamped,
        actions: list[Action],
        counts: Counter[str],
    ) -> bool:
        """A product update fanned out to this shopper: the events it derives for them
        (:func:`engine.catalog.derive`), each handled like the shopper's own."""
        assert item.fanout is not None
        changed = False
        for event in derive(item.event, item.fanout.record, state, engine.windows):
            counts[f"catalog.{event.type}"] += 1
            derived = Stamped(event, item.now, item.ingested)
            changed = self._one(engine, state, derived, actions, counts) or changed
        return changed

    def _handle(
        self, engine: Engine, state: UserState, event: Event, now: int
    ) -> tuple[str, list[Action], list[Action]]:
        """:meth:`engine.journeys.Engine.handle`, remembering what the catalog needs."""
        cart = list(state.cart) if event.type == "purchase" and event.items is None else ()
        result = engine.handle(state, event, now)
        if result[0] == "applied":
            products = touched(event, cart)
            if products:
                self._touched.setdefault(state.key, set()).update(products)
            if event.type == "purchase" and event.items:
                self._bought.setdefault(state.key, []).append(event)
        return result

    def _note_catalog(self, write: ShardWrite, engine: Engine, state: UserState) -> None:
        """Queue the shopper's interest entries and purchases with its state's write."""
        key = state.key
        products = self._touched.pop(key, None)
        if products:
            for pid in products:
                found = interest_of(state, pid, state.last_seen, engine.windows)
                packed = b"" if found is None else pack_interest(found, not state.identified)
                write.interest[(pid, key)] = packed
        for event in self._bought.pop(key, ()):
            write.together.update(pairs(event))

    def _defers(self, state: UserState, item: Stamped) -> bool:
        """Whether an event waits for the watermark before it is applied (module rules):
        one shopper's events can come from two partitions (a device's, keyed by the
        device, and its user's), which are read independently, so an anonymous id's
        event, a device's event routed to its user and any event of a user with linked
        devices is applied once every partition has passed it, in event time."""
        event, route = item.event, item.route
        if not item.partition or state.holding is not None:
            return False
        if route is not None:
            if route.kind != "via" or _unmerged(state, route.anon):
                return False  # a link, a conflict, or a merge to wait for: held instead
        elif event.user_id is not None and not state.merged:
            return False  # a user's own events, one partition: in order as read
        if state.deferred:
            return len(state.deferred) < MAX_HELD  # after one that waits: in turn
        if self._batch_mark is None:  # once per batch: the lock and the exchange cost
            self._batch_mark = self._c.watermark.value()
        return event.ts > self._batch_mark

    def _release(
        self,
        engine: Engine,
        state: UserState,
        until: int,
        actions: list[Action],
        counts: Counter[str],
    ) -> bool:
        """Apply the deferred events the watermark passed (``until``), in their order;
        those at or after a pending link's time travel with the hand-off instead."""
        ready = [kept for kept in state.deferred if kept.now <= until]
        if not ready:
            return False
        state.deferred = [kept for kept in state.deferred if kept.now > until]
        items = sorted(((unheld(kept), kept) for kept in ready), key=lambda pair: pair[0].event.ts)
        for item, kept in items:
            pending = state.linking
            if pending is not None and item.event.ts >= pending.at:
                pending.held.append(kept)
                counts["identity.kept"] += 1
                continue
            outcome, fired, caused = self._handle(engine, state, item.event, kept.now)
            counts[outcome] += 1
            actions.extend(fired)
            actions.extend(_caused(caused, kept.ingested))
        return True

    @staticmethod
    def _due(engine: Engine, state: UserState) -> int | None:
        """When the shard must look at ``state`` next: a step, a pending link's time, or
        the clock of its first deferred event."""
        due = engine.next_due(state)
        if state.linking is not None:
            due = state.linking.at if due is None else min(due, state.linking.at)
        if state.deferred:
            first = min(kept.now for kept in state.deferred)
            due = first if due is None else min(due, first)
        return due

    def _links_of(
        self, by_user: dict[str, list[Item]], states: dict[str, UserState | None]
    ) -> dict[str, str]:
        """The links of this shard's anonymous ids that have no state but events here."""
        anons = [
            identity
            for identity, items in by_user.items()
            if states[identity] is None and any(_anonymous(item) for item in items)
        ]
        if not anons:
            return {}
        found = self._look_up_links(anons)
        return {anon: user for anon, user in found.items() if user is not None}

    def _look_up_links(self, anons: Iterable[str]) -> dict[str, str | None]:
        """Anonymous id -> its user (None: not linked): the process's link book, and
        Redis for what the book does not answer (:mod:`flows.pipeline.link_book`)."""
        client, keys = self._c.client, self._c.keys

        def read(ids: list[str]) -> dict[str, str | None]:
            found: dict[str, str | None] = self._retrying(
                "reading links", lambda: read_links(client, keys, ids)
            )
            return found

        return look_up(self._c.links, anons, read)

    def _linked_away(
        self, user: str, items: list[Item], records: dict[str, Record], counts: Counter[str]
    ) -> list[Item]:
        """An anonymous id already moved to ``user``: its own events are forwarded to
        the events topic keyed by the user, link requests dropped; the rest stays."""
        rest: list[Item] = []
        topic = self._c.events_topic
        for item in items:
            if isinstance(item, LinkRequest):
                counts["identity.link_known"] += 1
            elif item.event.user_id is None and item.message is not None and topic:
                value = item.message.value
                records[f"fwd:{item.partition}:{item.offset}"] = Record(topic, user.encode(), value)
                counts["identity.forwarded"] += 1
            else:
                rest.append(item)
        return rest

    @staticmethod
    def _pruned(engine: Engine, state: UserState, now: int) -> bytes:
        prune(state, now, engine.windows)
        return dumps(state)

    def _isolate(
        self,
        engine: Engine,
        identity: str,
        items: list[Item],
        actions: list[Action],
        counts: Counter[str],
        records: dict[str, Record],
    ) -> UserState:
        """Redo a shopper's events from its stored state, one at a time (see the rules)."""
        state = self._states([identity])[identity] or UserState(key=identity)
        for item in items:
            before = dumps(state)
            mine: list[Action] = []
            done: Counter[str] = Counter()
            mark = self._mark()
            try:
                self._one(engine, state, item, mine, done)
                dumps(state)
            except Exception as exc:  # see the module rules
                state = loads(before)
                self._drop(mark)
                counts["failed"] += 1
                letter = _dead_letter(item, exc, self._c.dlq_topic)
                if letter is not None:
                    records[f"dead:{item.partition}:{item.offset}"] = letter
                continue
            counts.update(done)
            actions.extend(mine)
        return state

    # -- timers -----------------------------------------------------------------------

    def _timers(self, defer: bool = False) -> ShardReport:
        """Fire the steps due by the watermark (and confirm acknowledgements); ``defer``:
        the commit may run behind (module rules)."""
        write = ShardWrite()
        actions: list[Action] = []
        now = self._c.clock()
        due = self._next_due
        if due is not None and due <= now:
            until = min(now, self._c.watermark.value())
            if due > until:
                self._held_until = now + RETRY_MS
            else:
                self._fire(self._c.runtime.current(), until, now, write, actions)
        self._measured(write, ())
        if not actions and write.empty() and not self._acks_due():
            return ShardReport(self._shard)  # nothing to write: acknowledgements can wait
        return self._finish(write, actions, {}, defer)

    def _acks_due(self) -> bool:
        """Whether acknowledgements need a write of their own: the oldest came back
        ``confirm_ms`` ago (until then, the shard's next write takes them)."""
        since = self._c.emitter.acked_since(self._shard)
        return since is not None and (time.monotonic() - since) * 1000 >= self._c.confirm_ms

    def _fire(
        self, engine: Engine, until: int, now: int, write: ShardWrite, actions: list[Action]
    ) -> None:
        head, self._head = self._head, None  # it goes stale with this pass's commit
        known = None if head is None else head.due(until)
        if known is None:  # unknown since the start, or more due than it holds
            identities = self._retrying(
                "reading due timers", lambda: self._shard_store.due(until, self._c.timer_batch)
            )
        else:
            identities = known[: self._c.timer_batch]
        states = self._states(identities)
        for identity in identities:
            state = states[identity]
            if state is None:  # expired or deleted: nothing left to run
                write.forgotten.append(identity)
                continue
            if state.holding is not None:  # its timers fire in turn with its held events
                write.looks[identity] = now + HOLD_LOOK_MS
                continue
            was = books.before(engine, state)
            mark = self._mark()
            try:
                if state.deferred:
                    self._release(engine, state, until, actions, write.counts)
                pending = state.linking
                if pending is not None and pending.at <= until:  # the link is due: hand over
                    # every deferred event goes: before the link applied, after it with it
                    self._release(engine, state, EVERYTHING, actions, write.counts)
                    actions.extend(engine.advance(state, pending.at))
                    self._hand_off(identity, state, pending, write)
                    continue
                fired = engine.advance(state, until)
                data = dumps(state)
            except Exception as exc:  # a broken step must not stop everyone
                self._drop(mark)
                self._cache.pop(identity, None)
                write.looks[identity] = now + self._timer_failed(identity, exc)
                write.counts["errors.timer"] += 1
                continue
            self._backoff.pop(identity, None)
            actions.extend(fired)
            write.state(identity, data, self._due(engine, state), before=until)  # it was indexed
            books.note(write, engine, identity, was, state)
            self._note_catalog(write, engine, state)
            self._remember(identity, data)
        if len(identities) == self._c.timer_batch:
            self._held_until = 0  # more are due: look again at once

    # -- sweeps -----------------------------------------------------------------------

    def _sweep_wakes(self, now: int) -> list[int]:
        """When each sweep wants to run next: now while a run is going on."""
        wakes: list[int] = []
        for sweep in self._c.sweeps:
            mark = self._marks.get(sweep.name)
            if mark is not None and not mark.done:
                wakes.append(now)
                continue
            start = sweep.next_run(None if mark is None else mark.run, now)
            if start is not None:
                wakes.append(start)
        return wakes

    def _sweep_due(self, sweep: Sweep | Visiting, now: int) -> bool:
        """Whether ``sweep`` is running, or its next run starts at or before ``now``."""
        mark = self._marks.get(sweep.name)
        if mark is not None and not mark.done:
            return True
        start = sweep.next_run(None if mark is None else mark.run, now)
        return start is not None and start <= now

    def _sweeps(self) -> ShardReport:
        """One page of every sweep that is due or running (see flows.pipeline.sweep);
        nothing at all (not even the watermark read) while none is."""
        now = self._c.clock()
        if not any(self._sweep_due(sweep, now) for sweep in self._c.sweeps):
            return ShardReport(self._shard)
        until = min(now, self._c.watermark.value())
        write = ShardWrite()
        actions: list[Action] = []
        engine = self._c.runtime.current()
        for sweep in self._c.sweeps:
            mark = self._marks.get(sweep.name)
            if mark is None or mark.done:
                start = sweep.next_run(None if mark is None else mark.run, now)
                if start is None or start > until:
                    continue
                mark = SweepMark(start)
            self._marks[sweep.name] = self._page(sweep, mark, engine, until, write, actions)
            write.sweep[sweep.name] = pack_mark(self._marks[sweep.name])
        return self._finish(write, actions, {})

    def _page(
        self,
        sweep: Sweep | Visiting,
        mark: SweepMark,
        engine: Engine,
        until: int,
        write: ShardWrite,
        actions: list[Action],
    ) -> SweepMark:
        store = self._shard_store
        page = self._c.sweep_page
        identities = self._retrying(
            "reading known shoppers", lambda: store.shoppers_after(mark.cursor, page)
        )
        states = self._states(identities)
        written = {identity for identity, _, _ in write.states}
        visit = getattr(sweep, "visit", None)  # a Visiting sweep (flows.pipeline.sweep)
        for identity in identities:
            state = states[identity]
            if state is None:
                write.forgotten.append(identity)
                continue
            if identity in written or state.holding is not None or state.deferred:
                continue  # its timers and instants run when its events do
            before = self._due(engine, state)
            was = books.before(engine, state)
            if visit is not None:
                visited = visit(engine, state, mark.run, until)
                write.counts[f"sweep.{sweep.name}"] += 1
                if visited is None:
                    continue  # nothing changed: a quiet base costs reads only
                fired, caused = visited, list[Action]()
                full: bool = getattr(sweep, "full", False)
            else:
                event = sweep.event(identity, mark.run, until)  # type: ignore[union-attr]
                if event is None:
                    continue
                outcome, fired, caused = engine.handle(state, event, until)
                write.counts[f"sweep.{sweep.name}"] += 1
                if not (outcome == "applied" or fired or caused):
                    continue
                full = False
            actions.extend(fired)
            actions.extend(caused)
            data = dumps(state)
            write.state(identity, data, self._due(engine, state), before)
            books.note(write, engine, identity, was, state, full=full)
            self._remember(identity, data)
        cursor = identities[-1] if identities else mark.cursor
        return SweepMark(mark.run, cursor, len(identities) < page)

    # -- identity: the hand-over of an anonymous id to its user ------------------------

    def _decide_links(self, engine: Engine) -> list[ShardReport]:
        """The input's end: every event of this shard was applied or kept, so each pending
        link is due as if the watermark had passed it (timers up to its time, then the
        hand-off), a page of the timer index per commit."""
        store = self._shard_store
        scheduled = self._retrying("reading the timer index", store.scheduled)
        page = self._c.timer_batch
        reports: list[ShardReport] = []
        for start in range(0, len(scheduled), page):
            identities = scheduled[start : start + page]
            states = self._states(identities)
            write = ShardWrite()
            actions: list[Action] = []
            for identity in identities:
                state = states[identity]
                if state is None or (state.linking is None and not state.deferred):
                    continue
                due = self._due(engine, state)
                before = dumps(state)
                mark = self._mark()
                try:  # as the watermark would: every event is in, never past the wall clock
                    if state.deferred:
                        self._release(engine, state, EVERYTHING, actions, write.counts)
                    pending = state.linking
                    if pending is not None:
                        actions.extend(engine.advance(state, min(pending.at, self._c.clock())))
                except Exception as exc:  # the link must still be made: without those steps
                    state = _restore(state, before)
                    self._drop(mark)
                    write.counts["errors.timer"] += 1
                    _report_once(f"a timer of {identity!r} failed ({type(exc).__name__}: {exc})")
                pending = state.linking
                if pending is not None:
                    self._hand_off(identity, state, pending, write)
                else:
                    data = dumps(state)
                    write.state(identity, data, self._due(engine, state), due)
                    self._note_catalog(write, engine, state)
                    self._remember(identity, data)
            if write.moved or write.states:
                reports.append(self._finish(write, actions, {}))
        return reports

    def _hand_off(self, anon: str, state: UserState, pending: Linking, write: ShardWrite) -> None:
        """The link is due: link, hand-off and deletion go in this commit (module rules)."""
        state.linking = None
        # Its entries stay (a fan-out reaches the user through them) until the user's
        # shard has written the user's own (flows.pipeline.catalog_fanout).
        self._note_catalog(write, self._c.runtime.current(), state)
        record = Handoff(user=pending.user, at=pending.at, state=dumps(state), held=pending.held)
        write.moved[anon] = (pending.user, pack_handoff(record))
        write.counts["identity.linked"] += 1
        self._cache.pop(anon, None)

    def _settle_due(self) -> bool:
        """Whether waiting users' links may have changed since they were last looked up:
        users started waiting, a shard of this process committed links, or
        :data:`POLL_MS` passed (a link committed by another process)."""
        if not self._waiting:
            return False
        return (
            self._new_waiters
            or self._settled_version != self._c.links.version
            or self._c.clock() - self._settled_at >= POLL_MS
        )

    def _settle(self, engine: Engine) -> ShardReport:
        """Look for the hand-offs (or conflicts) waiting users wait for; merge in one commit."""
        client, keys = self._c.client, self._c.keys
        waiting = dict(self._waiting)
        self._settled_version, self._settled_at = self._c.links.version, self._c.clock()
        self._new_waiters = False
        links = self._look_up_links(waiting.values())
        answered = {user: anon for user, anon in waiting.items() if links.get(anon) is not None}
        if not answered:
            return ShardReport(self._shard)
        mine = [anon for user, anon in answered.items() if links[anon] == user]
        handoffs = self._retrying("reading hand-offs", lambda: read_handoffs(client, keys, mine))
        states = self._states(list(answered))
        write = ShardWrite()
        actions: list[Action] = []
        merged: list[str] = []
        for user, anon in answered.items():
            state = states[user]
            if state is None or state.holding is None or state.holding.anon != anon:
                write.waited.add(user)  # merged or given up before a crash: nothing waits
                continue
            handoff = handoffs.get(anon)
            if handoff is not None and handoff.user == user and links[anon] == user:
                merged.append(anon)
            else:
                handoff = None
            data = self._resume(engine, state, links[anon] or "", handoff, actions, write.counts)
            write.state(user, data, self._due(engine, state), before=0)  # it may be indexed
            self._note_catalog(write, engine, state)
            self._remember(user, data)
            if state.holding is not None:  # a held event asks for another merge
                write.waiting[user] = state.holding.anon
            else:
                write.waited.add(user)
        report = self._finish(write, actions, {})
        try:  # best effort: a hand-off left over expires, and merges nothing twice
            delete_handoffs(client, keys, merged)
            for anon in merged:  # the user's entries are written: the anonymous id's go
                forget_interest(client, keys, anon, self._moved_interest.pop(anon, ()))
        except Exception as exc:
            _report_once(f"a hand-off was not deleted ({type(exc).__name__}: {exc})")
        self._moved_interest.clear()
        return report

    def _resume(
        self,
        engine: Engine,
        state: UserState,
        linked: str,
        handoff: Handoff | None,
        actions: list[Action],
        counts: Counter[str],
    ) -> bytes:
        """A hold answered: merge (with a hand-off), then the held events in order."""
        hold = state.holding
        assert hold is not None
        state.holding = None
        items = [unheld(kept) for kept in hold.held]
        if handoff is not None:
            first = items[0]  # the event that asked for the merge
            anon_state = loads(handoff.state)
            merged = products_of(anon_state, anon_state.last_seen)
            self._touched.setdefault(state.key, set()).update(merged)  # its interest moves
            self._moved_interest[hold.anon] = merged
            joined = link(engine, state, anon_state, hold.anon, first.now)
            actions.extend(joined.fired)
            counts["identity.merged"] += int(joined.merge.merged)
            later = items[1:] + [unheld(kept) for kept in handoff.held]
            items = [first, *sorted(later, key=lambda item: item.event.ts)]
        else:
            conflict = linked != state.key
            counts["identity.handoff_missing" if not conflict else "identity.hold_conflict"] += 1
            items = [_untagged(item, hold.anon, conflict) for item in items]
        for item in items:
            before = dumps(state)
            mark = self._mark()
            try:
                self._one(engine, state, item, actions, counts)
            except Exception as exc:  # a held event that raises is left out, as live does
                state = _restore(state, before)
                self._drop(mark)
                counts["failed"] += 1
                _report_once(f"a held event of {state.key!r} failed ({type(exc).__name__}: {exc})")
        return self._pruned(engine, state, max(item.now for item in items))

    def _timer_failed(self, identity: str, exc: Exception) -> int:
        low, high = TIMER_BACKOFF_MS
        wait = min(high, max(low, self._backoff.get(identity, 0) * 2))
        self._backoff[identity] = wait
        if len(self._backoff) > 10_000:
            self._backoff.pop(next(iter(self._backoff)))
        _report_once(
            f"a timer of user {identity!r} failed ({type(exc).__name__}: {exc}); "
            f"retrying in {wait / 1000:g} s (counted as errors.timer)"
        )
        return wait

    # -- the write --------------------------------------------------------------------

    def _finish(
        self,
        write: ShardWrite,
        actions: list[Action],
        records: dict[str, Record],
        defer: bool = False,
    ) -> ShardReport:
        """Commit the batch, then produce its records; the report for the flow's output.
        ``defer``: the commit and the records run on the committer thread, and the
        commit lands later (module rules)."""
        books.forget(write, self._c.runtime.engine)
        topic = self._c.actions_topic
        if self._recovering and actions:
            actions = self._not_yet_emitted(actions, write)
        for action in actions:
            write.counts[f"actions.{action.status}"] += 1
            if action.reason is not None:  # e.g. actions.suppressed.template_error
                write.counts[f"actions.{action.status}.{action.reason}"] += 1
            records[action.action_id] = action_record(action, topic)
        write.outbox = {rid: pack(r) for rid, r in records.items()}
        self._measured(write, actions)
        write.counts["actions.emitted"] += len(actions)
        write.counts.update({f"ended.{k}": v for k, v in self._c.runtime.drain_ended().items()})
        self._collect(write)
        if write.empty():
            return ShardReport(self._shard)
        write.counts["batches"] += 1
        committer = self._c.committer
        # A hand-off commits in line: the anonymous id's next event reads its link.
        if defer and committer is not None and not self._recovering and not write.moved:
            upcoming = {identity_of(item) for item in self._queued[:DERIVED_SLICE]}
            missing = [i for i in upcoming if i not in self._cache and i not in self._unlanded]
            missing = [i for i in missing if i not in self._ahead]
            self._unlanded.update((identity, data) for identity, data, _ in write.states)
            self._pending.append(self._behind(committer, write, records, missing))
        else:
            self._commit(write)
            self._c.emitter.send(self._shard, records)
        counts = {k: v for k, v in write.counts.items() if v}
        return ShardReport(self._shard, actions, counts)

    def _measured(self, write: ShardWrite, actions: Iterable[Action]) -> None:
        """Count the batch's actions and the engine's measures into the commit."""
        sink = sink_of(self._c.runtime.engine)
        count_into(write.measures, actions, sink.take() if sink is not None else ())

    def _mark(self) -> int:
        sink = sink_of(self._c.runtime.engine)
        return 0 if sink is None else sink.mark()

    def _drop(self, mark: int) -> None:
        """Forget the measures of work that failed since ``mark`` (module rules)."""
        sink = sink_of(self._c.runtime.engine)
        if sink is not None:
            sink.drop(mark)

    def _not_yet_emitted(self, actions: list[Action], write: ShardWrite) -> list[Action]:
        store = self._shard_store
        ids = [a.action_id for a in actions]
        sent = self._retrying("reading sent actions", lambda: store.already_emitted(ids))
        write.counts["actions.already_sent"] += len(sent)
        return [a for a in actions if a.action_id not in sent]

    def _collect(self, write: ShardWrite) -> None:
        confirmed, acked = self._c.emitter.collect(self._shard)
        write.confirmed, write.acked = confirmed, acked

    def _behind(
        self, committer: Executor, write: ShardWrite, records: dict[str, Record], missing: list[str]
    ) -> Future[_Landed]:
        """Hand the commit to the committer thread (module rules)."""
        if isinstance(committer, Committer):  # may share its round trip with other shards'
            return committer.commit(
                self._shard_store,
                write,
                clock=self._c.clock,
                retry=self._retrying,
                then=lambda head: self._landed(write, head, records, missing),
                staged=True,  # flushed after the shards step, or when this shard waits
            )
        return committer.submit(self._store_and_read, write, records, missing)

    def _store_and_read(
        self, write: ShardWrite, records: dict[str, Record], missing: list[str]
    ) -> _Landed:
        """On the committer thread: the commit, then :meth:`_landed`."""
        return self._landed(write, self._write(write), records, missing)

    def _landed(
        self, write: ShardWrite, head: TimerHead, records: dict[str, Record], missing: list[str]
    ) -> _Landed:
        """On the committer thread, once the commit is in Redis: its records produced,
        then the states of the next slice's shoppers the cache lacks (``missing``).
        Touches nothing of the logic's own (the emitter is thread-safe)."""
        self._c.emitter.send(self._shard, records)
        store = self._shard_store
        found = self._retrying("reading shoppers' states", lambda: store.read(missing))
        return _Landed(write, head, dict(zip(missing, found, strict=True)))

    def _land(self) -> None:
        """Wait for the commits running behind, in order, then do what follows each:
        its bookkeeping, and the states read after it (unless a later commit wrote them)."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        committer = self._c.committer
        if isinstance(committer, Committer):
            committer.flush_for(pending)  # a commit still staged would never land
        unlanded, self._unlanded = self._unlanded, {}
        for future in pending:
            landed = future.result()
            self._committed(landed.write, landed.head)
            for identity, raw in landed.states.items():
                if raw is not None and identity not in self._cache and identity not in unlanded:
                    self._ahead[identity] = raw
        while len(self._ahead) > 2 * DERIVED_SLICE:  # each is used by the next slice:
            del self._ahead[next(iter(self._ahead))]  # bounded all the same

    def _commit(self, write: ShardWrite) -> None:
        self._land()  # in the order of the commits before it
        self._committed(write, self._write(write))

    def _write(self, write: ShardWrite) -> TimerHead:
        """The commit itself (one script call, retried); the head of the timer index."""
        now = self._c.clock()
        store = self._shard_store
        head: TimerHead = self._retrying(
            "storing states and their actions", lambda: store.commit(write, now)
        )
        return head

    def _committed(self, write: ShardWrite, head: TimerHead) -> None:
        self._head, self._next_due = head, head.first
        if self._offsets is not None:
            self._offsets.update(write.offsets)
        if write.moved:  # the book answers these links from now on (its staleness rule)
            self._c.links.linked((anon, user) for anon, (user, _) in write.moved.items())
        for user in write.waited:
            self._waiting.pop(user, None)
        self._waiting.update(write.waiting)
        self._new_waiters = self._new_waiters or bool(write.waiting)

    # -- states -----------------------------------------------------------------------

    def _states(
        self, identities: Sequence[str], uncached: Container[str] = ()
    ) -> dict[str, UserState | None]:
        """The states of ``identities``: those in memory (written and not landed, cached,
        read ahead), the rest in one ``MGET`` (cached, but for those in ``uncached``)."""
        found: dict[str, UserState | None] = {}
        missing: list[str] = []
        for identity in identities:
            ahead = self._ahead.pop(identity, None)  # used once, wherever the state comes from
            cached = self._unlanded.get(identity) or self._cache.get(identity) or ahead
            if cached is None:
                missing.append(identity)
            else:
                found[identity] = loads(cached)
        if missing:
            store = self._shard_store
            data = self._retrying("reading shoppers' states", lambda: store.read(missing))
            for identity, raw in zip(missing, data, strict=True):
                found[identity] = None if raw is None else loads(raw)
                if raw is not None and identity not in uncached:
                    self._remember(identity, raw)
        return found

    def _remember(self, identity: str, data: bytes) -> None:
        self._cache[identity] = data
        self._cache.move_to_end(identity)
        while len(self._cache) > self._c.cache_users:
            self._cache.popitem(last=False)

    def _retrying(self, what: str, call: Callable[[], Any]) -> Any:
        return retrying(what, call, on_back=self._c.on_back)


def _caused(actions: list[Action], ingested: int | None) -> list[Action]:
    if ingested is None:
        return actions
    return [msgspec.structs.replace(a, ingested_at=ingested) for a in actions]


def _requested(state: UserState, request: LinkRequest, counts: Counter[str]) -> bool:
    """A link request for this anonymous id: the earliest in event time is the pending one."""
    pending = state.linking
    if pending is not None and (pending.at, pending.user) <= (request.ts, request.user):
        counts["identity.link_pending"] += 1
        return False
    kept = [] if pending is None else pending.held
    state.linking = Linking(user=request.user, at=request.ts, held=kept)
    counts["identity.link_requested"] += 1
    return True


def _unmerged(state: UserState, anon: str) -> bool:
    return anon != state.key and anon not in state.merged


def _read(item: Item) -> bool:
    """An event read from an input partition (not a link request, not derived)."""
    return isinstance(item, Stamped) and bool(item.partition)


def _fanned(item: Item) -> bool:
    return isinstance(item, Stamped) and item.fanout is not None


def _anonymous(item: Item) -> bool:
    """A link request, or an event with only an anonymous id."""
    return isinstance(item, LinkRequest) or (item.fanout is None and item.event.user_id is None)


def _untagged(item: Stamped, anon: str, conflict: bool) -> Stamped:
    """A held event whose merge will not come: a conflict, or no tag for ``anon``."""
    route = item.route
    if route is None or route.anon != anon:
        return item
    tag = Route("conflict", anon) if conflict and route.kind == "link" else None
    return Stamped(item.event, item.now, item.ingested, item.message, item.partition, tag)


def _restore(state: UserState, data: bytes) -> UserState:
    """``state`` as it was (``data``), in place: the caller keeps its reference."""
    old = loads(data)
    for name in state.__struct_fields__:
        setattr(state, name, getattr(old, name))
    state.__dict__.clear()
    return state


def _dead_letter(item: Item, exc: Exception, topic: str) -> Record | None:
    """The dead letter of an event whose processing raised (None for a derived event)."""
    if isinstance(item, LinkRequest) or item.message is None:
        return None
    letter = to_dlq(Rejected(item.message, f"processing failed: {exc}"[:1000], type(exc).__name__))
    return Record(topic, letter.key, letter.value, list(letter.headers))


_reported: dict[str, float] = {}


def _report_once(line: str, every_s: float = 10.0) -> None:
    """A line on stderr, at most once per ``every_s`` seconds for the same kind of line."""
    kind = line.split("(", 1)[-1][:60]
    now = time.monotonic()
    if now - _reported.get(kind, -every_s) >= every_s:
        _reported[kind] = now
        warn(f"run: {line}")
