"""The real engine with the faults of a bug, for the isolation tests of replay and live."""

from __future__ import annotations

from engine.actions import Action
from engine.events import Event
from engine.journeys import Engine
from engine.state import UserState


class FaultyEngine(Engine):
    """The real engine, plus a bug's faults for events whose id starts with ``poison``.

    ``poison-state*``: the state no longer serialises (msgpack cannot hold the
    number); any other ``poison*``: processing raises half-way, after the
    event was applied.
    """

    def handle(
        self, state: UserState, event: Event, now: int
    ) -> tuple[str, list[Action], list[Action]]:
        result = super().handle(state, event, now)
        if event.event_id.startswith("poison-state"):
            state.profile["points"] = 2**70
        elif event.event_id.startswith("poison"):
            raise OverflowError("injected")
        return result
