"""Rules versions: in-flight enrollments keep their version, removed journeys end."""

from __future__ import annotations

from engine.journeys import Engine
from engine.state import UserState, dumps, loads
from tests.engine.test_journeys import event, load, utc

V1 = """
    version: 1
    consent: {email: opt_out, push: opt_out}
    templates:
      t1: {email: {subject: "v1 reminder"}}
      t2: {push: {title: "v2 reminder"}}
    journeys:
      - id: cart
        trigger: add_to_cart
        key: product_id
        exit: [purchase]
        steps:
          - wait: 1h
          - send: email
            template: t1
      - id: browse
        trigger: view_product
        steps:
          - wait: 2h
          - send: email
"""

V2 = """
    version: 1
    consent: {email: opt_out, push: opt_out}
    templates:
      t2: {push: {title: "v2 reminder"}}
    journeys:
      - id: cart
        trigger: add_to_cart
        key: product_id
        steps:
          - wait: 3h
          - send: push
            template: t2
"""


def test_an_enrollment_in_flight_finishes_on_the_version_it_entered_with() -> None:
    v1 = Engine(load(V1))
    state = UserState(key="u1")
    v1.on_event(state, event("add_to_cart", utc("10:00"), product_id="p1"), utc("10:00"))
    v2 = v1.successor(load(V2))
    v2.on_event(state, event("add_to_cart", utc("10:10"), product_id="p2"), utc("10:10"))
    actions = v2.advance(state, utc("23:00"))
    got = [(a.at, a.channel, a.template, a.rules_version, a.content) for a in actions]
    assert got == [
        (utc("11:00"), "email", "t1", v1.version, {"subject": "v1 reminder"}),
        (utc("13:10"), "push", "t2", v2.version, {"title": "v2 reminder"}),
    ]


def test_exits_of_an_enrollment_follow_its_own_version() -> None:
    """v1's cart exits on purchase, v2's does not: each enrollment keeps its rule."""
    v1 = Engine(load(V1))
    state = UserState(key="u1")
    v1.on_event(state, event("add_to_cart", utc("10:00"), product_id="p1"), utc("10:00"))
    v2 = v1.successor(load(V2))
    v2.on_event(state, event("add_to_cart", utc("10:05"), product_id="p2"), utc("10:05"))
    v2.on_event(state, event("purchase", utc("10:30")), utc("10:30"))
    assert [e.key for e in state.enrollments.values()] == ["p2"]


def test_a_journey_removed_in_the_new_version_ends_its_enrollments() -> None:
    v1 = Engine(load(V1))
    state = UserState(key="u1")
    v1.on_event(state, event("view_product", utc("10:00"), product_id="p1"), utc("10:00"))
    v2 = v1.successor(load(V2))
    assert v2.advance(state, utc("23:00")) == []
    assert state.enrollments == {}
    assert v2.ended == {"journey_removed": 1}


def test_the_next_event_ends_removed_journeys_before_their_timer() -> None:
    v1 = Engine(load(V1))
    state = UserState(key="u1")
    v1.on_event(state, event("view_product", utc("10:00"), product_id="p1"), utc("10:00"))
    v2 = v1.successor(load(V2))
    v2.on_event(state, event("search", utc("10:01"), query="x"), utc("10:01"))
    assert state.enrollments == {}
    assert v2.next_due(state) is None


def test_an_unretained_version_continues_on_the_current_one_when_its_step_exists() -> None:
    """After a restart that kept only v2, a v1 enrollment at step 1 runs v2's step 1."""
    v1 = Engine(load(V1))
    state = UserState(key="u1")
    v1.on_event(state, event("add_to_cart", utc("10:00"), product_id="p1"), utc("10:00"))
    fresh_v2 = Engine(load(V2))
    actions = fresh_v2.advance(loads(dumps(state)), utc("23:00"))
    assert [(a.channel, a.rules_version) for a in actions] == [("push", fresh_v2.version)]


def test_the_same_version_again_is_not_retired() -> None:
    v1 = Engine(load(V1))
    again = v1.successor(load(V1))
    assert again.version == v1.version
    assert again.retired == {}
