"""Identity stitching: one customer across devices (SPEC section 7).

Rules of this interface:

* :func:`resolve` decides, from an event and the links known so far
  (``anon_id -> user_id``), which identity key the event belongs to:

  - both ``user_id`` and ``anon_id``, the anonymous id not linked yet: the
    event LINKS it to the user (``Resolution.link``); links are permanent;
  - both, the anonymous id already linked to this user: just the user;
  - both, the anonymous id linked to ANOTHER user: the event goes to the user
    it names and nothing is re-linked (``Resolution.conflict``, counted as
    ``identity_conflict``);
  - only a linked ``anon_id``: the user it is linked to; the event is a copy
    with that ``user_id`` set (events stay immutable), so ``entry.user_id``
    names the user too.

  The caller keeps the links (in memory in replay, in Redis live) and stores
  ``Resolution.link`` before it handles the event.
* :func:`merge` folds an anonymous id's state into the user's, mutating only
  ``into`` (``other`` is left as it was: the caller drops it). A key the user
  already merged (``UserState.merged``) or the user's own key merges nothing,
  so a re-processed link changes nothing. What merges, and how:

  - windows: union, de-duplicated by event-id hash, in ``ts`` order (ties:
    the user's record first), then each type's ``max_age`` and ``max_count``
    (the latest kept) and ``custom_types_max`` (as :func:`engine.state.apply`);
  - cart lines and favorites: union; the later ``ts`` wins for a product;
    then their count and age bounds;
  - consent: per channel the latest decision by event time; at the same
    ``ts`` the opt-out wins (the safe side, and independent of merge order);
  - profile: the user's value wins; the anonymous id's other attributes are
    added up to ``profile_max_keys``;
  - re-entry history (``entered``): counts add, ``last`` is the later one;
    cap history (``sends``): union in ``ts`` order, so caps count both;
  - enrollments: the anonymous id's active ones move to the user. Where both
    hold one in the same slot (journey and key), the one that entered first
    stays (at the same ``entered`` the user's stays) and the other ends,
    counted in :attr:`MergeResult.ended` (``Engine.ended["merged"]``);
  - experiments: goal entries per journey, the later entry; sent-action
    references (engagement attribution), both;
  - ``events`` and ``types_dropped`` add; ``first_seen`` / ``last_seen``
    widen; the anonymous id (and any ids it had merged) joins ``merged``.

* Action ids stay stable: a moved enrollment remembers the key it started
  under (``Enrollment.origin``) and its later action ids still hash that key,
  while the actions themselves name the user (``Action.user_id``). Ids stay
  unique: the user's own enrollments hash the user's key, and since re-entry
  counts add, the user's next ``seq`` in a merged slot is past both.
* :func:`link` is the whole step at a link event, for replay and the live
  shard alike: the due timers of both states fire first (each at its due
  time, each under its own key), then the merge; the caller then handles the
  link event for the user as usual (``Engine.on_event``: apply, exits,
  triggers), so a merged cart journey meets the user's purchase.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from typing import TypeVar

import msgspec

from engine.actions import Action
from engine.events import STANDARD_TYPES, Event
from engine.history import merge_rollups
from engine.journeys import MAX_ENTRY_HISTORY, Engine
from engine.rules.model import Rules
from engine.state import (
    MAX_MERGED,
    CartLine,
    Consent,
    Enrollment,
    Entered,
    UserState,
    reset_ids,
)
from engine.windows import DEFAULT_CONFIG, Stored, WindowConfig, evict_older

V = TypeVar("V")


class Resolution(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Where one event belongs: its identity key and what it does to the links."""

    event: Event  # the event to handle (re-keyed to the user when only a linked anon_id)
    key: str  # the identity key of the state it is applied to
    link: str | None = None  # the anon_id this event links to ``event.user_id`` now
    conflict: bool = False  # the anon_id is linked to another user: not re-linked


class MergeResult(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What one :func:`merge` did."""

    merged: bool  # False: the id was merged before (or is the user's own): nothing changed
    records: int = 0  # window records the user gained (after de-duplication and bounds)
    moved: int = 0  # enrollments that moved to the user
    ended: int = 0  # enrollments ended because both held the same slot


class Linked(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What :func:`link` did: the actions the timers fired, and the merge."""

    fired: list[Action]
    merge: MergeResult


def resolve(event: Event, links: Mapping[str, str]) -> Resolution:
    """The identity key of ``event`` given the known links ``anon_id -> user_id``."""
    user, anon = event.user_id, event.anon_id
    if anon is None or anon == user:
        return Resolution(event=event, key=event.key)
    linked = links.get(anon)
    if user is None:
        if linked is None:
            return Resolution(event=event, key=anon)
        return Resolution(event=msgspec.structs.replace(event, user_id=linked), key=linked)
    if linked is None:
        return Resolution(event=event, key=user, link=anon)
    return Resolution(event=event, key=user, conflict=linked != user)


def identity_of(event: Event, links: Mapping[str, str]) -> str:
    """The identity key ``event`` is applied to (see :func:`resolve`)."""
    return resolve(event, links).key


def link(
    engine: Engine, user: UserState, anon: UserState | None, anon_key: str, now: int
) -> Linked:
    """Fire both states' due timers up to ``now``, then merge ``anon`` into ``user``.

    ``anon`` None (an id never seen before its link) merges nothing but is
    still remembered in ``user.merged``. The caller handles the link event
    next, for ``user``, and forgets ``anon``'s state.
    """
    fired = engine.advance(user, now) if user.enrollments else []
    other = anon if anon is not None else UserState(key=anon_key)
    if other.enrollments:
        fired.extend(engine.advance(other, now))
    result = merge(user, other, anon_key, now, engine.windows)
    if result.ended:
        engine.ended["merged"] += result.ended
    _forget_old_sends(user, engine.rules, now)
    return Linked(fired=fired, merge=result)


def merge(
    into: UserState,
    other: UserState,
    other_key: str,
    now: int,
    config: WindowConfig = DEFAULT_CONFIG,
) -> MergeResult:
    """Merge the state of anonymous id ``other_key`` into the user's (module rules)."""
    if other_key == into.key or other_key in into.merged:
        return MergeResult(merged=False)
    records = _merge_windows(into, other, now, config)
    _merge_cart(into, other, now, config)
    _merge_favorites(into, other, now, config)
    _merge_consent(into, other)
    _merge_profile(into, other, config)
    moved, ended = _merge_enrollments(into, other, other_key)
    _merge_entered(into, other)
    into.sends = list(heapq.merge(into.sends, other.sends, key=lambda sent: sent.ts))
    _merge_counters(into, other)
    _remember(into, [*other.merged, other_key])
    # Segments: the user's stored memberships stay; the link event that follows
    # re-evaluates every watched segment (engine.segments), so a membership the
    # anonymous history brings is entered then. The clock is the later of the two.
    into.clock = max(into.clock, other.clock)
    _merge_experiments(into, other)
    # All-time history: counts, revenue and months add (engine.history); an event
    # both ids applied (the same event_id under each) counts twice there.
    merge_rollups(into.rollups, other.rollups, config)
    return MergeResult(merged=True, records=records, moved=moved, ended=ended)


def _merge_experiments(into: UserState, other: UserState) -> None:
    """Goal entries: per journey the later entry stays (the last one entered);
    sent actions for engagement: both, the user's last (the bound applies at the next send)."""
    for journey, pending in other.goals.items():
        mine = into.goals.get(journey)
        if mine is None or pending.entered > mine.entered:
            into.goals[journey] = pending
    if other.sent_refs:
        into.sent_refs = {**other.sent_refs, **into.sent_refs}


# -- windows --------------------------------------------------------------------


def _ts(record: Stored) -> int:
    return record.ts


def _merge_windows(into: UserState, other: UserState, now: int, config: WindowConfig) -> int:
    """Union per type, de-duplicated by id hash, in ts order, bounds applied."""
    if not other.windows:
        return 0
    seen = {record.h for window in into.windows.values() for record in window}
    added = 0
    for name, records in other.windows.items():
        fresh = [record for record in records if record.h not in seen]
        if not fresh:
            continue
        seen.update(record.h for record in fresh)
        limits = config.limits(name)
        combined = list(heapq.merge(into.windows.get(name, ()), fresh, key=_ts))
        evict_older(combined, now - limits.max_age_ms)
        del combined[: max(0, len(combined) - limits.max_count)]
        new = {record.h for record in fresh}
        added += sum(1 for record in combined if record.h in new)
        if combined:
            into.windows[name] = combined
        else:
            into.windows.pop(name, None)
    _bound_custom_types(into, config.custom_types_max)
    reset_ids(into)
    return added


def _bound_custom_types(state: UserState, limit: int) -> None:
    """Drop the custom types whose newest record is oldest until ``limit`` remain."""
    custom = [name for name in state.windows if name not in STANDARD_TYPES]
    excess = len(custom) - limit
    if excess <= 0:
        return
    custom.sort(key=lambda name: (state.windows[name][-1].ts, name))
    for name in custom[:excess]:
        del state.windows[name]
        state.types_dropped += 1


# -- cart, favorites, consent, profile -------------------------------------------


def _merge_cart(into: UserState, other: UserState, now: int, config: WindowConfig) -> None:
    for pid, line in other.cart.items():
        mine = into.cart.get(pid)
        if mine is None or line.ts > mine.ts:
            into.cart[pid] = CartLine(line.quantity, line.price, line.category, line.ts)
    cutoff = now - config.cart_max_age_ms
    for pid in [pid for pid, line in into.cart.items() if line.ts < cutoff]:
        del into.cart[pid]
    _keep_latest(into.cart, config.cart_max_lines, {p: c.ts for p, c in into.cart.items()})


def _merge_favorites(into: UserState, other: UserState, now: int, config: WindowConfig) -> None:
    for pid, ts in other.favorites.items():
        into.favorites[pid] = max(ts, into.favorites.get(pid, ts))
    cutoff = now - config.favorites_max_age_ms
    for pid in [pid for pid, ts in into.favorites.items() if ts < cutoff]:
        del into.favorites[pid]
    _keep_latest(into.favorites, config.favorites_max, dict(into.favorites))


def _keep_latest(mapping: dict[str, V], limit: int, ts_of: dict[str, int]) -> None:
    """Drop the oldest entries (ties by product id) until ``limit`` remain."""
    excess = len(mapping) - limit
    if excess > 0:
        for pid in sorted(mapping, key=lambda p: (ts_of[p], p))[:excess]:
            del mapping[pid]


def _merge_consent(into: UserState, other: UserState) -> None:
    """Per channel the later decision; at the same ts the opt-out wins."""
    for channel, theirs in other.consent.items():
        mine = into.consent.get(channel)
        if mine is None or (theirs.ts, not theirs.granted) > (mine.ts, not mine.granted):
            into.consent[channel] = Consent(theirs.granted, theirs.ts)


def _merge_profile(into: UserState, other: UserState, config: WindowConfig) -> None:
    for name, value in other.profile.items():
        if name not in into.profile and len(into.profile) < config.profile_max_keys:
            into.profile[name] = value


# -- journeys: enrollments, re-entry history ---------------------------------------


def _merge_enrollments(into: UserState, other: UserState, other_key: str) -> tuple[int, int]:
    """Move the anonymous id's enrollments; (moved, ended) for shared slots."""
    moved = ended = 0
    for slot, theirs in other.enrollments.items():
        copy = msgspec.structs.replace(
            theirs, actions=list(theirs.actions), origin=theirs.origin or other_key
        )
        mine = into.enrollments.get(slot)
        if mine is not None:
            ended += 1
            if not _entered_first(copy, mine):
                continue
        into.enrollments[slot] = copy
        moved += 1
    return moved, ended


def _entered_first(theirs: Enrollment, mine: Enrollment) -> bool:
    """True when the anonymous id's enrollment is the older (a tie keeps the user's)."""
    return theirs.entered < mine.entered


def _merge_entered(into: UserState, other: UserState) -> None:
    """Counts add, ``last`` is the later; bounded as the journeys keep it."""
    for slot, theirs in other.entered.items():
        mine = into.entered.get(slot)
        if mine is None:
            into.entered[slot] = Entered(theirs.count, theirs.last)
        else:
            into.entered[slot] = Entered(mine.count + theirs.count, max(mine.last, theirs.last))
    excess = len(into.entered) - MAX_ENTRY_HISTORY
    if excess > 0:
        oldest = sorted(into.entered, key=lambda s: (into.entered[s].last, s))
        for slot in [s for s in oldest if s not in into.enrollments][:excess]:
            del into.entered[slot]


def _forget_old_sends(state: UserState, rules: Rules, now: int) -> None:
    """Keep only the sends a cap of ``rules`` can still see (as ``record_send`` does)."""
    if not rules.caps:
        return
    horizon = now - max(cap.per_ms for cap in rules.caps)
    state.sends = [sent for sent in state.sends if sent.ts > horizon]


# -- counters and the merged ids ----------------------------------------------------


def _merge_counters(into: UserState, other: UserState) -> None:
    if other.events:
        first = other.first_seen if not into.events else min(into.first_seen, other.first_seen)
        into.first_seen = first
        into.last_seen = max(into.last_seen, other.last_seen)
        into.events += other.events
    into.types_dropped += other.types_dropped


def _remember(into: UserState, keys: list[str]) -> None:
    for key in keys:
        if key not in into.merged and key != into.key:
            into.merged.append(key)
    del into.merged[: max(0, len(into.merged) - MAX_MERGED)]
