"""Segment memberships at run time (SPEC section 9), for ``trigger: {segment: S}``.

Rules of this interface:

* Only *watched* segments are kept in ``UserState.segments`` (name -> when the
  user entered): those a journey of the current rules triggers on, and the
  segments nothing watches cost nothing per event. ``in_segment('S')``, a
  broadcast's segment and ``tetik segments`` evaluate the definition at the
  moment asked (:func:`members_at`), which is exact, so they need no stored
  membership.
* :meth:`SegmentWatch.after_event` re-evaluates, at the event's ``now``, the
  watched segments whose value can depend on that event's type (the loader's
  dependency analysis, :mod:`engine.rules.segment_defs`); after a user's first
  applied event, also every one that may hold for a user with no events
  (:func:`engine.segment_first.false_when_empty`: the others stay empty), and
  all of them after an event carrying both ``user_id`` and ``anon_id`` (an
  identity link may merge a whole state in). It returns the
  changes as ``(segment, "enter" | "exit")`` pairs. It leaves out a segment
  that reads the event's type only through ``count``/``exists`` over WITHIN
  (``Deps.delays``) when the segment's drift says the new record cannot
  change the membership, as long as its moment of change is still ahead: the
  membership found is the same.
* Time alone: the watched segments that change with time are re-evaluated at
  recheck instants ``k * segment_recheck`` (epoch-aligned, so replay and live
  evaluate at the same instants), for every instant in (the user's clock,
  until]. Each segment's next moment of change (a WITHIN window's oldest
  record leaving it, the K-th newest for ``count(T, W) OP K``, ``since(T)`` or
  ``now`` passing a constant; none for a user outside a segment whose drift
  only falls, or inside one that only rises) is kept beside the state and
  found again only when an event or an instant may have moved it; an
  instant evaluates only the segments whose moment has come, and
  :meth:`SegmentWatch.next_recheck` skips instants before the earliest one:
  the memberships found are the same as evaluating every segment at every
  instant (tests/engine/test_segment_reference.py compares both).
* The state must change only through the engine between two calls that keep
  it in memory (those moments are kept beside it, never serialised; a state
  loaded afresh finds them again).
* Rules versions: ``UserState.segment_defs`` holds the fingerprint of the
  definitions a membership was computed with. A user met under other
  definitions is re-baselined silently (:meth:`SegmentWatch.prepare`): the
  segments that are new or whose definition changed are evaluated at the
  user's clock and stored without any enter or exit, as Klaviyo and Braze do
  not send a new segment's flow to everyone already in it; memberships of
  segments no longer watched are dropped. A user never seen before starts
  empty, so a new shopper who qualifies at once does enter.
* :func:`latest_event` rebuilds the user's newest stored event: the ``entry``
  of an enrollment that a change at a recheck instant (or a broadcast) starts.
  Its ``event_id`` is ``stored:`` and the record's id hash (the state keeps
  hashes, not ids); ``user_id`` is the identity key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import msgspec

from engine.events import STANDARD_TYPES, Event
from engine.rfm import RfmBook
from engine.rules.context import NOT_YET, Context
from engine.rules.model import Rules, Segment
from engine.segment_first import false_when_empty
from engine.state import UserState
from engine.windows import DEFAULT_CONFIG, Stored, WindowConfig, since_index

Change = tuple[str, Literal["enter", "exit"]]
_CHANGES: Final = "_segment_changes"  # transient: SegmentWatch._moments
_INSTANT: Final = "_recheck"  # transient: the instant next_recheck found, for recheck_at
# Transient: a lower bound of the user's moments of change that next_recheck found ahead
# of every instant up to its `until`; dropped whenever a moment may go below it.
_QUIET: Final = "_segment_quiet"
_STALE: Final = -1  # a moment of change to find again
_NEVER: Final = 1 << 62  # no moment of change before the user's next event
_NO_ACTIONS: Final[frozenset[str]] = frozenset()
_RECORD_FIELDS: Final = tuple(f for f in Stored.__struct_fields__ if f not in ("ts", "h"))


def user_clock(state: UserState) -> int:
    """The latest moment the engine ran this user at (states written before the
    clock existed: their latest event's time)."""
    return max(state.clock, state.last_seen)


def members_at(
    rules: Rules,
    state: UserState,
    at: int,
    rfm: RfmBook | None = None,
    windows: WindowConfig = DEFAULT_CONFIG,
    rfm_score: Any = NOT_YET,
) -> list[str]:
    """Every segment of ``rules`` the user is in at ``at`` (sorted names); ``rfm``:
    the base's RFM boundaries, for segments that call ``rfm()``."""
    ctx = Context(state, at, rfm=rfm, windows=windows, rfm_score=rfm_score)
    return sorted(name for name, seg in rules.segments.items() if seg.cond.holds(ctx))


def watched_names(rules: Rules) -> list[str]:
    """The segments a journey triggers on (entering or leaving), in file order."""
    named = {j.trigger.segment for j in rules.journeys if j.trigger.schedule is None}
    return [name for name in rules.segments if name in named]


@dataclass(frozen=True, slots=True)
class _Plan:
    """What one kind of event re-evaluates, in file order (see :func:`_plan`)."""

    checks: tuple[tuple[str, Callable[[Context], Any]], ...]
    # (name, its moment when the user is in it, when not): _NEVER where its drift
    # says time alone cannot change it, else _STALE (found again at the next instant).
    timed: tuple[tuple[str, int, int], ...]
    # (name, condition, moment if in, if not (None: untimed), skip while in / while
    # out / never (True, False, None)); see SegmentWatch.after_event.
    rows: tuple[tuple[str, Callable[[Context], Any], int | None, int | None, bool | None], ...]
    max_count: int = 0  # the event type's window bound: a record evicted may not delay
    # A first event: (name, _NEVER) for the timed segments known false (not evaluated).
    settled: tuple[tuple[str, int], ...] = ()


_AFTER_DRIFT: Final = {
    "falls": (_STALE, _NEVER),
    "rises": (_NEVER, _STALE),
    "const": (_NEVER, _NEVER),
    "any": (_STALE, _STALE),
}
_SKIP_WHILE_IN: Final = {"falls": True, "rises": False}


def _plan(segments: Iterable[Segment], type_: str | None = None, max_count: int = 0) -> _Plan:
    """The plan after an event of ``type_`` (None: any type, nothing skipped)."""
    chosen = tuple(segments)
    rows = []
    for seg in chosen:
        moments = _AFTER_DRIFT[seg.deps.drift] if seg.deps.timed else (None, None)
        skip = None
        if type_ in seg.deps.delays and type_ in STANDARD_TYPES:
            skip = _SKIP_WHILE_IN.get(seg.deps.drift)
        rows.append((seg.name, seg.cond.fn, *moments, skip))
    return _Plan(
        tuple((s.name, s.cond.fn) for s in chosen),
        tuple((s.name, *_AFTER_DRIFT[s.deps.drift]) for s in chosen if s.deps.timed),
        tuple(rows),
        max_count if any(row[-1] is not None for row in rows) else 0,
    )


class SegmentWatch:
    """The watched segments of one rules version and how to keep their memberships."""

    def __init__(
        self, rules: Rules, names: Iterable[str], windows: WindowConfig = DEFAULT_CONFIG
    ) -> None:
        self.recheck = rules.segment_recheck
        self.watched: tuple[Segment, ...] = tuple(rules.segments[n] for n in names)
        self.prints: dict[str, str] = {s.name: s.fingerprint for s in self.watched}
        self.fingerprint = _combined(self.prints)
        self.known: dict[str, Mapping[str, str]] = {self.fingerprint: self.prints}
        by_type: dict[str, list[Segment]] = {}
        for seg in self.watched:
            for type_ in seg.deps.types:
                by_type.setdefault(type_, []).append(seg)
        every = [s for s in self.watched if s.deps.every_type]
        order = {s.name: i for i, s in enumerate(self.watched)}
        self.by_type = {
            t: tuple(sorted({*segs, *every}, key=lambda s: order[s.name]))
            for t, segs in by_type.items()
        }
        self.every = tuple(every)
        self.plans = {
            t: _plan(segs, t, windows.limits(t).max_count) for t, segs in self.by_type.items()
        }
        self.every_plan = _plan(self.every)
        # A user's first event: also the segments that may hold without any event.
        maybe = {s for s in self.watched if not false_when_empty(s, windows)}
        self.first_plans = {
            t: self._first_plan({*segs, *maybe}, order) for t, segs in self.by_type.items()
        }
        self.first_plan = self._first_plan({*self.every, *maybe}, order)
        self.all_plan = _plan(self.watched)
        self.timed = tuple(s for s in self.watched if s.deps.timed)
        self.timed_plan = _plan(self.timed)
        self.timed_rows = tuple(zip(self.timed_plan.checks, self.timed_plan.timed, strict=True))
        self.all_stale = dict.fromkeys((s.name for s in self.timed), _STALE)
        self.continuous = any(s.deps.continuous for s in self.timed)
        self.rfm: RfmBook | None = None  # the engine's, for segments that call rfm()
        self.windows: WindowConfig = DEFAULT_CONFIG  # the engine's: retention, months' zone

    def _first_plan(self, chosen: set[Segment], order: Mapping[str, int]) -> _Plan:
        """The plan after a user's first event: ``chosen`` evaluated, nothing skipped;
        the other timed segments cannot change before the user's next event (no
        record of their types, no moment: :func:`engine.segment_first.false_when_empty`)."""
        plan = _plan(sorted(chosen, key=lambda s: order[s.name]))
        settled = tuple((s.name, _NEVER) for s in self.watched if s.deps.timed and s not in chosen)
        return _Plan(plan.checks, plan.timed, plan.rows, plan.max_count, settled)

    def remember(self, older: SegmentWatch) -> None:
        """Know an older version's definitions, to re-baseline only what changed."""
        self.known.setdefault(older.fingerprint, older.prints)

    # -- baseline ---------------------------------------------------------------

    def prepare(self, state: UserState) -> None:
        """Re-baseline silently when the user's memberships were computed under other
        definitions (module rules); a user never seen before starts empty."""
        if state.segment_defs == self.fingerprint:
            return
        if state.events == 0:
            state.segments.clear()
            state.segment_defs = self.fingerprint
            return
        old = self.known.get(state.segment_defs, {}) if state.segment_defs else {}
        state.__dict__.pop(_CHANGES, None)
        state.__dict__.pop(_QUIET, None)
        for name in [n for n in state.segments if n not in self.prints]:
            del state.segments[name]
        at = user_clock(state)
        ctx = Context(state, at, rfm=self.rfm, windows=self.windows)
        for seg in self.watched:
            if old.get(seg.name) != seg.fingerprint:
                if seg.cond.holds(ctx):
                    state.segments.setdefault(seg.name, at)
                else:
                    state.segments.pop(seg.name, None)
        state.segment_defs = self.fingerprint

    # -- after an event -----------------------------------------------------------

    def after_event(
        self, state: UserState, event: Event, now: int, ctx: Context | None = None
    ) -> list[Change]:
        """Re-evaluate what the applied ``event`` can change; the enters and exits.

        ``ctx``: the caller's context of this user at ``now``, when it has one
        (a segment reads neither ``event`` nor ``entry`` nor ``actions``), to
        spare building another.

        A segment that reads the event's type only through ``count``/``exists``
        over WITHIN (``Deps.delays``) is not re-evaluated when its drift says the
        new record cannot change the membership: a member of one that only falls,
        a non-member of one that only rises, while its moment of change is still
        ahead (no change since the clock) and no record was evicted. The record
        moves each of those counts as going back in time would.
        """
        if event.user_id and event.anon_id:
            plan = self.all_plan
        elif state.events == 1:
            plan = self.first_plans.get(event.type, self.first_plan)
        else:
            plan = self.plans.get(event.type, self.every_plan)
        if not plan.rows and not plan.settled:
            return []
        cache = state.__dict__.get(_CHANGES)
        if cache is not None and cache[0] == self.fingerprint:
            of = cache[1]
        else:
            of = self._moments(state) if plan.timed or plan.settled else {}
        for name, moment in plan.settled:
            of[name] = moment
        quiet = plan.max_count > 0 and now >= state.clock
        if quiet:
            quiet = len(state.windows[event.type]) < plan.max_count
        if ctx is None:
            ctx = Context(state, now, None, None, _NO_ACTIONS, None, self.rfm, self.windows)
        changes: list[Change] = []
        members = state.segments
        stale = False
        for name, fn, if_in, if_out, skip_while in plan.rows:
            was = name in members
            if skip_while is was and quiet and of[name] > now:
                continue
            inside = fn(ctx) is True
            if if_in is not None and if_out is not None:  # so may have its moment
                moment = of[name] = if_in if inside else if_out
                stale = stale or moment == _STALE
            if inside != was:
                _flip(members, changes, name, inside, now)
        if stale:
            state.__dict__.pop(_QUIET, None)
        return changes

    def idle(self, state: UserState, until: int) -> bool:
        """Whether :meth:`next_recheck` would find no instant in (user clock, until]:
        none falls there, or the moments it last found are all after the last one
        (cheap: no moments looked at)."""
        step = self.recheck
        clock = state.clock if state.clock > state.last_seen else state.last_seen
        if not self.timed or clock // step * step + step > until:
            return True
        quiet: int | None = state.__dict__.get(_QUIET)
        return quiet is not None and (quiet >= _NEVER or -(-quiet // step) * step > until)

    # -- recheck instants ---------------------------------------------------------

    def next_recheck(self, state: UserState, until: int) -> int | None:
        """The next instant in (user clock, until] where a timed segment may change."""
        if not self.timed:
            return None
        step = self.recheck
        clock = state.clock if state.clock > state.last_seen else state.last_seen
        previous = clock // step * step  # the last instant at or before the clock
        if previous + step > until:
            return None  # no instant in (clock, until]: the common case between events
        if self.continuous:
            instant = previous + step
        else:
            moments = self._moments(state)
            first = min(moments.values())
            if first <= previous:  # stale, or passed: find those again
                first = self._refresh(state, moments, previous)
            instant = -(-first // step) * step  # the first instant at or after it
            if first >= _NEVER or instant > until:
                state.__dict__[_QUIET] = first  # idle says so until a moment goes lower
                return None
        # recheck_at evaluates, at this instant, the segments whose moment has come.
        state.__dict__[_INSTANT] = (state.events, clock, instant)
        return instant

    def _moments(self, state: UserState) -> dict[str, int]:
        """Each timed segment's next moment of change (``_STALE``: to find again,
        ``_NEVER``: none before the user's next event), kept beside the state."""
        cache: tuple[str, dict[str, int]] | None = state.__dict__.get(_CHANGES)
        if cache is None or cache[0] != self.fingerprint:
            cache = (self.fingerprint, {s.name: _STALE for s in self.timed})
            state.__dict__[_CHANGES] = cache
            state.__dict__.pop(_QUIET, None)
        return cache[1]

    def _refresh(self, state: UserState, moments: dict[str, int], after: int) -> int:
        """Find again the moments at or before ``after`` (module rules); the earliest.

        A moment only moves when the segment's own windows or its membership
        change: :meth:`after_event` marks the segments an event can touch, and
        an instant that evaluates a segment leaves its moment behind the clock.
        """
        memo: dict[tuple[str, str, int], int | None] = {}
        for seg in self.timed:
            if moments[seg.name] <= after:
                found = _change_after(state, seg, after, memo)
                moments[seg.name] = _NEVER if found is None else found
        return min(moments.values())

    def recheck_at(self, state: UserState, at: int) -> list[Change]:
        """At the instant ``at``, evaluate the timed segments that may have changed since
        the previous instant (found by :meth:`next_recheck`); the enters and exits."""
        state.__dict__.pop(_QUIET, None)  # the moments found here may be stale
        cache = state.__dict__.get(_CHANGES)
        if (
            self.continuous
            or cache is None
            or state.__dict__.get(_INSTANT) != (state.events, user_clock(state), at)
        ):
            if cache is not None:
                cache[1].update(self.all_stale)
            return _check(state, self.timed_plan.checks, at, self.rfm, self.windows)
        moments = cache[1]
        ctx = Context(state, at, None, None, _NO_ACTIONS, None, self.rfm, self.windows)
        changes: list[Change] = []
        members = state.segments
        for (name, fn), (_, if_in, if_out) in self.timed_rows:
            if moments[name] > at:
                continue  # no moment of change since the previous instant
            inside = fn(ctx) is True
            moments[name] = if_in if inside else if_out
            if inside != (name in members):
                _flip(members, changes, name, inside, at)
        return changes


def _change_after(
    state: UserState, seg: Segment, after: int, memo: dict[tuple[str, str, int], int | None]
) -> int | None:
    """The first moment after ``after`` when ``seg``'s value may change with time alone
    (None: not before the user's next event); ``memo`` shares terms between segments."""
    deps = seg.deps
    drift = deps.drift
    if drift != "any" and (drift == "const" or (drift == "falls") != (seg.name in state.segments)):
        return None  # outside one that only falls, or inside one that only rises
    best: int | None = None
    windows = state.windows
    for type_, within, rank in deps.ranks:
        window = windows.get(type_)
        if window and len(window) >= rank:
            # count >= rank holds while the rank-th newest record is in the window.
            leaves = window[-rank].ts + within + 1
            if leaves > after:
                best = _earlier(best, leaves)
    for type_, within in deps.agings:
        key = ("a", type_, within)
        if key not in memo:
            memo[key] = None
            window = windows.get(type_)
            if window:
                # A record counts while now <= ts + within: it leaves at ts + within + 1.
                index = since_index(window, after - within)
                if index < len(window):
                    memo[key] = window[index].ts + within + 1
        found = memo[key]
        if found is not None:
            best = _earlier(best, found)
    for type_, limit in deps.thresholds:
        window = windows.get(type_)
        if window:
            best = _first_after(best, window[-1].ts + limit, after)
    for moment in deps.moments:
        best = _first_after(best, moment, after)
    return best


def _check(
    state: UserState,
    checks: tuple[tuple[str, Callable[[Context], Any]], ...],
    now: int,
    rfm: RfmBook | None,
    windows: WindowConfig,
) -> list[Change]:
    """Evaluate each (segment, condition) at ``now``; store and return the changes."""
    ctx = Context(state, now, None, None, _NO_ACTIONS, None, rfm, windows)
    changes: list[Change] = []
    members = state.segments
    for name, fn in checks:
        inside = fn(ctx) is True
        if inside != (name in members):
            _flip(members, changes, name, inside, now)
    return changes


def _flip(members: dict[str, int], changes: list[Change], name: str, inside: bool, at: int) -> None:
    """Record that the user entered (``inside``) or left segment ``name`` at ``at``."""
    if inside:
        members[name] = at
        changes.append((name, "enter"))
    else:
        del members[name]
        changes.append((name, "exit"))


def _earlier(best: int | None, candidate: int) -> int:
    return candidate if best is None or candidate < best else best


def _first_after(best: int | None, moment: int, after: int) -> int | None:
    """The earlier of ``best`` and the first of ``moment``, ``moment + 1`` after ``after``
    (a comparison with a constant flips at one of the two, depending on the operator)."""
    for candidate in (moment, moment + 1):
        if candidate > after:
            return _earlier(best, candidate)
    return best


def _combined(prints: Mapping[str, str]) -> str:
    if not prints:
        return ""
    digest = hashlib.sha256()
    for name in sorted(prints):
        digest.update(f"{name}\x00{prints[name]}\x00".encode())
    return digest.hexdigest()[:12]


def latest_event(state: UserState) -> Event | None:
    """The user's newest stored event, rebuilt (module rules); None without any."""
    newest: tuple[int, str] | None = None
    for type_, window in state.windows.items():
        if window and (newest is None or (window[-1].ts, type_) > newest):
            newest = (window[-1].ts, type_)
    if newest is None or not state.key:
        return None
    type_ = newest[1]
    record = state.windows[type_][-1]
    fields = {f: v for f in _RECORD_FIELDS if (v := getattr(record, f)) is not None}
    if type_ == "profile":
        fields["attributes"] = {}  # the state keeps the merged profile, not each event's
    try:
        return Event(
            event_id=f"stored:{record.h:016x}",
            type=type_,
            ts=record.ts,
            user_id=state.key,
            **fields,
        )
    except (ValueError, TypeError, msgspec.ValidationError):
        return None
