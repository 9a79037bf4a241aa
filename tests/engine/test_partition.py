"""engine.partition: a log cut by identity, each event at the whole log's clock."""

from __future__ import annotations

from pathlib import Path

from engine.events import Event
from engine.journeys import Engine
from engine.partition import independent, partition
from engine.rules.loader import load_rules, load_rules_file

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NOW = 1_714_557_600_000
RULES = """\
version: 1
journeys:
  - id: welcome
    trigger: signup
    steps:
      - send: push
"""


def ev(
    n: int, ts: int, user: str | None = None, anon: str | None = None, kind: str = "view_product"
) -> Event:
    fields = {"product_id": "p1"} if kind in ("view_product", "product_update") else {}
    return Event(event_id=f"e{n}", type=kind, ts=ts, user_id=user, anon_id=anon, **fields)


def parts_of(events: list[Event], n: int) -> list[set[str]]:
    return [{e.event_id for e in part.events} for part in partition(events, n)]


def test_linked_ids_fall_in_one_part_even_through_a_chain_and_a_conflict() -> None:
    events = [
        ev(1, NOW, anon="a1"),
        ev(2, NOW + 1, user="u1", anon="a1"),  # a1 -> u1
        ev(3, NOW + 2, anon="a2"),
        ev(4, NOW + 3, user="u2", anon="a2"),  # a2 -> u2
        ev(5, NOW + 4, user="u1", anon="a2"),  # a conflict still joins u1 and u2
        *[ev(10 + i, NOW + 10 + i, user=f"x{i}") for i in range(40)],
    ]
    for n in (2, 3, 7):
        together = {"e1", "e2", "e3", "e4", "e5"}
        assert sum(1 for part in parts_of(events, n) if together <= part) == 1
    assert len(partition(events, 4)) == 4  # 40 unlinked users spread over every part


def test_each_event_keeps_the_whole_logs_clock_and_order() -> None:
    events = [ev(i, NOW + (i * 7919) % 1000, user=f"u{i % 5}") for i in range(60)]
    parts = partition(events, 3)
    clocks = {}
    running = 0
    for event in events:
        running = max(running, event.ts)
        clocks[event.event_id] = running
    for part in parts:
        assert [clocks[e.event_id] for e in part.events] == part.clocks
        order = [events.index(e) for e in part.events]
        assert order == sorted(order)
        assert part.last == running
    assert sum(len(p.events) for p in parts) == len(events)


def test_events_after_until_are_in_no_part_and_the_clock_stops_before_them() -> None:
    events = [ev(1, NOW, user="u1"), ev(2, NOW + 50, user="u2"), ev(3, NOW + 10, user="u3")]
    parts = partition(events, 2, until=NOW + 20)
    assert {e.event_id for p in parts for e in p.events} == {"e1", "e3"}
    assert {p.last for p in parts} == {NOW + 10}


def test_the_same_log_cuts_the_same_way() -> None:
    events = [ev(i, NOW + i, user=f"u{i}") for i in range(100)]
    assert parts_of(events, 3) == parts_of(events, 3)


def test_what_joins_users_is_named() -> None:
    engine = Engine(load_rules(RULES, "rules.yaml"))
    assert independent(engine, [ev(1, NOW, user="u1")]) is None
    update = Event(event_id="p", type="product_update", ts=NOW, product_id="p1", price=9.0)
    assert "product updates" in (independent(engine, [update]) or "")
    cross_sell = Engine(load_rules_file(EXAMPLES / "cross_sell.yaml"))
    assert "bought_together" in (independent(cross_sell, []) or "")
    ranked = RULES.replace("trigger: signup", 'trigger: {event: signup, if: "rfm().r >= 4"}')
    assert "rfm()" in (independent(Engine(load_rules(ranked, "rules.yaml")), []) or "")
