"""``engine.identity.merge``: each part of an anonymous id's state folded into the user's.

States are built by applying real decoded events; each test states the rule
of SPEC section 7 (or the module docstring, where the SPEC is silent) it checks.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import msgspec

from engine.events import Event, decode_event
from engine.identity import merge
from engine.state import MAX_MERGED, Enrollment, Entered, Sent, UserState, apply, dumps
from engine.windows import DEFAULT_CONFIG, WindowConfig, WindowLimits, event_hash

NOW = 1_714_557_600_000  # 2024-05-01T10:00:00Z
HOUR = 3_600_000
DAY = 24 * HOUR
_serial = itertools.count()


def ev(kind: str, ts: int, who: str, eid: str | None = None, **fields: Any) -> Event:
    ident = {"anon_id": who} if who.startswith("a") else {"user_id": who}
    doc = {"event_id": eid or f"m{next(_serial)}", "type": kind, "ts": ts, **ident, **fields}
    return decode_event(json.dumps(doc))


def state(who: str, *events: Event, config: WindowConfig = DEFAULT_CONFIG) -> UserState:
    built = UserState(key=who)
    for one in events:
        assert apply(built, one, NOW, config) == "applied"
    return built


def ts_of(s: UserState, kind: str) -> list[int]:
    return [record.ts for record in s.windows[kind]]


# -- windows ------------------------------------------------------------------------


def test_windows_union_in_ts_order_deduplicated_by_event_id() -> None:
    user = state("U1", ev("view_product", NOW - 3, "U1", "shared", product_id="p"))
    user_more = ev("view_product", NOW - 1, "U1", product_id="p")
    apply(user, user_more, NOW)
    anon = state(
        "a1",
        ev("view_product", NOW - 4, "a1", product_id="p"),
        ev("view_product", NOW - 3, "a1", "shared", product_id="p"),  # same id: once
        ev("view_product", NOW - 2, "a1", product_id="p"),
        ev("search", NOW - 2, "a1", query="shoes"),
    )
    result = merge(user, anon, "a1", NOW)
    assert ts_of(user, "view_product") == [NOW - 4, NOW - 3, NOW - 2, NOW - 1]
    assert ts_of(user, "search") == [NOW - 2]
    assert result.records == 3
    # The id cache follows: the shared and the merged ids are duplicates now.
    assert apply(user, ev("search", NOW, "U1", "shared", query="x"), NOW) == "duplicate"


def test_windows_keep_the_latest_max_count_and_drop_what_is_too_old() -> None:
    config = WindowConfig(default=WindowLimits(max_count=3, max_age_ms=DAY))
    user = state("U1", *(ev("view_product", NOW - t, "U1", product_id="p") for t in (50, 30)))
    anon = state(
        "a1",
        *(ev("view_product", NOW - t, "a1", product_id="p") for t in (60, 40, 10)),
        config=config,
    )
    old = Event(event_id="old", type="search", ts=NOW - 2 * DAY, anon_id="a1", query="q")
    apply(anon, old, NOW - 2 * DAY, config)  # in the anon's window, too old for the user now
    merge(user, anon, "a1", NOW, config)
    assert ts_of(user, "view_product") == [NOW - 40, NOW - 30, NOW - 10]
    assert "search" not in user.windows


def test_custom_types_stay_bounded() -> None:
    config = WindowConfig(custom_types_max=2)
    user = state("U1", ev("custom_a", NOW - 1, "U1"), config=config)
    anon = state("a1", ev("custom_b", NOW - 3, "a1"), ev("custom_c", NOW - 2, "a1"), config=config)
    merge(user, anon, "a1", NOW, config)
    assert sorted(user.windows) == ["custom_a", "custom_c"]  # custom_b was seen longest ago
    assert user.types_dropped == 1


# -- cart, favorites, consent, profile --------------------------------------------------


def test_cart_union_the_later_ts_wins_for_a_product() -> None:
    user = state(
        "U1",
        ev("add_to_cart", NOW - 5, "U1", product_id="p1", price=10),
        ev("add_to_cart", NOW - 1, "U1", product_id="p2", price=20),
    )
    anon = state(
        "a1",
        ev("add_to_cart", NOW - 3, "a1", product_id="p1", price=9, quantity=3),
        ev("add_to_cart", NOW - 3, "a1", product_id="p2", price=19),
        ev("add_to_cart", NOW - 3, "a1", product_id="p3", price=30),
    )
    merge(user, anon, "a1", NOW)
    lines = {pid: (line.quantity, line.price, line.ts) for pid, line in user.cart.items()}
    assert lines == {
        "p1": (3, 9.0, NOW - 3),  # the anon's line is later
        "p2": (1, 20.0, NOW - 1),  # the user's line is later
        "p3": (1, 30.0, NOW - 3),
    }
    anon.cart["p3"].quantity = 7
    assert user.cart["p3"].quantity == 1  # copied, not shared


def test_cart_bound_keeps_the_latest_lines() -> None:
    config = WindowConfig(cart_max_lines=2)
    user = state("U1", ev("add_to_cart", NOW - 1, "U1", product_id="p1"), config=config)
    anon = state(
        "a1",
        ev("add_to_cart", NOW - 3, "a1", product_id="p2"),
        ev("add_to_cart", NOW - 2, "a1", product_id="p3"),
        config=config,
    )
    merge(user, anon, "a1", NOW, config)
    assert sorted(user.cart) == ["p1", "p3"]


def test_favorites_union_the_later_ts_wins() -> None:
    user = state(
        "U1",
        ev("add_favorite", NOW - 5, "U1", product_id="p1"),
        ev("add_favorite", NOW - 1, "U1", product_id="p2"),
    )
    anon = state(
        "a1",
        ev("add_favorite", NOW - 3, "a1", product_id="p1"),
        ev("add_favorite", NOW - 3, "a1", product_id="p2"),
        ev("add_favorite", NOW - 4, "a1", product_id="p3"),
    )
    merge(user, anon, "a1", NOW)
    assert user.favorites == {"p1": NOW - 3, "p2": NOW - 1, "p3": NOW - 4}


def test_consent_per_channel_the_latest_decision_wins() -> None:
    user = state(
        "U1",
        ev("consent", NOW - 5, "U1", channel="email", granted=True),
        ev("consent", NOW - 1, "U1", channel="sms", granted=True),
        ev("consent", NOW - 2, "U1", channel="push", granted=True),
    )
    anon = state(
        "a1",
        ev("consent", NOW - 3, "a1", channel="email", granted=False),  # later: wins
        ev("consent", NOW - 3, "a1", channel="sms", granted=False),  # older: loses
        ev("consent", NOW - 2, "a1", channel="push", granted=False),  # same ts: opt-out wins
        ev("consent", NOW - 3, "a1", channel="whatsapp", granted=True),
    )
    merge(user, anon, "a1", NOW)
    decisions = {ch: (c.granted, c.ts) for ch, c in user.consent.items()}
    assert decisions == {
        "email": (False, NOW - 3),
        "sms": (True, NOW - 1),
        "push": (False, NOW - 2),
        "whatsapp": (True, NOW - 3),
    }


def test_same_ts_consent_tie_is_opt_out_whichever_side_holds_it() -> None:
    user = state("U1", ev("consent", NOW - 2, "U1", channel="push", granted=False))
    anon = state("a1", ev("consent", NOW - 2, "a1", channel="push", granted=True))
    merge(user, anon, "a1", NOW)
    assert user.consent["push"].granted is False


def test_profile_the_users_value_wins_and_the_anons_others_are_added() -> None:
    user = state("U1", ev("profile", NOW - 9, "U1", attributes={"first_name": "Can"}))
    anon = state(
        "a1", ev("profile", NOW - 1, "a1", attributes={"first_name": "X", "timezone": "UTC"})
    )
    merge(user, anon, "a1", NOW)
    assert user.profile == {"first_name": "Can", "timezone": "UTC"}


def test_profile_stays_within_max_keys() -> None:
    config = WindowConfig(profile_max_keys=2)
    user = state("U1", ev("profile", NOW - 9, "U1", attributes={"a": 1}), config=config)
    anon = state("a1", ev("profile", NOW - 1, "a1", attributes={"b": 2, "c": 3}), config=config)
    merge(user, anon, "a1", NOW, config)
    assert user.profile == {"a": 1, "b": 2}


# -- re-entry and cap history, counters -------------------------------------------------


def test_entered_counts_add_and_last_is_the_later() -> None:
    user, anon = UserState(key="U1"), UserState(key="a1")
    user.entered = {"j\x1f": Entered(2, NOW - 5), "k\x1f": Entered(1, NOW - 9)}
    anon.entered = {"j\x1f": Entered(3, NOW - 7), "l\x1f": Entered(1, NOW - 1)}
    merge(user, anon, "a1", NOW)
    history = {slot: (e.count, e.last) for slot, e in user.entered.items()}
    assert history == {"j\x1f": (5, NOW - 5), "k\x1f": (1, NOW - 9), "l\x1f": (1, NOW - 1)}


def test_sends_union_in_ts_order() -> None:
    user, anon = UserState(key="U1"), UserState(key="a1")
    user.sends = [Sent(NOW - 5, "email"), Sent(NOW - 1, "sms")]
    anon.sends = [Sent(NOW - 7, "push"), Sent(NOW - 3, "email")]
    merge(user, anon, "a1", NOW)
    assert [(s.ts, s.channel) for s in user.sends] == [
        (NOW - 7, "push"),
        (NOW - 5, "email"),
        (NOW - 3, "email"),
        (NOW - 1, "sms"),
    ]


def test_counters_combine() -> None:
    user = state("U1", ev("login", NOW - 5, "U1"), ev("login", NOW - 2, "U1"))
    anon = state(
        "a1", ev("search", NOW - 8, "a1", query="q"), ev("search", NOW - 6, "a1", query="r")
    )
    merge(user, anon, "a1", NOW)
    assert (user.events, user.first_seen, user.last_seen) == (4, NOW - 8, NOW - 2)
    empty = UserState(key="U2")
    merge(empty, anon, "a1", NOW)
    assert (empty.events, empty.first_seen, empty.last_seen) == (2, NOW - 8, NOW - 6)


# -- enrollments ------------------------------------------------------------------------------


def enrollment(journey: str, entered: int, *actions: str, key: str = "") -> Enrollment:
    return Enrollment(
        journey=journey, key=key, seq=1, entered=entered, pc="1", due=NOW, actions=list(actions)
    )


def test_enrollments_move_and_remember_their_origin() -> None:
    user, anon = UserState(key="U1"), UserState(key="a1")
    anon.enrollments = {"cart\x1fp1": enrollment("cart", NOW - 5, "x1", key="p1")}
    result = merge(user, anon, "a1", NOW)
    moved = user.enrollments["cart\x1fp1"]
    assert (moved.origin, moved.actions, moved.entered) == ("a1", ["x1"], NOW - 5)
    assert (result.moved, result.ended) == (1, 0)
    moved.actions.append("x2")
    assert anon.enrollments["cart\x1fp1"].actions == ["x1"]  # the anon's state is untouched


def test_an_origin_from_an_earlier_merge_is_kept() -> None:
    user, anon = UserState(key="U1"), UserState(key="a1")
    anon.enrollments = {"j\x1f": msgspec.structs.replace(enrollment("j", NOW), origin="a0")}
    merge(user, anon, "a1", NOW)
    assert user.enrollments["j\x1f"].origin == "a0"


def test_same_slot_the_older_enrollment_stays() -> None:
    user, anon = UserState(key="U1"), UserState(key="a1")
    user.enrollments = {
        "j\x1f": enrollment("j", NOW - 5, "u-j"),
        "k\x1f": enrollment("k", NOW - 1, "u-k"),
        "t\x1f": enrollment("t", NOW - 3, "u-t"),
    }
    anon.enrollments = {
        "j\x1f": enrollment("j", NOW - 4, "a-j"),  # younger: ends
        "k\x1f": enrollment("k", NOW - 2, "a-k"),  # older: replaces the user's
        "t\x1f": enrollment("t", NOW - 3, "a-t"),  # a tie: the user's stays
    }
    result = merge(user, anon, "a1", NOW)
    kept = {slot: e.actions for slot, e in user.enrollments.items()}
    assert kept == {"j\x1f": ["u-j"], "k\x1f": ["a-k"], "t\x1f": ["u-t"]}
    assert (result.moved, result.ended) == (1, 3)


# -- the merged ids ---------------------------------------------------------------------------


def test_a_second_merge_of_the_same_id_changes_nothing() -> None:
    user = state("U1", ev("login", NOW - 5, "U1"))
    anon = state("a1", ev("add_to_cart", NOW - 8, "a1", product_id="p1"))
    anon.entered = {"j\x1f": Entered(1, NOW - 8)}
    assert merge(user, anon, "a1", NOW).merged
    before = dumps(user)
    assert merge(user, anon, "a1", NOW).merged is False
    assert dumps(user) == before
    assert merge(user, user, "U1", NOW).merged is False  # never into itself


def test_merged_ids_are_remembered_latest_first_bounded() -> None:
    user = UserState(key="U1")
    relay = UserState(key="a0", merged=["b1", "b2"])
    merge(user, relay, "a0", NOW)
    assert user.merged == ["b1", "b2", "a0"]
    for n in range(MAX_MERGED + 5):
        merge(user, UserState(key=f"x{n}"), f"x{n}", NOW)
    assert len(user.merged) == MAX_MERGED
    assert user.merged[-1] == f"x{MAX_MERGED + 4}"


def test_event_hash_dedup_uses_the_same_hash_as_apply() -> None:
    """A record merged from the anon is recognised when its event comes again as the user."""
    anon = state("a1", ev("add_to_cart", NOW - 8, "a1", "cart-1", product_id="p1"))
    user = UserState(key="U1")
    merge(user, anon, "a1", NOW)
    assert user.windows["add_to_cart"][0].h == event_hash("cart-1")
    again = ev("add_to_cart", NOW - 8, "U1", "cart-1", product_id="p1")
    assert apply(user, again, NOW) == "duplicate"
    assert user.cart["p1"].quantity == 1
