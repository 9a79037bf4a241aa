"""Which journeys an event can trigger, found without looking at the others.

Rules of this interface:

* Journeys are grouped by trigger event type: an event only meets journeys
  that name its type.
* Within a type, a journey whose trigger condition requires
  ``event.F == <literal>`` (alone or as a conjunct of a top-level ``and``) is
  filed under (F, literal): an event only meets those whose literal equals its
  own value of F. This is the alpha-memory idea of Rete engines, and it is
  what lets a programme of a thousand campaign journeys cost about what ten
  do. The full condition is still evaluated for the journeys found.
* :meth:`TriggerIndex.candidates` returns journeys in file order, because the
  order decides which journey a shared cap serves first.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from engine.events import Event
from engine.rules.model import Condition, Journey
from engine.rules.names import PLAIN_EVENT_FIELDS
from engine.rules.nodes import Binary, Literal, Name, Node
from engine.rules.parser import parse


def equality_key(cond: Condition | None) -> tuple[str, Any] | None:
    """``(field, literal)`` when the condition needs ``event.field == literal``."""
    return None if cond is None else _find(parse(cond.source))


def _find(node: Node) -> tuple[str, Any] | None:
    if isinstance(node, Binary) and node.op == "and":
        return _find(node.left) or _find(node.right)
    if isinstance(node, Binary) and node.op == "==":
        return _field_literal(node.left, node.right) or _field_literal(node.right, node.left)
    return None


def _field_literal(name: Node, value: Node) -> tuple[str, Any] | None:
    if not (isinstance(name, Name) and len(name.parts) == 2 and name.parts[0] == "event"):
        return None
    # Only fields read as the plain attribute: defaulted ones (quantity, revenue)
    # and containers (props, items) would disagree with the compiled condition.
    if name.parts[1] not in PLAIN_EVENT_FIELDS:
        return None
    if not isinstance(value, Literal) or value.duration or value.value is None:
        return None
    return name.parts[1], value.value


class TriggerIndex:
    """The journeys triggered by one event type, filed by equality conditions."""

    def __init__(self, journeys: Iterable[tuple[int, Journey]]) -> None:
        self._always: list[tuple[int, Journey]] = []
        self._by_field: dict[str, dict[Any, list[tuple[int, Journey]]]] = {}
        for position, journey in journeys:
            key = equality_key(journey.trigger.cond)
            if key is None:
                self._always.append((position, journey))
            else:
                values = self._by_field.setdefault(key[0], {})
                values.setdefault(key[1], []).append((position, journey))
        self._plain = [journey for _, journey in self._always]  # shared: callers only read

    def candidates(self, event: Event) -> list[Journey]:
        """The journeys this event may enter, in file order."""
        if not self._by_field:
            return self._plain
        found = list(self._always)
        for field, values in self._by_field.items():
            matched = values.get(getattr(event, field, None))
            if matched:
                found.extend(matched)
        if len(found) > 1:
            found.sort(key=lambda pair: pair[0])
        return [journey for _, journey in found]
