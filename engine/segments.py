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
  dependency analysis, :mod:`engine.rules.segment_defs`); all of them after a
  user's first applied event, and after an event carrying both ``user_id`` and
  ``anon_id`` (an identity link may merge a whole state in). It returns the
  changes as ``(segment, "enter" | "exit")`` pairs.
* Time alone: the watched segments that change with time are re-evaluated at
  recheck instants ``k * segment_recheck`` (epoch-aligned, so replay and live
  evaluate at the same instants), for every instant in (the user's clock,
  until]. :meth:`SegmentWatch.next_recheck` skips an instant when no moment of
  change (a WITHIN window's oldest record leaving it, ``since(T)`` or ``now``
  passing a constant) falls between the previous instant and it: the
  membership found is the same as evaluating at every instant.
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
from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal

import msgspec

from engine.events import Event
from engine.rfm import RfmBook
from engine.rules.context import Context
from engine.rules.model import Rules, Segment
from engine.state import UserState
from engine.windows import since_index

Change = tuple[str, Literal["enter", "exit"]]
_CHANGES: Final = "_segment_changes"  # transient: SegmentWatch._changes
_UNKNOWN: Final = -1
_RECORD_FIELDS: Final = (
    "product_id",
    "category",
    "price",
    "quantity",
    "query",
    "order_id",
    "revenue",
    "items",
    "channel",
    "granted",
    "kind",
    "action_id",
    "props",
)


def user_clock(state: UserState) -> int:
    """The latest moment the engine ran this user at (states written before the
    clock existed: their latest event's time)."""
    return max(state.clock, state.last_seen)


def members_at(rules: Rules, state: UserState, at: int, rfm: RfmBook | None = None) -> list[str]:
    """Every segment of ``rules`` the user is in at ``at`` (sorted names); ``rfm``:
    the base's RFM boundaries, for segments that call ``rfm()``."""
    ctx = Context(state, at, rfm=rfm)
    return sorted(name for name, seg in rules.segments.items() if seg.cond.holds(ctx))


def watched_names(rules: Rules) -> list[str]:
    """The segments a journey triggers on (entering or leaving), in file order."""
    named = {j.trigger.segment for j in rules.journeys if j.trigger.schedule is None}
    return [name for name in rules.segments if name in named]


class SegmentWatch:
    """The watched segments of one rules version and how to keep their memberships."""

    def __init__(self, rules: Rules, names: Iterable[str]) -> None:
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
        self.timed = tuple(s for s in self.watched if s.deps.timed)
        self.continuous = any(s.deps.continuous for s in self.timed)
        self.rfm: RfmBook | None = None  # the engine's, for segments that call rfm()

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
        for name in [n for n in state.segments if n not in self.prints]:
            del state.segments[name]
        at = user_clock(state)
        ctx = Context(state, at, rfm=self.rfm)
        for seg in self.watched:
            if old.get(seg.name) != seg.fingerprint:
                if seg.cond.holds(ctx):
                    state.segments.setdefault(seg.name, at)
                else:
                    state.segments.pop(seg.name, None)
        state.segment_defs = self.fingerprint

    # -- after an event -----------------------------------------------------------

    def after_event(self, state: UserState, event: Event, now: int) -> list[Change]:
        """Re-evaluate what the applied ``event`` can change; the enters and exits."""
        if state.events == 1 or (event.user_id and event.anon_id):
            segments: tuple[Segment, ...] = self.watched
        else:
            segments = self.by_type.get(event.type, self.every)
        if not segments:
            return []
        cache = state.__dict__.get(_CHANGES)
        if cache is not None:  # their windows changed: their moments of change may have
            known = cache[1]
            for seg in segments:
                known.pop(seg.name, None)
            cache[2] = _UNKNOWN
        return _evaluate(state, segments, now, self.rfm)

    # -- recheck instants ---------------------------------------------------------

    def next_recheck(self, state: UserState, until: int) -> int | None:
        """The next instant in (user clock, until] where a timed segment may change."""
        if not self.timed:
            return None
        step = self.recheck
        clock = user_clock(state)
        previous = clock // step * step  # the last instant at or before the clock
        if previous + step > until:
            return None  # no instant in (clock, until]: the common case between events
        if self.continuous:
            instant, due = previous + step, self.timed
        else:
            cache = self._cache(state)
            first = cache[2]
            known = first != _UNKNOWN and (first is None or first > previous)
            if known and (first is None or -(-first // step) * step > until):
                return None  # the earliest moment found before still holds, after until
            changes = self._changes(state, previous)
            first = cache[2] = min((c for c, _ in changes if c is not None), default=None)
            if first is None:
                return None
            instant = -(-first // step) * step  # the first instant at or after it
            due = tuple(s for c, s in changes if c is not None and c <= instant)
        if instant > until:
            return None
        # Which segments to evaluate there, kept beside the state (never serialised).
        state.__dict__["_recheck"] = (state.events, clock, instant, due)
        return instant

    def _cache(self, state: UserState) -> list[Any]:
        """[fingerprint, segment -> its next moment of change, the earliest of them
        (``_UNKNOWN`` after an event touched one)], beside the state."""
        cache: list[Any] | None = state.__dict__.get(_CHANGES)
        if cache is None or cache[0] != self.fingerprint:
            cache = state.__dict__[_CHANGES] = [self.fingerprint, {}, _UNKNOWN]
        return cache

    def _changes(self, state: UserState, after: int) -> list[tuple[int | None, Segment]]:
        """Each timed segment's first moment of change after ``after``.

        Kept beside the state (never serialised) and reused while still ahead:
        a moment only moves when the segment's own windows change, and
        :meth:`after_event` forgets the segments an event can touch.
        """
        known = self._cache(state)[1]
        memo: dict[tuple[str, str, int], int | None] = {}
        found = []
        for seg in self.timed:
            change = known.get(seg.name, _UNKNOWN)
            if change is _UNKNOWN or (change is not None and change <= after):
                change = known[seg.name] = _change_after(state, seg, after, memo)
            found.append((change, seg))
        return found

    def recheck_at(self, state: UserState, at: int) -> list[Change]:
        """At the instant ``at``, evaluate the timed segments that may have changed since
        the previous instant (found by :meth:`next_recheck`); the enters and exits."""
        cached = state.__dict__.get("_recheck")
        due = self.timed
        if cached is not None and cached[:3] == (state.events, user_clock(state), at):
            due = cached[3]
        return _evaluate(state, due, at, self.rfm)


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


def _evaluate(
    state: UserState, segments: Iterable[Segment], now: int, rfm: RfmBook | None
) -> list[Change]:
    ctx = Context(state, now, rfm=rfm)
    changes: list[Change] = []
    members = state.segments
    for seg in segments:
        inside = seg.cond.holds(ctx)
        if inside == (seg.name in members):
            continue
        if inside:
            members[seg.name] = now
            changes.append((seg.name, "enter"))
        else:
            del members[seg.name]
            changes.append((seg.name, "exit"))
    return changes


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
