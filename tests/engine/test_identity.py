"""Identity stitching in replay (SPEC section 7): links, routing, conflicts, action ids.

Events go through the real decoder and ``replay``; expectations are worked
out by hand from the SPEC. Times are UTC on 2024-05-06; the rules' zone is UTC.
"""

from __future__ import annotations

import itertools
import textwrap
from typing import Any

import orjson
import pytest

from engine.actions import Action, action_id
from engine.events import Event, decode_event, parse_ts
from engine.identity import identity_of, link, resolve
from engine.journeys import Engine
from engine.replay import ReplayStats, replay
from engine.rules.loader import load_rules
from engine.rules.model import Rules
from engine.state import UserState, dumps, loads, to_view

_serial = itertools.count()
Row = tuple[int, str, str, str, str]  # at, user, journey, step, status


def utc(hm: str) -> int:
    return parse_ts(f"2024-05-06T{hm}:00Z")


def line(
    kind: str,
    hm: str,
    *,
    user: str | None = None,
    anon: str | None = None,
    eid: str | None = None,
    **fields: Any,
) -> bytes:
    body: dict[str, Any] = {"event_id": eid or f"i{next(_serial)}", "type": kind, "ts": utc(hm)}
    if user is not None:
        body["user_id"] = user
    if anon is not None:
        body["anon_id"] = anon
    return orjson.dumps({**body, **fields})


def event(kind: str, hm: str, **kw: Any) -> Event:
    return decode_event(line(kind, hm, **kw))


def load(text: str) -> Rules:
    return load_rules(textwrap.dedent(text), "identity.yaml")


CART = load(
    """
    version: 1
    timezone: UTC
    consent: {email: opt_out}
    journeys:
      - id: cart
        trigger: add_to_cart
        key: product_id
        reentry: always
        exit: [purchase]
        steps:
          - send: email
          - wait: 1h
          - send: email
    """
)


def actions(rules: Rules, lines: list[bytes], stats: ReplayStats | None = None) -> list[Action]:
    return replay(Engine(rules), lines, drain=True, stats=stats)


def rows(found: list[Action]) -> list[Row]:
    return [(a.at, a.user_id, a.journey, a.step, a.status) for a in found]


# -- resolve ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ids", "links", "key", "linked", "conflict"),
    [
        ({"anon": "a1"}, {}, "a1", None, False),  # unknown anon: its own key
        ({"anon": "a1"}, {"a1": "U1"}, "U1", None, False),  # linked anon: the user
        ({"user": "U1"}, {"a1": "U1"}, "U1", None, False),
        ({"user": "U1", "anon": "a1"}, {}, "U1", "a1", False),  # the link
        ({"user": "U1", "anon": "a1"}, {"a1": "U1"}, "U1", None, False),  # linked before
        ({"user": "U2", "anon": "a1"}, {"a1": "U1"}, "U2", None, True),  # no re-link
        ({"user": "x", "anon": "x"}, {}, "x", None, False),  # same id: nothing to link
    ],
)
def test_resolve(
    ids: dict[str, str], links: dict[str, str], key: str, linked: str | None, conflict: bool
) -> None:
    found = resolve(event("view_category", "10:00", category="c", **ids), links)
    assert (found.key, found.link, found.conflict) == (key, linked, conflict)
    assert found.event.key == key
    assert identity_of(found.event, links) == key


def test_a_linked_anon_event_is_rekeyed_as_a_copy() -> None:
    original = event("add_to_cart", "10:00", anon="a1", product_id="p1")
    found = resolve(original, {"a1": "U1"})
    assert original.user_id is None  # events stay immutable
    assert (found.event.user_id, found.event.anon_id) == ("U1", "a1")
    assert found.event.event_id == original.event_id


# -- the login scenario ----------------------------------------------------


def test_no_cart_email_after_the_purchase_as_the_user() -> None:
    """Cart as a1, login (U1 + a1), buy as U1: the 1h reminder never goes out."""
    lines = [
        line("add_to_cart", "10:00", anon="a1", product_id="p1"),
        line("login", "10:10", user="U1", anon="a1"),
        line("purchase", "10:20", user="U1"),
    ]
    stats = ReplayStats()
    assert rows(actions(CART, lines, stats)) == [(utc("10:00"), "a1", "cart", "0", "sent")]
    assert (stats.merged, stats.users, stats.identity_conflicts) == (1, 1, 0)


def test_without_the_link_the_reminder_still_goes_to_the_anon_id() -> None:
    """The control: the same log without the login keeps two identities."""
    lines = [
        line("add_to_cart", "10:00", anon="a1", product_id="p1"),
        line("purchase", "10:20", user="U1"),
    ]
    assert rows(actions(CART, lines)) == [
        (utc("10:00"), "a1", "cart", "0", "sent"),
        (utc("11:00"), "a1", "cart", "2", "sent"),
    ]


def test_moved_enrollment_keeps_its_action_ids_and_later_actions_name_the_user() -> None:
    lines = [
        line("add_to_cart", "10:00", anon="a1", product_id="p1"),
        line("login", "10:10", user="U1", anon="a1"),
    ]
    found = actions(CART, lines)
    enrollment = "p1\x1f1"
    assert [(a.user_id, a.step, a.action_id) for a in found] == [
        ("a1", "0", action_id("a1", "cart", enrollment, "0")),
        ("U1", "2", action_id("a1", "cart", enrollment, "2")),
    ]
    # The same ids as without the login: nothing already promised changes.
    alone = actions(CART, lines[:1])
    assert [a.action_id for a in alone] == [a.action_id for a in found]


def test_action_ids_stay_unique_when_the_user_enters_the_merged_slot_again() -> None:
    lines = [
        line("add_to_cart", "10:00", user="U1", product_id="p1"),  # U1 seq 1
        line("add_to_cart", "10:01", anon="a1", product_id="p1"),  # a1 seq 1
        line("login", "10:02", user="U1", anon="a1"),  # U1's is older: a1's ends
        line("purchase", "10:03", user="U1"),  # ends U1's
        line("add_to_cart", "10:04", anon="a1", product_id="p1"),  # -> U1, seq 3
    ]
    stats = ReplayStats()
    found = actions(CART, lines, stats)
    ids = [a.action_id for a in found]
    assert len(ids) == len(set(ids)) == 4
    assert rows(found) == [
        (utc("10:00"), "U1", "cart", "0", "sent"),
        (utc("10:01"), "a1", "cart", "0", "sent"),
        (utc("10:04"), "U1", "cart", "0", "sent"),  # re-entry after the purchase: seq 3
        (utc("11:04"), "U1", "cart", "2", "sent"),
    ]
    assert found[2].action_id == action_id("U1", "cart", "p1\x1f3", "0")
    assert stats.ended == {"merged": 1}


def test_anon_events_after_the_link_go_to_the_user() -> None:
    lines = [
        line("login", "10:00", user="U1", anon="a1"),
        line("add_to_cart", "10:05", anon="a1", product_id="p1"),
        line("purchase", "10:30", user="U1"),
    ]
    stats = ReplayStats()
    assert rows(actions(CART, lines, stats)) == [(utc("10:05"), "U1", "cart", "0", "sent")]
    assert stats.users == 1


def test_the_anons_due_timers_fire_under_its_own_key_before_the_merge() -> None:
    lines = [
        line("add_to_cart", "10:00", anon="a1", product_id="p1"),
        line("login", "12:00", user="U1", anon="a1"),
    ]
    assert rows(actions(CART, lines)) == [
        (utc("10:00"), "a1", "cart", "0", "sent"),
        (utc("11:00"), "a1", "cart", "2", "sent"),  # due before the link: a1's
    ]


def test_a_second_user_for_a_linked_anon_is_a_conflict_and_does_not_relink() -> None:
    lines = [
        line("login", "10:00", user="U1", anon="a1"),
        line("login", "10:01", user="U2", anon="a1"),  # applied to U2; a1 stays U1's
        line("add_to_cart", "10:02", anon="a1", product_id="p1"),  # -> U1
        line("purchase", "10:03", user="U2"),  # U2 has no cart journey: U1's goes on
    ]
    stats = ReplayStats()
    assert rows(actions(CART, lines, stats)) == [
        (utc("10:02"), "U1", "cart", "0", "sent"),
        (utc("11:02"), "U1", "cart", "2", "sent"),
    ]
    assert (stats.identity_conflicts, stats.merged, stats.users) == (1, 1, 2)


def test_a_reprocessed_link_event_merges_nothing_twice() -> None:
    login = line("login", "10:10", user="U1", anon="a1", eid="login-1")
    lines = [
        line("add_to_cart", "10:00", anon="a1", product_id="p1"),
        login,
        line("view_category", "10:15", anon="a1", category="c"),
        login,  # redelivered
    ]
    stats = ReplayStats()
    found = actions(CART, lines, stats)
    assert stats.merged == 1
    assert [a.user_id for a in found] == ["a1", "U1"]


def test_link_merges_once_and_records_the_id() -> None:
    engine = Engine(CART)
    anon, user = UserState(key="a1"), UserState(key="U1")
    engine.on_event(anon, event("add_to_cart", "10:00", anon="a1", product_id="p1"), utc("10:00"))
    first = link(engine, user, anon, "a1", utc("10:10"))
    assert (first.merge.merged, first.merge.moved, first.fired) == (True, 1, [])
    before = dumps(user)
    again = link(engine, user, anon, "a1", utc("10:10"))
    assert again.merge.merged is False
    assert dumps(user) == before
    assert user.merged == ["a1"]
    assert to_view(user)["merged"] == ["a1"]


def test_link_without_an_anon_state_still_remembers_the_id() -> None:
    engine = Engine(CART)
    user = UserState(key="U1")
    linked = link(engine, user, None, "a9", utc("10:00"))
    assert linked.merge.merged
    assert (user.merged, user.events) == (["a9"], 0)


def test_merged_state_round_trips_with_origin_and_merged() -> None:
    engine = Engine(CART)
    anon, user = UserState(key="a1"), UserState(key="U1")
    engine.on_event(anon, event("add_to_cart", "10:00", anon="a1", product_id="p1"), utc("10:00"))
    link(engine, user, anon, "a1", utc("10:10"))
    again = loads(dumps(user))
    assert again == user
    assert again.enrollments["cart\x1fp1"].origin == "a1"
    fired = engine.advance(again, utc("11:00"))
    assert [(a.user_id, a.action_id) for a in fired] == [
        ("U1", action_id("a1", "cart", "p1\x1f1", "2"))
    ]


def test_caps_count_the_anon_ids_sends_after_the_merge() -> None:
    rules = load(
        """
        version: 1
        timezone: UTC
        consent: {email: opt_out}
        caps: [{channel: any, max: 1, per: 24h}]
        journeys:
          - id: browse
            trigger: view_product
            steps: [{send: email}]
          - id: welcome
            trigger: signup
            steps: [{send: email}]
        """
    )
    lines = [
        line("view_product", "10:00", anon="a1", product_id="p1"),
        line("signup", "10:10", user="U1", anon="a1"),
    ]
    found = actions(rules, lines)
    assert [(a.user_id, a.journey, a.status, a.reason) for a in found] == [
        ("a1", "browse", "sent", None),
        ("U1", "welcome", "suppressed", "capped"),  # a1's send counts for U1
    ]


def test_reentry_history_counts_both_after_the_merge() -> None:
    rules = load(
        """
        version: 1
        timezone: UTC
        consent: {email: opt_out}
        journeys:
          - id: once
            trigger: view_product
            reentry: never
            steps: [{send: email}]
        """
    )
    lines = [
        line("view_product", "10:00", anon="a1", product_id="p1"),
        line("login", "10:10", user="U1", anon="a1"),
        line("view_product", "10:20", user="U1", product_id="p2"),  # entered as a1: never again
    ]
    assert rows(actions(rules, lines)) == [(utc("10:00"), "a1", "once", "0", "sent")]


def test_a_merged_cart_feeds_the_users_conditions_at_the_link_event() -> None:
    """The merge comes before the link event's triggers: they see the anon's cart."""
    rules = load(
        """
        version: 1
        timezone: UTC
        consent: {email: opt_out}
        journeys:
          - id: login_with_cart
            trigger: {event: login, if: "cart.count >= 2 and count(view_product, 1d) == 1"}
            steps: [{send: email}]
        """
    )
    lines = [
        line("add_to_cart", "10:00", anon="a1", product_id="p1", quantity=2),
        line("view_product", "10:01", anon="a1", product_id="p1"),
        line("login", "10:10", user="U1", anon="a1"),
    ]
    assert rows(actions(rules, lines)) == [(utc("10:10"), "U1", "login_with_cart", "0", "sent")]
