"""Backtest: run compiled rules over a past event log on a virtual clock (SPEC section 5).

Rules of this interface:

* The clock is virtual: it moves to each event's ``ts`` (never backwards: an
  event older than the clock is applied at the clock) and, before an event
  is applied, the user's timers due at or before that time fire, each at its
  due time. Users are independent, so running each user's timers lazily, at
  their next event, gives the same actions as one global timer queue.
* After the last event the clock stops there, unless ``until`` (events after
  it are not applied, timers up to it fire) or ``drain`` (every pending timer
  fires).
* A bad line is reported through ``on_error(line_number, reason)`` and
  skipped; nothing else stops the run. A bad line is one that does not
  decode, or whose ``ts`` is more than a day after ``received`` (the moment
  the backtest runs, unless given: live, it is the time the message reached
  Kafka; see :func:`engine.events.check_not_future`).
* An event whose processing raises (a bug, never expected) is left out as
  if it never came, as the live engine dead-letters it: the run starts again
  without it, and :attr:`ReplayStats.failed` lists it with the exception.
* The result is every action, in SPEC order (``at``, user, ``action_id``).
* Memory: a user's state is pruned with :func:`engine.state.prune`, the live
  engine's retention, at most once per :data:`PRUNE_EVERY` (a week) of virtual time
  (after one of the user's events). Reads ignore what retention drops, pruned
  or not (:mod:`engine.retention`), so this changes no action.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from engine.actions import Action
from engine.errors import InvalidEvent
from engine.events import Event, check_not_future, decode_event
from engine.journeys import Engine, replay_order
from engine.state import UserState, prune

FOREVER = 2**62
PRUNE_EVERY = 7 * 86_400_000  # virtual ms between two prunes of one user's state


@dataclass
class ReplayStats:
    """What a replay did, for its summary line."""

    lines: int = 0
    events: int = 0
    invalid: int = 0
    users: int = 0
    actions: dict[str, int] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)  # "event_id: ExceptionClass: message"


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
) -> list[Action]:
    """Run ``engine`` over JSONL ``lines``; return every action in SPEC order."""
    stats = stats if stats is not None else ReplayStats()
    reference = received if received is not None else time.time_ns() // 1_000_000
    events = _decode(lines, on_error, stats, reference)
    return replay_events(engine, events, until=until, drain=drain, stats=stats)


def _decode(
    lines: Iterable[bytes],
    on_error: Callable[[int, str], None],
    stats: ReplayStats,
    received: int,
) -> Iterator[Event]:
    """The valid events of a JSONL log; bad lines go to ``on_error``."""
    for number, line in enumerate(lines, start=1):
        stats.lines += 1
        if not line.strip():
            continue
        try:
            event = decode_event(line)
            check_not_future(event, received)
        except InvalidEvent as exc:
            stats.invalid += 1
            on_error(number, exc.reason)
            continue
        yield event


def replay_events(
    engine: Engine,
    events: Iterable[Event],
    *,
    until: int | None = None,
    drain: bool = False,
    stats: ReplayStats | None = None,
) -> list[Action]:
    """Run ``engine`` over decoded events on the virtual clock; actions in SPEC order."""
    stats = stats if stats is not None else ReplayStats()
    log = events if isinstance(events, Sequence) else list(events)
    skipped: set[int] = set()
    while True:
        run = ReplayStats(stats.lines, 0, stats.invalid)
        try:
            actions = _run(engine, log, skipped, until, drain, run)
        except _Poison as poison:
            skipped.add(id(poison.event))
            error = poison.error
            stats.failed.append(f"{poison.event.event_id}: {type(error).__name__}: {error}")
            continue
        stats.events, stats.users, stats.actions = run.events, run.users, run.actions
        return actions


def _run(
    engine: Engine,
    events: Sequence[Event],
    skipped: set[int],
    until: int | None,
    drain: bool,
    stats: ReplayStats,
) -> list[Action]:
    states: dict[str, UserState] = {}
    pruned: dict[str, int] = {}  # user -> virtual time of the last prune
    actions: list[Action] = []
    clock = 0
    for event in events:
        if (until is not None and event.ts > until) or (skipped and id(event) in skipped):
            continue
        clock = max(clock, event.ts)
        key = event.key
        state = states.get(key)
        if state is None:
            state = states[key] = UserState(key=key)
            pruned[key] = clock
        stats.events += 1
        try:
            actions.extend(engine.on_event(state, event, clock))
        except Exception as exc:  # a bug; live dead-letters the event, replay leaves it out
            raise _Poison(event, exc) from exc
        if clock - pruned[key] >= PRUNE_EVERY:
            pruned[key] = clock
            prune(state, clock, engine.windows)
    end = FOREVER if drain else (until if until is not None else clock)
    for state in states.values():
        try:
            actions.extend(engine.advance(state, end))
        except Exception as exc:  # a bug: live reports it and retries later; nothing fires
            stats.failed.append(f"timers of {state.key}: {type(exc).__name__}: {exc}")
    stats.users = len(states)
    for action in actions:
        stats.actions[action.status] = stats.actions.get(action.status, 0) + 1
    return replay_order(actions)
