"""The journey runtime: ``(state, event or timer, now) -> actions`` (SPEC section 3).

Rules of this interface:

* :meth:`Engine.on_event` first fires the user's timers due at or before
  ``now`` (each at its due time), then applies the event to the state
  windows, then checks exits of the user's active enrollments, then
  triggers, then re-evaluates the watched segments the event can change
  (:mod:`engine.segments`), then enters the journeys of those segment
  changes (``trigger: {segment: S}``), in file order. A duplicate or stale
  event changes nothing and emits nothing.
* :meth:`Engine.advance` fires the timers due at or before ``until``, in due
  order, each at its due time, and, in time order with them (timers first at
  the same millisecond), the segment recheck and broadcast instants in (the
  user's clock, ``until``] (:mod:`engine.broadcasts`); ``UserState.clock``
  then moves to ``until``. :meth:`Engine.next_due` says when to call it for
  timers and broadcast instants (with ``instants=True``, also for recheck
  instants).
* Steps run at once until a ``wait`` (or a quiet-hours deferral); a wait
  counts from the moment the step before it completed.
* A send whose template is over its rendering budget or output cap
  (:func:`engine.rules.templates.render_message`) is ``suppressed`` with
  reason ``template_error``, like ``no_consent`` and ``capped``: it does not
  count against caps, the journey goes on, and nothing else is affected.
* Each enrollment runs every step path at most once, so an action id (a hash
  of identity, journey, enrollment and path) is emitted at most once. The
  identity is the key the enrollment started under: ``Enrollment.origin``
  when it moved from an anonymous id to a user (:mod:`engine.identity`).
* Conditions read the state through the engine's ``windows`` (retention and
  the rules' time zone for calendar months, set here from ``rules.timezone``).
* Experiments (:mod:`engine.experiments`): held-out entrants' sends are
  ``suppressed`` with reason ``holdout`` (after quiet hours, before consent and
  caps, not counted by caps); a ``split`` step continues with the shopper's
  arm; actions carry ``variant``. Goals are checked right after the event is
  applied; :attr:`Engine.measures`, when set to a list, receives the
  ``entered``/``assigned``/``converted`` measures. ``send: {expr: EXPR}``
  tries EXPR's channel (when it is one) then the fallbacks.
* The state is the only memory: save it with ``engine.state.dumps`` after any
  call and resume with ``loads``; the results are the same.
* Rules versions (hot loading): :meth:`Engine.successor` builds the engine of
  a new version that keeps the old ones as ``retired``. New entries follow the
  new version; an enrollment in flight keeps running on the version it
  entered with (its steps, exits, policies and templates). An enrollment whose
  journey the new version no longer has ends at its next touch, counted in
  ``ended["journey_removed"]``; one whose version is not retained continues
  on the current version if its next step still exists there, else ends as
  ``version_unavailable``.
* RFM (SPEC section 9): :attr:`Engine.rfm` is the base's boundaries by
  refresh instant (:class:`~engine.rfm.RfmBook`), None until someone computes
  them (replay: :mod:`engine.rfm_base`); :meth:`Engine.use_rfm` sets it for
  every retained version. :attr:`Engine.uses_rfm` says whether any condition
  calls ``rfm()`` (the live engine keeps the boundaries fresh then, also for
  exports of segments no journey watches); :attr:`Engine.runs_rfm` whether
  one that runs with the journeys does (a journey's, a watched or broadcast
  segment's, or any segment's when one of those calls ``in_segment``): replay
  computes boundaries at each refresh instant only then, so that nobody
  computes boundaries that nothing reads.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from engine.actions import Action, action_id
from engine.broadcasts import Broadcasts
from engine.catalog import CatalogReader
from engine.events import CHANNELS, Event
from engine.experiments import (
    HOLDOUT,
    Measure,
    MeasureKind,
    arm_of,
    attributed,
    held_out,
    next_local,
    remember,
)
from engine.index import TriggerIndex
from engine.policies import capped, first_allowed, quiet_until, record_send, user_zone
from engine.retention import kept_cart
from engine.rfm import RfmBook
from engine.rules.context import Context
from engine.rules.model import (
    Branch,
    Condition,
    ExitStep,
    Goal,
    Journey,
    Rules,
    Send,
    Split,
    Step,
    Wait,
)
from engine.rules.templates import product_vars, render_message, template_names
from engine.segments import Change, SegmentWatch, latest_event, user_clock, watched_names
from engine.state import (
    Enrollment,
    Entered,
    GoalEntry,
    UserState,
    apply,
    ensure_rollups,
    lines_count,
    lines_total,
)
from engine.windows import DEFAULT_CONFIG, WindowConfig, with_timezone

MAX_ENTRY_HISTORY = 2000  # (journey, key) pairs remembered per user for re-entry rules
_LOOKAHEAD = 3650 * 86_400_000  # next_due(instants=True) looks this far ahead (10 years)


@dataclass(frozen=True, slots=True)
class Program:
    """A journey's steps flattened by path, with what runs after each one."""

    journey: Journey
    steps: dict[str, Step]
    after: dict[str, str | None]
    first: str | None


def _flatten(steps: tuple[Step, ...], then: str | None, program: Program) -> str | None:
    """Register ``steps`` (continuing with ``then``); return the first path."""
    following = then
    for step in reversed(steps):
        program.steps[step.path] = step
        program.after[step.path] = following
        if isinstance(step, Branch):
            _flatten(step.then, following, program)
            _flatten(step.otherwise, following, program)
        elif isinstance(step, Split):
            for arm in step.arms:
                _flatten(arm.steps, following, program)
        following = step.path
    return following


def compile_program(journey: Journey) -> Program:
    """The path table of one journey."""
    program = Program(journey, {}, {}, None)
    first = _flatten(journey.steps, None, program)
    return Program(journey, program.steps, program.after, first)


def _branch_target(program: Program, branch: Branch, taken: bool) -> str | None:
    steps = branch.then if taken else branch.otherwise
    return steps[0].path if steps else program.after[branch.path]


class Engine:
    """Compiled rules plus the indexes that keep per-event cost independent of size."""

    def __init__(
        self,
        rules: Rules,
        windows: WindowConfig = DEFAULT_CONFIG,
        retired: Mapping[str, Engine] | None = None,
        activated_at: int | None = None,
    ) -> None:
        self.rules = rules
        self.windows = with_timezone(windows, rules.timezone)
        self.version = rules.source_hash[:12]
        self.retired = {v: e for v, e in (retired or {}).items() if v != self.version}
        self.ended: Counter[str] = Counter()
        # Measurement events (engine.experiments) go here when a caller sets a list;
        # None: none are kept (the state and the actions are the same either way).
        self.measures: list[Measure] | None = None
        self.goals: dict[str, Goal] = {j.id: j.goal for j in rules.journeys if j.goal}
        # Whose sent actions the state remembers for engagement (engine.experiments):
        # every journey's when a condition calls engaged_in, else the experiments'.
        self.remember_all = any("engaged_in" in cond.calls for cond in conditions(rules))
        self.remembered = frozenset(j.id for j in rules.journeys if _experiment(j))
        self.programs = {j.id: compile_program(j) for j in rules.journeys}
        by_type: dict[str, list[tuple[int, Journey]]] = {}
        self.exits: dict[str, set[str]] = {}
        for position, journey in enumerate(rules.journeys):
            if journey.trigger.event:
                by_type.setdefault(journey.trigger.event, []).append((position, journey))
            for rule in journey.exits:
                self.exits.setdefault(rule.event, set()).add(journey.id)
        self.triggers = {kind: TriggerIndex(pairs) for kind, pairs in by_type.items()}
        self.exit_types: set[str] = set(self.exits)
        for old in self.retired.values():
            self.exit_types |= old.exit_types
        self.activated_at = activated_at  # live: when this version took over (None: replay)
        self.rfm: RfmBook | None = None
        self.catalog: CatalogReader | None = None  # product(), bought_together(): SPEC 10
        # What the rules read of the catalog: products (product()), or the
        # bought-together counts. Replay fires timers before an update that changes
        # products; a scheduled step reads the counts as they stood at its time
        # (CatalogReader.at).
        self.reads_products: bool = _reads(rules, "product") or any(
            old.reads_products for old in self.retired.values()
        )
        self.reads_together: bool = _reads(rules, "bought_together") or any(
            old.reads_together for old in self.retired.values()
        )
        # (template, channel) of the messages whose templates read the catalog's variables
        self.catalog_messages = frozenset(
            (name, channel)
            for name, channels in rules.templates.items()
            for channel, fields in channels.items()
            if _reads_catalog(fields)
        )
        self.uses_rfm: bool = any("rfm" in cond.calls for cond in conditions(rules)) or any(
            old.uses_rfm for old in self.retired.values()
        )
        self.runs_rfm: bool = any("rfm" in cond.calls for cond in running(rules)) or any(
            old.runs_rfm for old in self.retired.values()
        )
        self._segments_and_broadcasts(activated_at)

    def _segments_and_broadcasts(self, activated_at: int | None) -> None:
        """Watched segments, segment-triggered journeys and broadcasts (SPEC section 9)."""
        rules = self.rules
        self.segment_journeys = tuple(
            j
            for j in rules.journeys
            if j.trigger.segment is not None and j.trigger.schedule is None
        )
        self.segment_triggers: dict[Change, tuple[Journey, ...]] = {}
        for journey in self.segment_journeys:  # file order
            change = _change_of(journey)
            self.segment_triggers[change] = (*self.segment_triggers.get(change, ()), journey)
        names = watched_names(rules)
        self.watch = SegmentWatch(rules, names, self.windows) if names else None
        if self.watch is not None:
            self.watch.windows = self.windows
        if self.watch is not None:
            for old in self.retired.values():
                if old.watch is not None:
                    self.watch.remember(old.watch)
        broadcasts = Broadcasts(rules, activated_at)
        self.broadcasts = broadcasts if broadcasts.journeys else None
        # Without broadcasts, the watch alone says cheaply when advance has no instant.
        self._watch_idle = (
            self.watch.idle if self.watch is not None and self.broadcasts is None else None
        )
        # Whether advance has instants to run besides timers (recheck, broadcast).
        self.timed = self.broadcasts is not None or (
            self.watch is not None and bool(self.watch.timed)
        )

    def successor(self, rules: Rules, activated_at: int | None = None) -> Engine:
        """The engine of a new rules version; in-flight enrollments stay on theirs.

        ``activated_at`` (live: the moment the version takes over) keeps a
        broadcast whose instant is already past from being sent late.
        """
        retired = {**self.retired, self.version: self}
        engine = Engine(rules, self.windows, retired, activated_at)
        engine.use_rfm(self.rfm)
        engine.use_catalog(self.catalog)
        engine.measures = self.measures
        return engine

    def use_catalog(self, catalog: CatalogReader | None) -> None:
        """Read ``product()`` and ``bought_together()`` from ``catalog``, here and in
        every retained version."""
        self.catalog = catalog
        for old in self.retired.values():
            old.catalog = catalog

    def use_rfm(self, book: RfmBook | None) -> None:
        """Read ``rfm()`` from ``book`` here and in every retained version."""
        self.rfm = book
        if self.watch is not None:
            self.watch.rfm = book
        for old in self.retired.values():
            old.rfm = book
            if old.watch is not None:
                old.watch.rfm = book

    # -- entry points -------------------------------------------------------------

    def on_event(self, state: UserState, event: Event, now: int) -> list[Action]:
        """Fire due timers, apply the event, check exits, then triggers."""
        _, fired, caused = self.handle(state, event, now)
        return fired + caused

    def handle(
        self, state: UserState, event: Event, now: int
    ) -> tuple[str, list[Action], list[Action]]:
        """:meth:`on_event` in parts: what ``apply`` made of the event, the actions
        the user's due timers fired, and the actions the event itself caused."""
        if self.retired and state.enrollments:
            self._retire(state)
        watch = self.watch
        if watch is not None:
            if state.segment_defs != watch.fingerprint:
                watch.prepare(state)
        elif state.segment_defs:
            _forget_segments(state)
        idle = self._watch_idle
        if state.enrollments or (self.timed and (idle is None or not idle(state, now))):
            fired = self.advance(state, now)
        else:
            fired = []
            if self.timed:
                state.clock = max(state.clock, now)  # what advance would have done
        actions: list[Action] = []
        outcome = apply(state, event, now, self.windows)
        if outcome != "applied":
            return outcome, fired, actions
        if state.goals:
            self._check_goals(state, event, now)
        if self.measures is not None and event.type == "engagement":
            self._engagement(state, event, now)
        if state.enrollments and event.type in self.exit_types:
            self._check_exits(state, event, now)
        index = self.triggers.get(event.type)
        candidates = index.candidates(event) if index is not None else ()
        ctx = None
        if candidates:
            ctx = self._context(state, now, event)
            for journey in candidates:
                self._maybe_enter(state, journey, event, ctx, actions)
        if watch is not None:
            changes = watch.after_event(state, event, now, ctx)
            if changes:
                self._segment_entries(state, changes, event, now, actions, ctx)
        return outcome, fired, actions

    def advance(
        self, state: UserState, until: int, *, instants_until: int | None = None
    ) -> list[Action]:
        """Run every step due at or before ``until``, each at its due time, and, in
        time order with them, the recheck and broadcast instants in (the user's
        clock, ``until``] (or ``instants_until`` when earlier: ``--drain``)."""
        actions: list[Action] = []
        if not state.rollups and state.windows:
            ensure_rollups(state, self.windows)  # a state from before rollups: history first
        if not self.timed:
            return self._fire_timers(state, until, actions)
        if self.watch is not None and state.segment_defs != self.watch.fingerprint:
            self.watch.prepare(state)
        horizon = until if instants_until is None else min(until, instants_until)
        idle = self._watch_idle
        # A user not seen yet has no instants before their first event.
        while state.events and (idle is None or not idle(state, horizon)):
            found = self._next_instant(state, horizon)
            if found is None:
                break
            instant, recheck = found
            due = _next(state)
            if due is not None and due[0] <= instant:
                self._fire_timers(state, instant, actions)  # timers first at the same ms
            kept = self._read_at(instant)
            try:
                self._at_instant(state, instant, recheck, actions)
            finally:
                if kept is not None:
                    self.catalog = kept
        state.clock = max(state.clock, horizon)
        return self._fire_timers(state, until, actions)

    def _fire_timers(self, state: UserState, until: int, actions: list[Action]) -> list[Action]:
        """Run every enrollment step due at or before ``until``, each at its due time."""
        while True:
            due = _next(state)
            if due is None or due[0] > until:
                return actions
            when, slot = due
            enrollment = state.enrollments[slot]
            enrollment.due = None
            owner = self._owner(state, slot, enrollment)
            if owner is None:
                continue
            kept = owner._read_at(when)
            try:
                owner._run(state, slot, enrollment, when, None, actions)
            finally:
                if kept is not None:
                    owner.catalog = kept

    def _read_at(self, when: int) -> CatalogReader | None:
        """Let a step scheduled at ``when`` read ``bought_together()`` as it stood then
        (:meth:`engine.catalog.CatalogReader.at`); the catalog to put back after it
        (None: nothing was changed, the rules do not read the counts)."""
        catalog = self.catalog
        if catalog is None or not self.reads_together:
            return None
        self.catalog = catalog.at(when)
        return catalog

    def next_due(self, state: UserState, *, instants: bool = False) -> int | None:
        """When :meth:`advance` next has work for this user (epoch ms), or None.

        Enrollment timers and broadcast instants, unless ``instants``: a live
        shard's timer index holds each shopper's next broadcast instant (so a
        broadcast goes out at its instant, paced by the timer batches) but not
        every shopper's next recheck instant (a sweep advances idle shoppers
        instead). With ``instants``, also the next recheck instant (looked for
        up to 10 years after the user's clock).
        """
        due = _next(state)
        first = None if due is None else due[0]
        if not (self.timed and state.events):
            return first
        horizon = user_clock(state) + _LOOKAHEAD
        if instants:
            found = self._next_instant(state, horizon)
            when = None if found is None else found[0]
        else:
            when = self._next_broadcast(state, horizon)
        if when is not None and (first is None or when < first):
            first = when
        return first

    def _next_broadcast(self, state: UserState, horizon: int) -> int | None:
        """The user's next broadcast instant in (user clock, horizon] (timer index)."""
        if self.broadcasts is None:
            return None
        found = self.broadcasts.due(state, horizon)
        return None if found is None else found[0]

    # -- segments and broadcasts (SPEC section 9) -----------------------------------

    def _next_instant(self, state: UserState, horizon: int) -> tuple[int, bool] | None:
        """The next recheck or broadcast instant in (user clock, horizon], and whether
        segments are rechecked at it."""
        recheck = self.watch.next_recheck(state, horizon) if self.watch is not None else None
        best = recheck
        if self.broadcasts is not None:
            found = self.broadcasts.due(state, horizon if best is None else best)
            if found is not None and (best is None or found[0] < best):
                best = found[0]
        return None if best is None else (best, best == recheck)

    def _at_instant(self, state: UserState, when: int, recheck: bool, out: list[Action]) -> None:
        """Rechecks, then broadcasts, at one instant; the user's clock moves to it."""
        if recheck and self.watch is not None:
            changes = self.watch.recheck_at(state, when)
            if changes and not self.segment_triggers.keys().isdisjoint(changes):
                self._segment_entries(state, changes, latest_event(state), when, out)
        found = self.broadcasts.due(state, when) if self.broadcasts is not None else None
        if found is not None and found[0] == when:
            self._broadcast(state, found[1], when, out)
        state.clock = when

    def _broadcast(
        self, state: UserState, journeys: list[Journey], when: int, out: list[Action]
    ) -> None:
        """Enroll the user in each broadcast of this instant whose segment holds."""
        entry = latest_event(state)
        ctx = self._context(state, when, entry)
        for journey in journeys:
            name = journey.trigger.segment
            if name is not None and not self.rules.segments[name].cond.holds(ctx):
                continue
            self._maybe_enter(state, journey, entry, ctx, out)

    def _segment_entries(
        self,
        state: UserState,
        changes: list[Change],
        entry: Event | None,
        now: int,
        out: list[Action],
        ctx: Context | None = None,
    ) -> None:
        """Enter the journeys triggered by these segment changes, in file order
        (``ctx``: the caller's, with ``entry`` as its event, when it has one)."""
        if len(changes) == 1:
            journeys = self.segment_triggers.get(changes[0], ())
        else:  # in file order
            changed = set(changes)
            journeys = tuple(j for j in self.segment_journeys if _change_of(j) in changed)
        if journeys:
            if ctx is None:
                ctx = self._context(state, now, entry)
            for journey in journeys:
                self._maybe_enter(state, journey, entry, ctx, out)

    # -- exits and entries --------------------------------------------------------

    def _owner(self, state: UserState, slot: str, enrollment: Enrollment) -> Engine | None:
        """The engine that runs ``enrollment`` (None: it has just been ended)."""
        if enrollment.rules_version == self.version:
            return self
        if enrollment.journey not in self.programs:
            self._end(state, slot, "journey_removed")
            return None
        old = self.retired.get(enrollment.rules_version)
        if old is not None and enrollment.journey in old.programs:
            return old
        pc = enrollment.pc
        if pc is None or pc in self.programs[enrollment.journey].steps:
            enrollment.rules_version = self.version  # adopted: its actions say what ran them
            return self
        self._end(state, slot, "version_unavailable")
        return None

    def _end(self, state: UserState, slot: str, reason: str) -> None:
        del state.enrollments[slot]
        self.ended[reason] += 1

    def _check_exits(self, state: UserState, event: Event, now: int) -> None:
        for slot, enrollment in list(state.enrollments.items()):
            owner = self._owner(state, slot, enrollment)
            if owner is not None and owner._exits(enrollment, event, state, now):
                del state.enrollments[slot]

    def _retire(self, state: UserState) -> None:
        """End the enrollments of journeys this version removed (their next touch)."""
        for slot, enrollment in list(state.enrollments.items()):
            if enrollment.rules_version != self.version:
                self._owner(state, slot, enrollment)

    def _context(
        self,
        state: UserState,
        now: int,
        event: Event | None,
        enrollment: Enrollment | None = None,
    ) -> Context:
        """What a condition sees: the shopper, the clock, the event and, inside a
        journey, its entry event and the actions it sent; the engine's RFM book,
        windows and catalog."""
        if enrollment is None:
            return Context(
                state, now, event=event, rfm=self.rfm, windows=self.windows, catalog=self.catalog
            )
        return Context(
            state,
            now,
            event,
            enrollment.entry,
            enrollment.actions,
            rfm=self.rfm,
            catalog=self.catalog,
            windows=self.windows,
        )

    def _exits(self, enrollment: Enrollment, event: Event, state: UserState, now: int) -> bool:
        program = self.programs.get(enrollment.journey)
        if program is None or enrollment.journey not in self.exits.get(event.type, ()):
            return False
        ctx = self._context(state, now, event, enrollment)
        for rule in program.journey.exits:
            if rule.event == event.type and (rule.cond is None or rule.cond.holds(ctx)):
                return True
        return False

    def _maybe_enter(
        self,
        state: UserState,
        journey: Journey,
        event: Event | None,
        ctx: Context,
        out: list[Action],
    ) -> None:
        """Enter when the trigger's condition, re-entry rule and audience allow it."""
        # The condition first: it is the cheapest way to say no to most journeys.
        if journey.trigger.cond is not None and not journey.trigger.cond.holds(ctx):
            return
        key = _enrollment_key(journey, event)
        if key is None:
            return
        now = ctx.now
        slot = f"{journey.id}\x1f{key}"
        if slot in state.enrollments or not _reentry_allows(journey, state.entered.get(slot), now):
            return
        if journey.audience is not None and not journey.audience.holds(ctx):
            return
        entered = state.entered.get(slot)
        seq = 1 if entered is None else entered.count + 1
        state.entered[slot] = Entered(seq, now)
        _bound_history(state)
        enrollment = Enrollment(
            journey=journey.id,
            key=key,
            seq=seq,
            entered=now,
            entry=event,
            pc=self.programs[journey.id].first,
            rules_version=self.version,
            holdout=held_out(journey.id, state.key, journey.holdout),
        )
        state.enrollments[slot] = enrollment
        if journey.goal is not None:
            until = now + journey.goal.within
            segments = tuple(sorted(state.segments)) if state.segments else ()
            state.goals[journey.id] = GoalEntry(
                now, until, holdout=enrollment.holdout, segments=segments
            )
        if self.measures is not None:
            self._measure("entered", state, enrollment, now, tuple(sorted(state.segments)))
        self._run(state, slot, enrollment, now, event, out)

    # -- running steps ------------------------------------------------------------

    def _run(
        self,
        state: UserState,
        slot: str,
        enrollment: Enrollment,
        now: int,
        event: Event | None,
        out: list[Action],
    ) -> None:
        """Run steps from ``enrollment.pc`` until a wait, a deferral or the end."""
        program = self.programs.get(enrollment.journey)
        while program is not None and enrollment.pc is not None:
            step = program.steps[enrollment.pc]
            if isinstance(step, Wait):
                enrollment.pc = program.after[step.path]
                enrollment.due = (
                    now + step.ms if step.until is None else self._until(state, step, now)
                )
                return
            if isinstance(step, Send):
                deferred = self._send(state, enrollment, step, now, out)
                if deferred is not None:
                    enrollment.due = deferred
                    return
                enrollment.pc = program.after[step.path]
            elif isinstance(step, Branch):
                ctx = self._context(state, now, event, enrollment)
                enrollment.pc = _branch_target(program, step, step.cond.holds(ctx))
            elif isinstance(step, Split):
                enrollment.pc = self._split(state, enrollment, step, program, now)
            elif isinstance(step, ExitStep):
                break
        del state.enrollments[slot]

    def _until(self, state: UserState, step: Wait, now: int) -> int:
        """When ``wait: {until: HH:MM}`` ends: the next such time in the shopper's zone."""
        assert step.until is not None
        return next_local(now, user_zone(state, self.rules), step.until)

    # -- experiments (engine.experiments) -------------------------------------------

    def _split(
        self, state: UserState, enrollment: Enrollment, step: Split, program: Program, now: int
    ) -> str | None:
        """Take the shopper's arm of ``step``; the path of its first step."""
        arm = arm_of(step, enrollment.journey, enrollment.origin or state.key)
        enrollment.variant = arm.name
        pending = state.goals.get(enrollment.journey)
        if pending is not None and pending.entered == enrollment.entered:
            pending.variant = arm.name
        if self.measures is not None:
            self._measure("assigned", state, enrollment, now)
        return arm.steps[0].path if arm.steps else program.after[step.path]

    def _measure(
        self,
        kind: MeasureKind,
        state: UserState,
        enrollment: Enrollment,
        now: int,
        segments: tuple[str, ...] = (),
    ) -> None:
        assert self.measures is not None
        variant = HOLDOUT if enrollment.holdout else (enrollment.variant or None)
        self.measures.append(
            Measure(
                kind=kind,
                at=now,
                user_id=state.key,
                journey=enrollment.journey,
                variant=variant,
                holdout=enrollment.holdout,
                segments=segments,
            )
        )

    def _engagement(self, state: UserState, event: Event, now: int) -> None:
        """A measure for engagement with one of the user's latest sent actions."""
        ref = attributed(state, event.action_id)
        if ref is None or event.kind not in _ENGAGEMENT_MEASURES:
            return
        assert self.measures is not None
        self.measures.append(
            Measure(
                kind=_ENGAGEMENT_MEASURES[event.kind],
                at=now,
                user_id=state.key,
                journey=ref.journey,
                variant=ref.variant or None,
                step=ref.step,
                channel=ref.channel,
            )
        )

    def _check_goals(self, state: UserState, event: Event, now: int) -> None:
        """Convert the entries whose goal ``event`` meets; forget the expired ones."""
        ctx = None
        for journey, pending in list(state.goals.items()):
            goal = self.goals.get(journey)
            if goal is None or now > pending.until:
                del state.goals[journey]
                continue
            if goal.event != event.type:
                continue
            if goal.cond is not None:
                ctx = ctx or self._context(state, now, event)
                if not goal.cond.holds(ctx):
                    continue
            del state.goals[journey]
            if self.measures is not None:
                variant = HOLDOUT if pending.holdout else (pending.variant or None)
                self.measures.append(
                    Measure(
                        kind="converted",
                        at=now,
                        user_id=state.key,
                        journey=journey,
                        variant=variant,
                        holdout=pending.holdout,
                        segments=pending.segments,
                    )
                )

    def _send(
        self, state: UserState, enrollment: Enrollment, step: Send, now: int, out: list[Action]
    ) -> int | None:
        """Emit the action of a send step; return a deferral time instead if quiet."""
        rules = self.rules
        until = quiet_until(rules.quiet_hours, user_zone(state, rules), now)
        if until is not None:
            return until
        choices = (step.channel, *step.fallback)
        if step.choose is not None:
            choices = self._chosen(state, enrollment, step, now)
        reason = None
        if enrollment.holdout:
            channel: str | None = choices[0]
            reason = "holdout"
        else:
            channel = first_allowed(state, rules, choices)
        if channel is None:
            channel, reason = choices[0], "no_consent"
        elif reason is None and capped(state.sends, rules.caps, channel, now):
            reason = "capped"
        content = None
        if reason is None:
            reason, content = self._render(state, enrollment, step, channel, now)
        action = self._action(state, enrollment, step, channel, now, reason, content)
        if reason is None:
            record_send(state, rules, channel, now)
            if self.remember_all or enrollment.journey in self.remembered:
                remember(state, action)
        enrollment.actions.append(action.action_id)
        out.append(action)
        return None

    def _action(
        self,
        state: UserState,
        enrollment: Enrollment,
        step: Send,
        channel: str,
        now: int,
        reason: str | None,
        content: dict[str, str] | None,
    ) -> Action:
        enrollment_id = f"{enrollment.key}\x1f{enrollment.seq}"
        return Action(
            action_id=action_id(
                enrollment.origin or state.key, enrollment.journey, enrollment_id, step.path
            ),
            at=now,
            user_id=state.key,
            journey=enrollment.journey,
            step=step.path,
            channel=channel,
            template=step.template,
            status="sent" if reason is None else "suppressed",
            reason=reason,
            rules_version=enrollment.rules_version,
            content=content,
            variant=HOLDOUT if enrollment.holdout else (enrollment.variant or None),
        )

    def _chosen(
        self, state: UserState, enrollment: Enrollment, step: Send, now: int
    ) -> tuple[str, ...]:
        """The channels of ``send: {expr: EXPR}``: the expression's channel, then the
        fallbacks (only the fallbacks when it is null or no channel)."""
        assert step.choose is not None
        found = step.choose.fn(self._context(state, now, None, enrollment))
        if isinstance(found, str) and found in CHANNELS:
            return (found, *(c for c in step.fallback if c != found))
        return step.fallback

    def _render(
        self, state: UserState, enrollment: Enrollment, step: Send, channel: str, now: int
    ) -> tuple[str | None, dict[str, str] | None]:
        """(suppression reason, content): ``template_error`` when over the render budget."""
        if step.template is None:
            return None, None
        fields = self.rules.templates.get(step.template, {}).get(channel)
        if fields is None:
            return None, None
        variables = _template_vars(state, enrollment, now, self.windows)
        if (step.template, channel) in self.catalog_messages:  # only where they are read
            entry = enrollment.entry
            pid = None if entry is None else entry.product_id
            variables.update(product_vars(self.catalog, pid))
        content = render_message(fields, variables)
        return ("template_error", None) if content is None else (None, content)


_CATALOG_NAMES = frozenset({"product", "bought_together"})
_ENGAGEMENT_MEASURES: dict[str, MeasureKind] = {
    "delivered": "delivered",
    "opened": "opened",
    "clicked": "clicked",
    "bounced": "bounced",
    "unsubscribed": "unsubscribed",
}


def _reads_catalog(fields: Mapping[str, Any]) -> bool:
    """Whether one message's templates read the catalog's variables."""
    return any(template_names(render) & _CATALOG_NAMES for render in fields.values())


def _template_vars(
    state: UserState, enrollment: Enrollment, now: int, windows: WindowConfig
) -> dict[str, Any]:
    entry = enrollment.entry
    cart = kept_cart(state.cart, windows, now)  # the lines that count at `now`, pruned or not
    return {
        "profile": dict(state.profile),
        "entry": {} if entry is None else _event_vars(entry),
        "cart": {"total": lines_total(cart), "count": lines_count(cart), "items": list(cart)},
        "user_id": state.key,
        "journey": enrollment.journey,
        "now": now,
    }


def _event_vars(event: Event) -> dict[str, Any]:
    return {f: getattr(event, f) for f in event.__struct_fields__ if getattr(event, f) is not None}


def _reads(rules: Rules, name: str) -> bool:
    """Whether a condition or a template of ``rules`` calls (or names) ``name``."""
    if any(name in cond.calls for cond in conditions(rules)):
        return True
    return any(
        name in template_names(render)
        for channels in rules.templates.values()
        for fields in channels.values()
        for render in fields.values()
    )


def conditions(rules: Rules) -> Iterator[Condition]:
    """Every compiled condition of the rules' segments and journeys."""
    for segment in rules.segments.values():
        yield segment.cond
    yield from _journey_conditions(rules)


def running(rules: Rules) -> list[Condition]:
    """The conditions evaluated while the journeys run: the journeys', the segments
    their triggers name, and every segment's when one of those calls ``in_segment``."""
    found = list(_journey_conditions(rules))
    named = {j.trigger.segment for j in rules.journeys if j.trigger.segment is not None}
    found += [rules.segments[name].cond for name in named if name in rules.segments]
    if any("in_segment" in cond.calls for cond in found):
        return list(conditions(rules))
    return found


def _journey_conditions(rules: Rules) -> Iterator[Condition]:
    for journey in rules.journeys:
        goal = None if journey.goal is None else journey.goal.cond
        exits = (e.cond for e in journey.exits)
        for cond in (journey.trigger.cond, journey.audience, goal, *exits):
            if cond is not None:
                yield cond
        yield from _branch_conditions(journey.steps)


def _branch_conditions(steps: Iterable[Step]) -> Iterator[Condition]:
    """The conditions of the steps: if steps', send expressions', in every branch and arm."""
    for step in steps:
        if isinstance(step, Branch):
            yield step.cond
            yield from _branch_conditions((*step.then, *step.otherwise))
        elif isinstance(step, Split):
            yield from _branch_conditions(s for arm in step.arms for s in arm.steps)
        elif isinstance(step, Send) and step.choose is not None:
            yield step.choose


def _experiment(journey: Journey) -> bool:
    """Whether a journey has a holdout, a goal or a split."""
    if journey.holdout or journey.goal is not None:
        return True
    program = compile_program(journey)
    return any(isinstance(step, Split) for step in program.steps.values())


def _next(state: UserState) -> tuple[int, str] | None:
    """The earliest (due, slot) among the user's enrollments (ties by slot)."""
    best: tuple[int, str] | None = None
    for slot, enrollment in state.enrollments.items():
        if enrollment.due is not None and (best is None or (enrollment.due, slot) < best):
            best = (enrollment.due, slot)
    return best


def _enrollment_key(journey: Journey, event: Event | None) -> str | None:
    """The enrollment key of a trigger event ("" for unkeyed journeys; None: no entry);
    a broadcast's is its schedule, so that each schedule enrolls a user once."""
    if journey.trigger.schedule is not None:
        return journey.trigger.schedule.text
    if journey.key is None:
        return ""
    value = getattr(event, journey.key, None)
    return None if value is None else str(value)


def _change_of(journey: Journey) -> Change:
    """The segment change a ``trigger: {segment: S}`` journey enters on."""
    return (journey.trigger.segment or "", journey.trigger.on)


def _forget_segments(state: UserState) -> None:
    """The rules watch no segment any more: drop the stored memberships."""
    state.segments.clear()
    state.segment_defs = ""


def _reentry_allows(journey: Journey, entered: Entered | None, now: int) -> bool:
    if entered is None or journey.reentry == "always":
        return True
    if journey.reentry == "never":
        return False
    return now - entered.last >= journey.reentry


def _bound_history(state: UserState) -> None:
    """Keep the re-entry history bounded: forget the longest-ago entries first."""
    excess = len(state.entered) - MAX_ENTRY_HISTORY
    if excess > 0:
        for slot in sorted(state.entered, key=lambda s: state.entered[s].last)[:excess]:
            if slot not in state.enrollments:
                del state.entered[slot]


def replay_order(actions: Iterable[Action]) -> list[Action]:
    """Actions in SPEC section 5 order."""
    return sorted(actions, key=Action.sort_key)
