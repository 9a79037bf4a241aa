"""A user's state: what each event type changes, duplicates, staleness, bounds, persistence."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.events import Event, decode_event
from engine.state import (
    UserState,
    apply,
    cart_count,
    cart_total,
    dumps,
    loads,
    prune,
    to_view,
)
from engine.windows import DEFAULT_CONFIG, WindowConfig, WindowLimits, event_hash

# No example database in the work tree; no deadline, so a loaded CI machine cannot flake.
FUZZ = settings(database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NOW = 1_714_557_600_000  # 2024-05-01T10:00:00Z
HOUR = 3_600_000
DAY = 24 * HOUR
_serial = itertools.count()


def ev(event_type: str, ts: int = NOW, eid: str | None = None, /, **fields: Any) -> Event:
    """A validated event (through the real decoder) for user u1."""
    eid = eid or f"e{next(_serial)}"
    doc = {"event_id": eid, "type": event_type, "ts": ts, "user_id": "u1", **fields}
    return decode_event(json.dumps(doc))


def run(*events: Event, now: int = NOW, config: WindowConfig = DEFAULT_CONFIG) -> UserState:
    state = UserState()
    for event in events:
        assert apply(state, event, now, config) == "applied"
    return state


def cart(state: UserState) -> dict[str, tuple[int, float | None]]:
    return {pid: (line.quantity, line.price) for pid, line in state.cart.items()}


# -- cart ---------------------------------------------------------------------


def test_add_to_cart_creates_a_line() -> None:
    state = run(ev("add_to_cart", product_id="p1", price=10, quantity=2, category="shoes/running"))
    line = state.cart["p1"]
    assert (line.quantity, line.price, line.category, line.ts) == (2, 10.0, "shoes/running", NOW)
    assert (cart_count(state), cart_total(state)) == (2, 20.0)


def test_add_to_cart_again_increments_quantity_and_updates_price() -> None:
    state = run(
        ev("add_to_cart", product_id="p1", price=10, quantity=2),
        ev("add_to_cart", product_id="p1", price=12),
    )
    assert cart(state) == {"p1": (3, 12.0)}
    apply(state, ev("add_to_cart", product_id="p1"), NOW)  # no price: the last one stays
    assert cart(state) == {"p1": (4, 12.0)}
    assert (cart_count(state), cart_total(state)) == (4, 48.0)


@pytest.mark.parametrize(
    ("quantity", "left"),
    [({"quantity": 1}, {"p1": (2, 5.0)}), ({"quantity": 3}, {}), ({"quantity": 9}, {}), ({}, {})],
    ids=["fewer", "all", "more", "no-quantity"],
)
def test_remove_from_cart(quantity: dict[str, int], left: dict[str, Any]) -> None:
    state = run(
        ev("add_to_cart", product_id="p1", price=5, quantity=3),
        ev("add_to_cart", product_id="p2", price=1),
        ev("remove_from_cart", product_id="p1", **quantity),
    )
    assert cart(state) == {**left, "p2": (1, 1.0)}


def test_cart_line_cap_drops_the_oldest_line() -> None:
    state = run(
        ev("add_to_cart", NOW - 3 * HOUR, product_id="p1"),
        ev("add_to_cart", NOW - 2 * HOUR, product_id="p2"),
        ev("add_to_cart", NOW - 1 * HOUR, product_id="p3"),
        config=WindowConfig(cart_max_lines=2),
    )
    assert list(state.cart) == ["p2", "p3"]


def test_remove_from_cart_of_absent_product_is_recorded_only() -> None:
    state = run(ev("add_to_cart", product_id="p1"), ev("remove_from_cart", product_id="zz"))
    assert cart(state) == {"p1": (1, None)}
    assert [r.product_id for r in state.windows["remove_from_cart"]] == ["zz"]


def test_purchase_with_items_removes_only_those_lines() -> None:
    state = run(
        *[ev("add_to_cart", product_id=p, quantity=2) for p in ("p1", "p2", "p3")],
        ev("purchase", items=[{"product_id": "p1", "quantity": 1}, {"product_id": "p3"}]),
    )
    assert cart(state) == {"p2": (2, None)}


def test_purchase_without_items_clears_the_cart() -> None:
    state = run(
        ev("add_to_cart", product_id="p1"),
        ev("add_to_cart", product_id="p2"),
        ev("purchase", order_id="o1", revenue=30),
    )
    assert state.cart == {}
    assert (cart_count(state), cart_total(state)) == (0, 0.0)


@pytest.mark.parametrize(
    ("fields", "revenue"),
    [
        (
            {
                "items": [
                    {"product_id": "a", "price": 10.5, "quantity": 2},
                    {"product_id": "b", "price": 3},
                ]
            },
            24.0,
        ),
        ({"items": [{"product_id": "a", "price": 0.1, "quantity": 3}]}, 0.3),
        ({"items": [{"product_id": "a"}]}, 0.0),
        ({"items": [{"product_id": "a", "price": 10}], "revenue": 99.9}, 99.9),
        ({"revenue": 0}, 0.0),
        ({}, None),
    ],
)
def test_purchase_revenue_defaults_to_sum_of_items(fields: dict[str, Any], revenue: Any) -> None:
    state = run(ev("purchase", **fields))
    assert state.windows["purchase"][0].revenue == revenue


def test_cart_total_rounds_to_cents_and_ignores_unpriced_lines() -> None:
    state = run(
        ev("add_to_cart", product_id="a", price=0.1, quantity=3),
        ev("add_to_cart", product_id="b", price=0.2),
        ev("add_to_cart", product_id="c", quantity=4),
    )
    assert cart_total(state) == 0.5
    assert cart_count(state) == 8
    assert (cart_total(UserState()), cart_count(UserState())) == (0.0, 0)


# -- favorites, consent, profile ------------------------------------------------


def test_favorites_add_remove_and_cap() -> None:
    config = WindowConfig(favorites_max=2)
    state = run(
        ev("add_favorite", NOW - 3 * HOUR, product_id="p1"),
        ev("add_favorite", NOW - 2 * HOUR, product_id="p2"),
        ev("add_favorite", NOW - 1 * HOUR, product_id="p3"),
        config=config,
    )
    assert state.favorites == {"p2": NOW - 2 * HOUR, "p3": NOW - HOUR}
    apply(state, ev("remove_favorite", product_id="p2"), NOW, config)
    apply(state, ev("remove_favorite", product_id="nope"), NOW, config)
    assert list(state.favorites) == ["p3"]


def consent(state: UserState) -> dict[str, tuple[bool, int]]:
    return {ch: (c.granted, c.ts) for ch, c in state.consent.items()}


def test_consent_latest_by_event_time_wins() -> None:
    state = run(ev("consent", NOW - 2 * HOUR, channel="email", granted=True))
    assert consent(state) == {"email": (True, NOW - 2 * HOUR)}
    apply(state, ev("consent", NOW - HOUR, channel="email", granted=False), NOW)
    assert consent(state) == {"email": (False, NOW - HOUR)}
    # An older opt-in that arrives late does not undo the newer opt-out.
    assert apply(state, ev("consent", NOW - 3 * HOUR, channel="email", granted=True), NOW) == (
        "applied"
    )
    assert consent(state) == {"email": (False, NOW - HOUR)}


def test_unsubscribed_engagement_revokes_only_that_channel() -> None:
    state = run(
        ev("consent", NOW - 2 * HOUR, channel="sms", granted=True),
        ev("consent", NOW - 2 * HOUR, channel="email", granted=True),
        ev("engagement", NOW - HOUR, action_id="a1", channel="sms", kind="unsubscribed"),
        ev("engagement", NOW - HOUR, action_id="a2", channel="push", kind="clicked"),
    )
    assert consent(state) == {"sms": (False, NOW - HOUR), "email": (True, NOW - 2 * HOUR)}


def test_unsubscribe_older_than_a_new_opt_in_does_not_revoke() -> None:
    state = run(
        ev("consent", NOW - HOUR, channel="sms", granted=True),
        ev("engagement", NOW - 2 * HOUR, action_id="a1", channel="sms", kind="unsubscribed"),
    )
    assert consent(state) == {"sms": (True, NOW - HOUR)}


def test_profile_merges_and_null_deletes() -> None:
    state = run(
        ev("profile", attributes={"first_name": "Ayşe", "email": "a@example.com"}),
        ev("profile", attributes={"first_name": "Ayse", "timezone": "Europe/Istanbul"}),
        ev("profile", attributes={"email": None, "never_set": None}),
    )
    assert state.profile == {"first_name": "Ayse", "timezone": "Europe/Istanbul"}


def test_profile_max_keys_stops_new_keys_but_updates_old_ones() -> None:
    state = run(
        ev("profile", attributes={"a": 1, "b": 2}),
        ev("profile", attributes={"c": 3, "a": 5}),
        config=WindowConfig(profile_max_keys=2),
    )
    assert state.profile == {"a": 5, "b": 2}


# -- windows --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "fields"),
    [
        (
            "view_product",
            {"product_id": "p1", "category": "shoes", "price": 5.5, "props": {"src": "ad"}},
        ),
        ("view_category", {"category": "shoes/running"}),
        ("search", {"query": "koşu"}),
        ("add_to_cart", {"product_id": "p1", "quantity": 2, "price": 1.25}),
        ("consent", {"channel": "sms", "granted": False}),
        ("engagement", {"action_id": "a1", "channel": "email", "kind": "opened"}),
        ("spin_wheel", {"props": {"prize": "10%", "n": [1, 2]}}),
    ],
)
def test_window_record_holds_the_stored_fields(kind: str, fields: dict[str, Any]) -> None:
    event = ev(kind, NOW - HOUR, **fields)
    state = run(event)
    [record] = state.windows[kind]
    assert record.ts == NOW - HOUR
    assert record.h == event_hash(event.event_id)
    for name, value in fields.items():
        assert getattr(record, name) == value


def test_purchase_record_holds_order_items_and_revenue() -> None:
    state = run(
        ev("purchase", order_id="o1", items=[{"product_id": "a", "price": 2, "quantity": 2}])
    )
    [record] = state.windows["purchase"]
    assert (record.order_id, record.revenue) == ("o1", 4.0)
    assert record.items is not None
    assert [(i.product_id, i.price, i.qty) for i in record.items] == [("a", 2.0, 2)]


def test_touch_tracks_key_count_and_seen_range() -> None:
    state = UserState()
    apply(state, ev("login", NOW - HOUR), NOW)
    apply(state, ev("login", NOW - 2 * HOUR), NOW)
    apply(state, ev("login", NOW - 30 * 60_000), NOW)
    assert (state.key, state.events) == ("u1", 3)
    assert (state.first_seen, state.last_seen) == (NOW - 2 * HOUR, NOW - 30 * 60_000)


def test_first_seen_zero_is_kept() -> None:
    state = UserState()
    apply(state, ev("login", 0), 0)
    apply(state, ev("login", 5), 5)
    assert (state.first_seen, state.last_seen) == (0, 5)


# -- duplicates and staleness ------------------------------------------------------


def busy_state() -> UserState:
    return run(
        ev("add_to_cart", NOW - 3 * HOUR, "cart-1", product_id="p1", price=9),
        ev("consent", NOW - 2 * HOUR, "consent-1", channel="sms", granted=True),
        ev("profile", NOW - HOUR, "profile-1", attributes={"first_name": "Can"}),
        ev("purchase", NOW - 90 * DAY, "order-1", revenue=5),
    )


@pytest.mark.parametrize(
    "again",
    [
        ev("add_to_cart", NOW - 3 * HOUR, "cart-1", product_id="p1", price=9),
        ev("add_to_cart", NOW, "cart-1", product_id="p9", quantity=5),  # same id, new body
        ev("consent", NOW, "consent-1", channel="sms", granted=False),
        ev("profile", NOW, "profile-1", attributes={"first_name": None}),
        ev("purchase", NOW - 90 * DAY, "order-1", revenue=5),
    ],
)
def test_duplicate_changes_nothing(again: Event) -> None:
    state = busy_state()
    before = dumps(state)
    assert apply(state, again, NOW) == "duplicate"
    assert dumps(state) == before
    resumed = loads(before)
    assert apply(resumed, again, NOW) == "duplicate"
    assert dumps(resumed) == before


@pytest.mark.parametrize(
    ("kind", "age", "outcome"),
    [
        ("view_product", 30 * DAY, "applied"),
        ("view_product", 30 * DAY + 1, "stale"),
        ("add_to_cart", 30 * DAY + 1, "stale"),
        ("consent", 30 * DAY + 1, "stale"),
        ("spin_wheel", 30 * DAY + 1, "stale"),
        ("purchase", 31 * DAY, "applied"),
        ("purchase", 400 * DAY, "applied"),
        ("purchase", 400 * DAY + 1, "stale"),
        ("view_product", -DAY, "applied"),  # ahead of the clock is not stale
    ],
)
def test_stale_by_type_age_changes_nothing(kind: str, age: int, outcome: str) -> None:
    fields = {
        "view_product": {"product_id": "p2"},
        "add_to_cart": {"product_id": "p2"},
        "consent": {"channel": "email", "granted": False},
    }.get(kind, {})
    state = busy_state()
    before = dumps(state)
    assert apply(state, ev(kind, NOW - age, **fields), NOW) == outcome
    assert (dumps(state) == before) == (outcome == "stale")


def test_prune_keeps_purchases_400_days_and_the_rest_30() -> None:
    state = run(
        ev("purchase", NOW, "buy", order_id="o1"),
        ev("view_product", NOW, "look", product_id="p1"),
        ev("add_to_cart", product_id="p1"),
        ev("add_favorite", product_id="p1"),
    )
    prune(state, NOW + 30 * DAY)
    assert set(state.windows) == {"purchase", "view_product", "add_to_cart", "add_favorite"}
    assert list(state.cart) == ["p1"]
    prune(state, NOW + 30 * DAY + 1)
    assert set(state.windows) == {"purchase"}
    assert (state.cart, state.favorites) == ({}, {"p1": NOW})
    later = NOW + 31 * DAY
    before = dumps(state)
    assert apply(state, ev("view_product", NOW, "look", product_id="p1"), later) == "stale"
    assert apply(state, ev("purchase", NOW, "buy", order_id="o1"), later) == "duplicate"
    assert dumps(state) == before
    prune(state, NOW + 400 * DAY)
    assert set(state.windows) == {"purchase"}
    prune(state, NOW + 400 * DAY + 1)
    assert (state.windows, state.favorites) == ({}, {})


def test_window_count_bound_keeps_the_latest() -> None:
    config = WindowConfig(default=WindowLimits(max_count=3))
    offsets = [5, 1, 4, 2, 3]
    state = run(*[ev("view_product", NOW - m, product_id="p") for m in offsets], config=config)
    assert [r.ts for r in state.windows["view_product"]] == [NOW - 3, NOW - 2, NOW - 1]


def test_count_evicted_ids_are_forgotten_the_same_way_after_resume() -> None:
    config = WindowConfig(default=WindowLimits(max_count=2))
    events = [ev("view_product", NOW - 10 + i, f"v{i}", product_id="p") for i in range(4)]
    live = run(*events, config=config)
    resumed = loads(dumps(live))
    for again in [*events, ev("view_product", NOW - 20, "v-old", product_id="p")]:
        assert apply(live, again, NOW, config) == apply(resumed, again, NOW, config)
        assert dumps(live) == dumps(resumed)
    assert [r.ts for r in live.windows["view_product"]] == [NOW - 8, NOW - 7]


def test_redelivery_of_count_evicted_event_changes_nothing() -> None:
    config = WindowConfig(default=WindowLimits(max_count=2))
    state = run(
        ev("add_to_cart", NOW - 2, product_id="p"),
        ev("add_to_cart", NOW - 1, product_id="p"),
        config=config,
    )
    late = ev("add_to_cart", NOW - HOUR, "late", product_id="p")
    apply(state, late, NOW, config)
    before = dumps(state)
    apply(state, late, NOW, config)
    assert dumps(state) == before


# -- persistence and views ---------------------------------------------------------


def test_dumps_loads_round_trip() -> None:
    state = busy_state()
    apply(state, ev("view_product", product_id="p1", props={"a": [1, 2.5, None]}), NOW)
    again = loads(dumps(state))
    assert again == state
    assert dumps(again) == dumps(state)
    assert dumps(loads(dumps(UserState()))) == dumps(UserState())


def test_to_view_is_readable_json() -> None:
    state = run(
        ev("add_to_cart", NOW - 2 * HOUR, product_id="p1", price=10, quantity=2),
        ev("add_to_cart", NOW - HOUR, product_id="p2"),
        ev("add_favorite", product_id="p1"),
        ev("consent", channel="email", granted=True),
        ev("profile", attributes={"first_name": "Can"}),
        ev("view_product", product_id="p1", price=5),
        ev("purchase", NOW, "o", items=[{"product_id": "p9", "price": 2}]),
    )
    view = json.loads(json.dumps(to_view(state)))
    assert view["user"] == "u1"
    assert view["events_applied"] == 7
    assert view["cart"]["total"] == 20.0
    assert view["cart"]["count"] == 3
    assert [line["product_id"] for line in view["cart"]["lines"]] == ["p1", "p2"]
    assert view["favorites"] == [{"product_id": "p1", "ts": NOW}]
    assert view["consent"] == {"email": {"granted": True, "ts": NOW}}
    assert view["profile"] == {"first_name": "Can"}
    assert view["windows"]["view_product"] == [{"ts": NOW, "product_id": "p1", "price": 5.0}]
    assert view["windows"]["purchase"] == [
        {"ts": NOW, "revenue": 2.0, "items": [{"product_id": "p9", "price": 2.0}]}
    ]
    assert all("h" not in r for w in view["windows"].values() for r in w)


# -- properties --------------------------------------------------------------------

SMALL = WindowConfig(
    default=WindowLimits(max_count=3, max_age_ms=10 * DAY),
    types={"purchase": WindowLimits(max_count=2, max_age_ms=40 * DAY)},
    cart_max_lines=2,
    cart_max_age_ms=5 * DAY,
    favorites_max=2,
    favorites_max_age_ms=20 * DAY,
    profile_max_keys=2,
)
PRODUCTS = st.sampled_from(["p1", "p2", "p3"])
QTY = st.none() | st.integers(1, 3)


def fields_for(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    product = st.fixed_dictionaries({"product_id": PRODUCTS}, optional={"quantity": QTY})
    return {
        "view_product": product,
        "add_to_cart": st.fixed_dictionaries(
            {"product_id": PRODUCTS},
            optional={"quantity": st.integers(1, 3), "price": st.integers(0, 9)},
        ),
        "remove_from_cart": product,
        "add_favorite": product,
        "purchase": st.fixed_dictionaries(
            {},
            optional={
                "items": st.lists(st.fixed_dictionaries({"product_id": PRODUCTS}), max_size=2)
            },
        ),
        "consent": st.fixed_dictionaries(
            {"channel": st.sampled_from(["email", "sms"]), "granted": st.booleans()}
        ),
        "profile": st.fixed_dictionaries(
            {"attributes": st.dictionaries(st.sampled_from("abc"), st.none() | st.integers(0, 3))}
        ),
    }[kind]


@st.composite
def one_event(draw: st.DrawFn, eid: str) -> Event:
    kind = draw(
        st.sampled_from(
            [
                "view_product",
                "add_to_cart",
                "remove_from_cart",
                "add_favorite",
                "purchase",
                "consent",
                "profile",
            ]
        )
    )
    ts = NOW + draw(st.integers(-60, 20)) * 12 * HOUR  # ties happen; some are stale
    return ev(kind, ts, eid, **draw(fields_for(kind)))


@st.composite
def histories(draw: st.DrawFn) -> list[tuple[Event, int, bool]]:
    """(event, clock, prune first?) steps; events are redelivered by reusing the pool."""
    pool = [draw(one_event(f"id{i}")) for i in range(draw(st.integers(1, 12)))]
    steps = []
    clock = NOW
    for index in draw(st.lists(st.integers(0, len(pool) - 1), max_size=40)):
        clock += draw(st.integers(0, 4)) * 6 * HOUR
        steps.append((pool[index], clock, draw(st.booleans())))
    return steps


def replay(state: UserState, steps: list[tuple[Event, int, bool]]) -> list[str]:
    outcomes = []
    for event, clock, do_prune in steps:
        if do_prune:
            prune(state, clock, SMALL)
        before = dumps(state)
        outcome = apply(state, event, clock, SMALL)
        if outcome != "applied":
            assert dumps(state) == before
        outcomes.append(outcome)
    return outcomes


@settings(FUZZ, max_examples=300)
@given(histories(), st.data())
def test_stop_and_resume_is_equivalent(steps: list[tuple[Event, int, bool]], data: Any) -> None:
    live = UserState()
    live_outcomes = replay(live, steps)
    cut = data.draw(st.integers(0, len(steps)))
    resumed = UserState()
    outcomes = replay(resumed, steps[:cut])
    resumed = loads(dumps(resumed))
    outcomes += replay(resumed, steps[cut:])
    assert outcomes == live_outcomes
    assert dumps(resumed) == dumps(live)


@settings(FUZZ, max_examples=300)
@given(histories())
def test_state_stays_bounded_and_ordered(steps: list[tuple[Event, int, bool]]) -> None:
    state = UserState()
    replay(state, steps)
    for name, window in state.windows.items():
        assert 0 < len(window) <= SMALL.limits(name).max_count
        assert [r.ts for r in window] == sorted(r.ts for r in window)
    hashes = [r.h for w in state.windows.values() for r in w]
    assert len(hashes) == len(set(hashes))
    assert len(state.cart) <= SMALL.cart_max_lines
    assert len(state.favorites) <= SMALL.favorites_max
    assert len(state.profile) <= SMALL.profile_max_keys


def test_distinct_custom_types_are_capped_oldest_dropped_and_counted() -> None:
    from engine.events import decode_event
    from engine.state import dumps

    config = WindowConfig(custom_types_max=3)
    state = UserState(key="u1")
    for i in range(6):
        raw = f'{{"event_id":"c{i}","type":"custom_{i}","ts":{1000 + i},"user_id":"u1"}}'
        assert apply(state, decode_event(raw), 1000 + i, config) == "applied"
    login = decode_event('{"event_id":"l","type":"login","ts":2000,"user_id":"u1"}')
    apply(state, login, 2000, config)
    assert sorted(state.windows) == ["custom_3", "custom_4", "custom_5", "login"]
    assert state.types_dropped == 3
    assert len(dumps(state)) < 1000


def test_many_custom_types_keep_the_state_small() -> None:
    from engine.events import decode_event
    from engine.state import dumps

    state = UserState(key="u1")
    for i in range(5000):
        raw = f'{{"event_id":"c{i}","type":"t{i}","ts":{1000 + i},"user_id":"u1"}}'
        apply(state, decode_event(raw), 1000 + i)
    assert len(state.windows) == 50
    assert state.types_dropped == 4950
    assert len(dumps(state)) < 10_000
