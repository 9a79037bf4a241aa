"""Experiments (SPEC section 11): holdouts, splits, goals and their measurement events.

Rules of this interface:

* Assignment is a pure function of (salt, journey id, identity): the first 8
  bytes of a blake2b digest of the three, modulo 10,000 (a basis point). It
  does not depend on event order, on the rules version, on the process or on
  Python's ``hash()``, so replay and live agree. The identity is the key an
  enrollment's action ids hash (``Enrollment.origin``, else the state's key).
* ``holdout: 10%`` holds out the entrants whose ``"holdout"`` bucket is below
  1,000; a split (``- split: {a: 50, b: 50}``) gives the arm whose cumulative
  weight first passes the ``"split"`` bucket. The salts differ, so being held
  out says nothing about the arm. A journey has at most one split, never
  inside another (the loader refuses both), so a shopper has one arm per journey.
* Convention: a held-out entrant runs the journey's steps (waits, branches,
  quiet hours, the split) but each send is an action ``suppressed`` with
  reason ``holdout`` and ``variant: "holdout"``; other entrants' actions carry
  their arm's name after the split and ``variant: None`` before it or in a
  journey without a split.
* Goals: each entry into a journey with a ``goal`` records a :class:`GoalEntry`
  in ``UserState.goals`` (one per journey: the last entry wins, so a conversion
  is attributed to the last variant entered); the first goal event within
  ``within`` of the entry converts it once and forgets it; a record is dropped
  once ``within`` has passed. The goal event is checked after the event is
  applied and before exits and triggers, so the event that enters the journey
  never converts its own entry.
* :class:`Measure` is what the engine emits for reports, when its ``measures``
  list is set: ``entered`` (each entry, any journey), ``assigned`` (a split
  chose an arm) and ``converted``; ``entered`` and ``converted`` carry the
  watched segments the shopper was in at entry (``GoalEntry.segments`` keeps
  them until the conversion). Measures do not change the state: an engine
  that collects none runs exactly as one that does.
* Engagement (``delivered``, ``opened``, ``clicked``... with an ``action_id``)
  is attributed through ``UserState.sent_refs``: each sent action's journey,
  step, channel and variant, the latest :data:`MAX_SENT_REFS` per user, kept
  for the journeys with an experiment (holdout, split or goal), or for every
  journey when a condition calls ``engaged_in`` (so rules without either keep
  nothing more per shopper: the state stays as small as before). The
  state suffices live as in replay (a user's actions and engagement reach the
  same state), so the Redis action ledger is not read. The engine emits a
  measure of the engagement's kind for an attributed one, and
  ``engaged_in(JOURNEY [, KIND])`` reads it in conditions ("bought after
  clicking a push of the cart journey": a goal ``if: engaged_in(cart, clicked)``).
* :func:`next_local` is ``wait: {until: "10:00"}``: the first such wall time
  strictly after ``now`` in the zone (zoneinfo: correct across DST changes).
"""

from __future__ import annotations

import hashlib
import zoneinfo
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

import msgspec

from engine.actions import Action
from engine.rules.model import Arm, Split
from engine.state import SentRef, UserState

BASIS: Final = 10_000  # buckets: basis points
MAX_SENT_REFS: Final = 16  # sent actions per user whose engagement can be attributed
HOLDOUT_SALT: Final = "holdout"
SPLIT_SALT: Final = "split"
HOLDOUT: Final = "holdout"  # the variant of a held-out entrant's actions

MeasureKind = Literal[
    "entered", "assigned", "converted", "delivered", "opened", "clicked", "bounced", "unsubscribed"
]


class Measure(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One measurement event: an entry, an arm assignment or a conversion."""

    kind: MeasureKind
    at: int
    user_id: str
    journey: str
    variant: str | None = None  # "holdout" for a held-out entrant
    holdout: bool = False
    # Engagement measures (kind delivered, opened...): the action's step and channel.
    step: str | None = None
    channel: str | None = None
    # entered and converted: the watched segments the shopper was in at entry
    # (UserState.segments as the engine holds them when the shopper enters), sorted.
    segments: tuple[str, ...] = ()


def bucket(salt: str, journey: str, identity: str) -> int:
    """The stable bucket (0 to 9,999) of ``identity`` in ``journey`` for ``salt``."""
    raw = "\x1f".join((salt, journey, identity)).encode()
    digest = hashlib.blake2b(raw, digest_size=8).digest()
    return int.from_bytes(digest, "big") % BASIS


def held_out(journey: str, identity: str, share: int) -> bool:
    """Whether ``identity`` is in the holdout of ``share`` basis points."""
    return share > 0 and bucket(HOLDOUT_SALT, journey, identity) < share


def arm_of(split: Split, journey: str, identity: str) -> Arm:
    """The arm of ``split`` that ``identity`` belongs to (weights are percentages)."""
    point = bucket(SPLIT_SALT, journey, identity)
    total = sum(arm.weight for arm in split.arms)
    passed = 0
    for arm in split.arms:
        passed += arm.weight
        if point * total < passed * BASIS:
            return arm
    return split.arms[-1]


def next_local(now: int, tz: zoneinfo.ZoneInfo, minute: int) -> int:
    """The first local wall time ``minute`` (after midnight) strictly after ``now``.

    A wall time that a spring-forward gap skips maps past the gap (zoneinfo's rule).
    """
    local = datetime.fromtimestamp(now / 1000, UTC).astimezone(tz)
    wall = local.replace(tzinfo=None, hour=minute // 60, minute=minute % 60, second=0)
    wall = wall.replace(microsecond=0)
    for days in range(3):
        candidate = int((wall + timedelta(days=days)).replace(tzinfo=tz).timestamp() * 1000)
        if candidate > now:
            return candidate
    raise AssertionError("a wall time recurs within three days")  # pragma: no cover


def remember(state: UserState, action: Action) -> None:
    """Keep what a sent action was, for its engagement; the oldest go past the bound."""
    refs = state.sent_refs
    refs[action.action_id] = SentRef(
        action.journey, action.step, action.channel, action.at, action.variant or ""
    )
    while len(refs) > MAX_SENT_REFS:
        del refs[next(iter(refs))]


def attributed(state: UserState, action_id: str | None) -> SentRef | None:
    """The journey, step, channel and variant of one of the user's latest sent actions."""
    return None if action_id is None else state.sent_refs.get(action_id)


def engaged_in(state: UserState, journey: str, kinds: frozenset[str], since: int) -> bool:
    """Whether the engagement window holds, from ``since`` on, a record of one of
    ``kinds`` for a sent action of ``journey`` (``engaged_in(JOURNEY [, KIND])``)."""
    window = state.windows.get("engagement")
    refs = state.sent_refs
    if not window or not refs:
        return False
    for record in reversed(window):
        if record.ts < since:
            return False
        if record.kind in kinds and record.action_id is not None:
            ref = refs.get(record.action_id)
            if ref is not None and ref.journey == journey:
                return True
    return False
