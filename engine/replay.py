"""Backtest: run compiled rules over a past event log on a virtual clock (SPEC section 5).

Rules of this interface:

* The clock is virtual: it moves to each event's ``ts`` (never backwards: an
  event older than the clock is applied at the clock) and, before an event
  is applied, the user's timers due at or before that time fire, each at its
  due time. Users are independent, so running each user's timers lazily, at
  their next event, gives the same actions as one global timer queue.
* After the last event the clock stops there, unless ``until`` (events after
  it are not applied, timers up to it fire) or ``drain`` (every pending timer
  fires). Segment recheck and broadcast instants (:mod:`engine.segments`,
  :mod:`engine.broadcasts`) run for every user up to where the clock stops:
  ``until``, else the last event, even with ``drain``.
* A bad line is reported through ``on_error(line_number, reason)`` and
  skipped; nothing else stops the run. A bad line is one that does not
  decode, or whose ``ts`` is more than a day after ``received`` (the moment
  the backtest runs, unless given: live, it is the time the message reached
  Kafka; see :func:`engine.events.check_not_future`), or that is stale: older
  than its type's ``max_age`` at the virtual clock it would be applied at
  (the latest ``ts`` read so far, up to ``until``), as the live decode step
  dead-letters it (:func:`engine.retention.check_not_stale`).
* An event whose processing raises (a bug, never expected) is left out as
  if it never came, as the live engine dead-letters it: the run starts again
  without it, and :attr:`ReplayStats.failed` lists it with the exception.
* Identity (SPEC section 7, :mod:`engine.identity`): the links live in
  memory for the run. Each event is resolved to its identity key; at a link
  event the anonymous id's state (its due timers fired first) merges into the
  user's before the event is handled, and the anonymous id's later events go
  to the user. :class:`ReplayStats` counts the merges (``merged``), the
  ``identity_conflict`` events and the enrollments ended (``ended``, e.g.
  ``merged``).
* The result is every action, in SPEC order (``at``, user, ``action_id``).
  When ``engine.measures`` is a list it ends up holding the run's measures
  (:mod:`engine.experiments`), in the order the engine emitted them.
* The catalog (SPEC section 10, :mod:`engine.catalog`) lives in memory for
  the run and is what ``product()`` and ``bought_together()`` read. A
  ``product_update`` changes it at its position in the log; when it lowers
  the price or restocks, each shopper the interest index lists
  (:mod:`engine.interest`, kept after every event when the log has updates)
  gets the derived events :func:`engine.catalog.derive` decides, applied at
  once at the update's clock, shoppers in sorted key order
  (:attr:`ReplayStats.derived` counts them). Every applied purchase counts
  toward ``bought_together``. Live, a timer fires at its due time and reads
  the catalog as it is then; so, when the rules read products and the log
  has updates, every user's timers due by a ``product_update`` fire before
  it (:attr:`engine.journeys.Engine.reads_products`), and when they read
  ``bought_together`` (``reads_together``), a step scheduled at time T that
  replay runs later (at the shopper's next event) reads the counts of the
  purchases before T (:meth:`engine.catalog.Catalog.at`).
* When a condition calls ``rfm()``, the base's RFM boundaries are computed
  over every user in memory at each refresh instant ``k * rfm_refresh``
  before an event at or after it is handled, and once more after the last
  event for the timers that fire later (:class:`engine.rfm_base.RfmRefresher`);
  a timer fired lazily reads those in force at its due time.
* Memory: a user's state is pruned with :func:`engine.state.prune`, the live
  engine's retention, at most once per :data:`PRUNE_EVERY` (30 days) of virtual time
  (after one of the user's events). Reads ignore what retention drops, pruned
  or not (:mod:`engine.retention`), so this changes no action.
  The cyclic garbage collector is paused while a run lasts and resumed after
  (it stays off if it was off): a run's states are millions of tracked
  objects that every full collection walks, for next to no cyclic garbage
  (``tetik bench report``'s million events: 636 objects collected, the same
  peak memory; 22 % of the run's time at Python's default thresholds, 4 % at
  the ones the ``tetik`` command sets, ``cli.main.tune_gc``).
"""

from __future__ import annotations

import gc
import heapq
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import repeat
from typing import TYPE_CHECKING

from engine.actions import Action
from engine.bought_together import pairs
from engine.catalog import Catalog, change_of, derive
from engine.errors import InvalidEvent
from engine.events import PRODUCT_UPDATE, Event, check_not_future, decode_event
from engine.identity import link, resolve
from engine.interest import InterestIndex, touched
from engine.journeys import Engine, replay_order
from engine.partition import Part
from engine.retention import check_not_stale
from engine.state import UserState, prune
from engine.windows import WindowConfig

if TYPE_CHECKING:
    from engine.rfm_base import RfmRefresher

FOREVER = 2**62
PRUNE_EVERY = 30 * 86_400_000  # virtual ms between two prunes of one user's state
PROGRESS_EVERY = 16_384  # events between two calls of replay_events' on_progress


@dataclass
class ReplayStats:
    """What a replay did, for its summary line."""

    lines: int = 0
    events: int = 0
    invalid: int = 0
    users: int = 0
    clock: int = 0  # where the virtual clock stopped (the last event, or until)
    actions: dict[str, int] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)  # "event_id: ExceptionClass: message"
    merged: int = 0  # anonymous ids merged into a user at their link event
    identity_conflicts: int = 0  # events naming another user for an already linked anon_id
    ended: dict[str, int] = field(default_factory=dict)  # enrollments ended, by reason
    derived: int = 0  # price_drop / back_in_stock events derived from product updates


class _Poison(Exception):
    """An event whose processing raised; the run restarts without it."""

    def __init__(self, event: Event, error: Exception) -> None:
        super().__init__(event.event_id)
        self.event = event
        self.error = error


def replay(
    engine: Engine,
    lines: Iterable[bytes],
    *,
    until: int | None = None,
    drain: bool = False,
    on_error: Callable[[int, str], None] = lambda _n, _r: None,
    stats: ReplayStats | None = None,
    received: int | None = None,
    states: dict[str, UserState] | None = None,
) -> list[Action]:
    """Run ``engine`` over JSONL ``lines``; return every action in SPEC order.

    ``states``, when given, receives every user's state at the end (``tetik segments``).
    """
    stats = stats if stats is not None else ReplayStats()
    reference = received if received is not None else time.time_ns() // 1_000_000
    events = decode_log(lines, on_error, stats, reference, engine.windows, until)
    return replay_events(engine, events, until=until, drain=drain, stats=stats, states=states)


def decode_log(
    lines: Iterable[bytes],
    on_error: Callable[[int, str], None],
    stats: ReplayStats,
    received: int,
    windows: WindowConfig,
    until: int | None,
) -> Iterator[Event]:
    """The valid events of a JSONL log; bad lines go to ``on_error``."""
    clock = 0  # the virtual clock each event is applied at, as _run moves it
    for number, line in enumerate(lines, start=1):
        stats.lines += 1
        if not line.strip():
            continue
        try:
            event = decode_event(line)
            check_not_future(event, received)
            check_not_stale(event, max(clock, event.ts), windows)
        except InvalidEvent as exc:
            stats.invalid += 1
            on_error(number, exc.reason)
            continue
        if until is None or event.ts <= until:
            clock = max(clock, event.ts)
        yield event


def replay_events(
    engine: Engine,
    events: Iterable[Event],
    *,
    until: int | None = None,
    drain: bool = False,
    stats: ReplayStats | None = None,
    states: dict[str, UserState] | None = None,
    part: Part | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> list[Action]:
    """Run ``engine`` over decoded events on the virtual clock; actions in SPEC order.

    ``part``: ``events`` are one part of a longer log (:mod:`engine.partition`),
    each applied at the whole log's clock, which stops where the whole log's
    stops. ``on_progress(events_so_far)`` is called every
    :data:`PROGRESS_EVERY` events.
    """
    stats = stats if stats is not None else ReplayStats()
    with paused_collector():
        log = events if isinstance(events, Sequence) else list(events)
        return _until_no_poison(engine, log, until, drain, stats, states, part, on_progress)


@contextmanager
def paused_collector() -> Iterator[None]:
    """The cyclic garbage collector off for a run, back on after (module rules, Memory)."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def _until_no_poison(
    engine: Engine,
    log: Sequence[Event],
    until: int | None,
    drain: bool,
    stats: ReplayStats,
    states: dict[str, UserState] | None,
    part: Part | None,
    on_progress: Callable[[int], None] | None,
) -> list[Action]:
    """Runs of ``log``, each without the poison events found so far, until one ends."""
    skipped: set[int] = set()
    while True:
        run = ReplayStats(stats.lines, 0, stats.invalid)
        if states is not None:
            states.clear()  # a restart without a poison event begins again from nothing
        if engine.measures is not None:
            del engine.measures[:]  # so do the experiments' measures (engine.experiments)
        try:
            actions = _run(engine, log, skipped, until, drain, run, states, part, on_progress)
        except _Poison as poison:
            skipped.add(id(poison.event))
            error = poison.error
            stats.failed.append(f"{poison.event.event_id}: {type(error).__name__}: {error}")
            continue
        stats.events, stats.users, stats.actions = run.events, run.users, run.actions
        stats.clock = run.clock
        stats.merged, stats.identity_conflicts = run.merged, run.identity_conflicts
        stats.ended, stats.derived = run.ended, run.derived
        return actions


def _rfm_refresher(engine: Engine) -> RfmRefresher | None:
    """Replay's RFM refreshes, when the rules call ``rfm()`` (numpy is loaded only then)."""
    if not engine.runs_rfm:
        return None
    from engine.rfm_base import RfmRefresher

    return RfmRefresher(engine)


def _run(
    engine: Engine,
    events: Sequence[Event],
    skipped: set[int],
    until: int | None,
    drain: bool,
    stats: ReplayStats,
    keep: dict[str, UserState] | None = None,
    part: Part | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> list[Action]:
    states: dict[str, UserState] = {} if keep is None else keep
    links: dict[str, str] = {}  # anon_id -> user_id, permanent
    ended = Counter(engine.ended)
    pruned: dict[str, int] = {}  # user -> virtual time of the last prune
    actions: list[Action] = []
    clock = 0
    rfm = _rfm_refresher(engine)
    updates = any(e.type == PRODUCT_UPDATE for e in events)
    shop = _Shop(engine, updates)
    clocks = part.clocks if part is not None else repeat(None)
    for event, at in zip(events, clocks, strict=False):  # clocks: repeat(None) or as long
        if (until is not None and event.ts > until) or (skipped and id(event) in skipped):
            continue
        clock = max(clock, event.ts) if at is None else at
        stats.events += 1
        if on_progress is not None and not stats.events % PROGRESS_EVERY:
            on_progress(stats.events)
        if rfm is not None:
            rfm.before(clock)
        try:
            if event.type == PRODUCT_UPDATE:
                if shop.due is not None:
                    actions.extend(shop.fire_due(states, clock))
                for derived in shop.fan_out(event, states):
                    state, _ = _one(engine, states, links, derived, clock, actions, stats, shop)
                    stats.derived += 1
                    if rfm is not None:
                        rfm.after(state)
                continue
            state, merged = _one(engine, states, links, event, clock, actions, stats, shop)
        except Exception as exc:  # a bug; live dead-letters the event, replay leaves it out
            raise _Poison(event, exc) from exc
        if rfm is not None:
            rfm.after(state)
            if merged is not None:
                rfm.base.update(merged, None)  # the anonymous id is part of the user now
        key = state.key
        if key not in pruned:
            pruned[key] = clock
        elif clock - pruned[key] >= PRUNE_EVERY:
            pruned[key] = clock
            prune(state, clock, engine.windows)
    if part is not None:
        clock = max(clock, part.last)  # where the whole log's clock stops
    end = FOREVER if drain else (until if until is not None else clock)
    # Recheck and broadcast instants run up to the clock's end, never to FOREVER.
    horizon = until if until is not None else clock
    stats.clock = horizon
    if rfm is not None:
        rfm.before(end)
    for state in states.values():
        try:
            actions.extend(engine.advance(state, end, instants_until=horizon))
        except Exception as exc:  # a bug: live reports it and retries later; nothing fires
            stats.failed.append(f"timers of {state.key}: {type(exc).__name__}: {exc}")
    stats.users = len(states)
    stats.ended = {reason: n for reason, n in (engine.ended - ended).items() if n}
    for action in actions:
        stats.actions[action.status] = stats.actions.get(action.status, 0) + 1
    return replay_order(actions)


def _one(
    engine: Engine,
    states: dict[str, UserState],
    links: dict[str, str],
    event: Event,
    clock: int,
    actions: list[Action],
    stats: ReplayStats,
    shop: _Shop,
) -> tuple[UserState, str | None]:
    """Handle one event for its identity, merging an anonymous id at its link; the
    user's state, and the anonymous id merged into it (None: none)."""
    resolution = resolve(event, links)
    key = resolution.key
    state = states.get(key)
    if state is None:
        state = states[key] = UserState(key=key)
    stats.identity_conflicts += int(resolution.conflict)
    anon = resolution.link
    if anon is not None:
        links[anon] = key
        linked = link(engine, state, states.pop(anon, None), anon, clock)
        actions.extend(linked.fired)
        stats.merged += linked.merge.merged
        shop.merged(anon, state, clock)
    event = resolution.event
    cart_before = list(state.cart) if event.type == "purchase" and event.items is None else ()
    outcome, fired, caused = engine.handle(state, event, clock)
    actions.extend(fired)
    actions.extend(caused)
    if outcome == "applied":
        shop.applied(state, event, cart_before, clock)
    shop.timer(state)
    return state, anon


class _Shop:
    """Replay's catalog, interest index and bought-together counts (SPEC section 10)."""

    def __init__(self, engine: Engine, updates: bool) -> None:
        self.engine = engine
        self.catalog = Catalog(history=engine.reads_together)
        engine.use_catalog(self.catalog)
        self.index = InterestIndex() if updates else None
        # (due, user) of every user's next step, when timers are ordered: an update
        # changes what the rules read (module rules), so before it, due timers fire.
        ordered = updates and engine.reads_products
        self.due: list[tuple[int, str]] | None = [] if ordered else None
        self.pushed: dict[str, int] = {}  # the due time last pushed per user
        # Users handled since the last firing: their next due times are pushed only
        # when timers fire next (once per user, not once per event).
        self.dirty: set[str] = set()

    def timer(self, state: UserState) -> None:
        """Note that ``state`` was handled: its next due time may have changed."""
        if self.due is not None and (state.enrollments or self.engine.timed):
            self.dirty.add(state.key)  # no step and no instant: nothing can fall due

    def _push(self, state: UserState) -> None:
        assert self.due is not None
        due = self.engine.next_due(state)
        if due is not None and self.pushed.get(state.key) != due:
            self.pushed[state.key] = due
            heapq.heappush(self.due, (due, state.key))

    def fire_due(self, states: dict[str, UserState], clock: int) -> list[Action]:
        """Every user's steps due at or before ``clock``, each at its due time."""
        fired: list[Action] = []
        assert self.due is not None
        for key in self.dirty:
            state = states.get(key)
            if state is not None:  # None: an anonymous id merged into its user since
                self._push(state)
        self.dirty.clear()
        while self.due and self.due[0][0] <= clock:
            due, key = heapq.heappop(self.due)
            if self.pushed.get(key) == due:
                del self.pushed[key]
            state = states.get(key)
            if state is None or self.engine.next_due(state) != due:
                continue  # stale: that step ran, and the user's next one was pushed
            fired.extend(self.engine.advance(state, clock))
            self._push(state)
        return fired

    def applied(self, state: UserState, event: Event, cart_before: Iterable[str], now: int) -> None:
        if event.type == "purchase" and event.items:
            self.catalog.together.record(pairs(event), now)
        if self.index is not None:
            products = touched(event, cart_before)
            if products:
                self.index.refresh(state, products, now, self.engine.windows)

    def merged(self, anon: str, state: UserState, now: int) -> None:
        if self.index is not None:
            self.index.merge(anon, state, now, self.engine.windows)

    def fan_out(self, update: Event, states: dict[str, UserState]) -> Iterator[Event]:
        """Apply ``update`` to the catalog; the events it derives, shopper by shopper."""
        record = self.catalog.update(update)
        if record is None or self.index is None or not change_of(record):
            return
        for key in self.index.shoppers(update.product_id or "", update.ts):
            state = states.get(key)
            if state is None:
                continue
            yield from derive(update, record, state, self.engine.windows)
