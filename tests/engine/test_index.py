"""The trigger index finds exactly the journeys an event can enter, in file order."""

from __future__ import annotations

import orjson
import pytest

from engine.events import decode_event
from engine.index import TriggerIndex, equality_key
from engine.rules.loader import load_rules

RULES = """version: 1
journeys:
  - {id: a, trigger: {event: view_product, if: "event.category == 'shoes'"}, steps: [exit]}
  - {id: b, trigger: {event: view_product, if: "count(view_product, 1h) > 1"}, steps: [exit]}
  - id: c
    trigger: {event: view_product, if: "event.price > 3 and 'bags' == event.category"}
    steps: [exit]
  - id: d
    trigger: {event: view_product, if: "event.category == 'shoes' or event.price > 1"}
    steps: [exit]
  - {id: e, trigger: view_product, steps: [exit]}
  - {id: f, trigger: {event: view_product, if: "event.category == 'shoes'"}, steps: [exit]}
"""


def journeys() -> TriggerIndex:
    rules = load_rules(RULES)
    return TriggerIndex(enumerate(rules.journeys))


def view(category: str) -> list[str]:
    event = decode_event(
        orjson.dumps(
            {
                "event_id": "1",
                "type": "view_product",
                "ts": 1,
                "user_id": "u",
                "product_id": "p",
                "category": category,
            }
        )
    )
    return [j.id for j in journeys().candidates(event)]


@pytest.mark.parametrize(
    ("source", "key"),
    [
        ("event.category == 'shoes'", ("category", "shoes")),
        ("event.price > 3 and 'bags' == event.category", ("category", "bags")),
        ("event.category == 'shoes' or event.price > 1", None),  # `or`: not a requirement
        ("not event.category == 'x'", None),
        ("event.props.campaign == 'bf'", None),  # nested fields are not indexed
        ("event.price == 5", ("price", 5)),
        ("event.quantity == 1", None),  # defaulted to 1 when absent: not the raw attribute
        ("event.revenue == 10", None),  # defaulted to the sum of items
        ("event.props == 'x'", None),  # a dict: unhashable
        ("event.price == 1h", None),  # durations are left alone
    ],
)
def test_equality_key(source: str, key: tuple[str, object] | None) -> None:
    from engine.rules.model import Condition

    assert equality_key(Condition(source, lambda _ctx: True)) == key


def test_candidates_are_the_matching_and_unindexed_journeys_in_file_order() -> None:
    assert view("shoes") == ["a", "b", "d", "e", "f"]
    assert view("bags") == ["b", "c", "d", "e"]
    assert view("hats") == ["b", "d", "e"]
