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
  skipped; nothing else stops the run.
* The result is every action, in SPEC order (``at``, user, ``action_id``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from engine.actions import Action
from engine.errors import InvalidEvent
from engine.events import Event, decode_event
from engine.journeys import Engine, replay_order
from engine.state import UserState

FOREVER = 2**62


@dataclass
class ReplayStats:
    """What a replay did, for its summary line."""

    lines: int = 0
    events: int = 0
    invalid: int = 0
    users: int = 0
    actions: dict[str, int] = field(default_factory=dict)


def replay(
    engine: Engine,
    lines: Iterable[bytes],
    *,
    until: int | None = None,
    drain: bool = False,
    on_error: Callable[[int, str], None] = lambda _n, _r: None,
    stats: ReplayStats | None = None,
) -> list[Action]:
    """Run ``engine`` over JSONL ``lines``; return every action in SPEC order."""
    stats = stats if stats is not None else ReplayStats()
    events = _decode(lines, on_error, stats)
    return replay_events(engine, events, until=until, drain=drain, stats=stats)


def _decode(
    lines: Iterable[bytes], on_error: Callable[[int, str], None], stats: ReplayStats
) -> Iterator[Event]:
    """The valid events of a JSONL log; bad lines go to ``on_error``."""
    for number, line in enumerate(lines, start=1):
        stats.lines += 1
        if not line.strip():
            continue
        try:
            yield decode_event(line)
        except InvalidEvent as exc:
            stats.invalid += 1
            on_error(number, exc.reason)


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
    states: dict[str, UserState] = {}
    actions: list[Action] = []
    clock = 0
    for event in events:
        if until is not None and event.ts > until:
            continue
        clock = max(clock, event.ts)
        state = states.get(event.key)
        if state is None:
            state = states[event.key] = UserState(key=event.key)
        stats.events += 1
        actions.extend(engine.on_event(state, event, clock))
    end = FOREVER if drain else (until if until is not None else clock)
    for state in states.values():
        actions.extend(engine.advance(state, end))
    stats.users = len(states)
    for action in actions:
        stats.actions[action.status] = stats.actions.get(action.status, 0) + 1
    return replay_order(actions)
