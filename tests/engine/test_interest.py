"""``engine.interest``: a shopper's interest in a product, what an event touches, the index.

States are built by applying real decoded events; each test names the rule
of the module docstring (SPEC section 10) it checks.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from engine.events import Event, decode_event
from engine.interest import VIEW_INTEREST_MS, Interest, InterestIndex, interest_of, touched
from engine.state import UserState, apply
from engine.windows import DEFAULT_CONFIG, WindowConfig

T0 = 1_714_557_600_000  # 2024-05-01T10:00:00Z
HOUR = 3_600_000
DAY = 24 * HOUR
W = DEFAULT_CONFIG
_serial = itertools.count()


def ev(kind: str, ts: int, who: str = "u1", **fields: Any) -> Event:
    ident = {"anon_id": who} if who.startswith("a") else {"user_id": who}
    doc = {"event_id": f"i{next(_serial)}", "type": kind, "ts": ts, **ident, **fields}
    return decode_event(json.dumps(doc))


def shopper(*events: Event, config: WindowConfig = W) -> UserState:
    """A state built from ``events`` applied in order, each at its own time."""
    built = UserState()
    for one in events:
        assert apply(built, one, one.ts, config) == "applied"
    return built


# -- interest_of ----------------------------------------------------------------------


def test_no_interest_without_a_view_cart_or_favorite_of_that_product() -> None:
    state = shopper(ev("view_product", T0, product_id="p2", price=5), ev("search", T0, query="q"))
    assert interest_of(state, "p1", T0 + HOUR, W) is None
    assert interest_of(UserState(), "p1", T0, W) is None


def test_via_is_the_strongest_cart_then_favorite_then_view() -> None:
    view = ev("view_product", T0, product_id="p1", price=100)
    favorite = ev("add_favorite", T0 + 1, product_id="p1")
    cart = ev("add_to_cart", T0 + 2, product_id="p1", price=90)
    at = T0 + HOUR
    assert interest_of(shopper(view), "p1", at, W).via == "view"  # type: ignore[union-attr]
    assert interest_of(shopper(view, favorite), "p1", at, W).via == "favorite"  # type: ignore[union-attr]
    assert interest_of(shopper(favorite, cart), "p1", at, W).via == "cart"  # type: ignore[union-attr]
    assert interest_of(shopper(view, favorite, cart), "p1", at, W).via == "cart"  # type: ignore[union-attr]


def test_the_price_seen_is_that_of_the_latest_priced_view_cart_or_favorite() -> None:
    state = shopper(
        ev("view_product", T0, product_id="p1", price=100),
        ev("add_to_cart", T0 + HOUR, product_id="p1", price=95),
        ev("view_product", T0 + 2 * HOUR, product_id="p2", price=10),  # another product
        ev("view_product", T0 + 3 * HOUR, product_id="p1"),  # no price: skipped
        ev("add_favorite", T0 + 4 * HOUR, product_id="p1"),  # no price: skipped
    )
    assert interest_of(state, "p1", T0 + 5 * HOUR, W) == Interest(
        "cart",
        95.0,
        T0 + 4 * HOUR + W.favorites_max_age_ms,  # the favorite lasts longest
    )
    later = shopper(
        ev("add_to_cart", T0, product_id="p1", price=95),
        ev("view_product", T0 + HOUR, product_id="p1", price=88),
    )
    assert interest_of(later, "p1", T0 + 2 * HOUR, W).price == 88.0  # type: ignore[union-attr]


def test_an_interest_with_no_priced_event_has_no_price() -> None:
    state = shopper(ev("add_favorite", T0, product_id="p1"))
    assert interest_of(state, "p1", T0 + HOUR, W) == Interest(
        "favorite", None, T0 + W.favorites_max_age_ms
    )


def test_only_records_at_or_before_the_moment_count() -> None:
    state = shopper(
        ev("view_product", T0, product_id="p1", price=100),
        ev("view_product", T0 + 2 * HOUR, product_id="p1", price=80),
        ev("add_favorite", T0 + 2 * HOUR, product_id="p1"),
        ev("add_to_cart", T0 + 3 * HOUR, product_id="p1", price=80),
        ev("view_product", T0 + 3 * HOUR, product_id="p9", price=1),
    )
    # At T0 + 1h the shopper had only viewed it, at 100.
    assert interest_of(state, "p1", T0 + HOUR, W) == Interest("view", 100.0, T0 + VIEW_INTEREST_MS)
    # At T0 + 2h (inclusive) the second view and the favorite count, not the cart yet.
    at_two = interest_of(state, "p1", T0 + 2 * HOUR, W)
    assert at_two is not None
    assert (at_two.via, at_two.price) == ("favorite", 80.0)
    assert interest_of(state, "p1", T0 - 1, W) is None


def test_a_view_interests_for_30_days_and_no_longer() -> None:
    state = shopper(ev("view_product", T0, product_id="p1", price=100))
    assert VIEW_INTEREST_MS == 30 * DAY
    assert interest_of(state, "p1", T0 + 30 * DAY, W) == Interest(
        "view", 100.0, T0 + VIEW_INTEREST_MS
    )
    assert interest_of(state, "p1", T0 + 30 * DAY + 1, W) is None


def test_the_latest_view_counts_for_the_30_days() -> None:
    state = shopper(
        ev("view_product", T0, product_id="p1", price=100),
        ev("view_product", T0 + 10 * DAY, product_id="p1", price=90),
    )
    found = interest_of(state, "p1", T0 + 35 * DAY, W)
    assert found == Interest("view", 90.0, T0 + 40 * DAY)


def test_a_cart_line_interests_while_it_counts_and_is_in_the_cart() -> None:
    added = ev("add_to_cart", T0, product_id="p1", price=50)
    state = shopper(added)
    assert interest_of(state, "p1", T0 + W.cart_max_age_ms, W).via == "cart"  # type: ignore[union-attr]
    assert interest_of(state, "p1", T0 + W.cart_max_age_ms + 1, W) is None  # the line lapsed
    removed = shopper(added, ev("remove_from_cart", T0 + HOUR, product_id="p1"))
    assert interest_of(removed, "p1", T0 + 2 * HOUR, W) is None  # no view: nothing left
    bought = shopper(added, ev("purchase", T0 + HOUR, order_id="o1", items=[{"product_id": "p1"}]))
    assert interest_of(bought, "p1", T0 + 2 * HOUR, W) is None


def test_a_removed_favorite_leaves_only_the_view() -> None:
    state = shopper(
        ev("view_product", T0, product_id="p1", price=100),
        ev("add_favorite", T0 + HOUR, product_id="p1"),
        ev("remove_favorite", T0 + 2 * HOUR, product_id="p1"),
    )
    assert interest_of(state, "p1", T0 + 3 * HOUR, W) == Interest(
        "view", 100.0, T0 + VIEW_INTEREST_MS
    )
    gone = shopper(
        ev("add_favorite", T0, product_id="p1"),
        ev("remove_favorite", T0 + HOUR, product_id="p1"),
    )
    assert interest_of(gone, "p1", T0 + 2 * HOUR, W) is None


def test_expires_is_the_latest_of_the_ends() -> None:
    state = shopper(
        ev("add_to_cart", T0, product_id="p1", price=10),
        ev("view_product", T0 + 5 * DAY, product_id="p1", price=10),
    )
    found = interest_of(state, "p1", T0 + 6 * DAY, W)
    assert found == Interest("cart", 10.0, max(T0 + W.cart_max_age_ms, T0 + 35 * DAY))
    assert found.expires == T0 + 35 * DAY


# -- touched --------------------------------------------------------------------------


def test_product_events_touch_their_product() -> None:
    for kind in ("view_product", "add_to_cart", "remove_from_cart", "add_favorite"):
        assert touched(ev(kind, T0, product_id="p1"), ["p9"]) == {"p1"}
    assert touched(ev("remove_favorite", T0, product_id="p1"), []) == {"p1"}


def test_a_purchase_touches_its_items_or_without_items_the_cart_it_emptied() -> None:
    with_items = ev("purchase", T0, order_id="o", items=[{"product_id": "a"}, {"product_id": "b"}])
    assert touched(with_items, ["c"]) == {"a", "b"}
    without = ev("purchase", T0, order_id="o", revenue=10)
    assert touched(without, ["c", "d"]) == {"c", "d"}


def test_other_events_touch_nothing() -> None:
    assert touched(ev("search", T0, query="q"), ["p1"]) == set()
    assert touched(ev("login", T0), ["p1"]) == set()
    assert touched(ev("view_category", T0, category="shoes"), ["p1"]) == set()


# -- the index ------------------------------------------------------------------------


def test_refresh_lists_interested_shoppers_and_drops_the_others() -> None:
    index = InterestIndex()
    u1 = shopper(ev("view_product", T0, "u1", product_id="p1", price=100))
    u2 = shopper(ev("add_favorite", T0, "u2", product_id="p1"))
    index.refresh(u2, ["p1"], T0, W)
    index.refresh(u1, ["p1", "p2"], T0, W)  # p2: no interest, no entry
    assert index.shoppers("p1", T0) == ["u1", "u2"]
    assert index.shoppers("p2", T0) == []
    assert index.by_product["p1"]["u1"] == Interest("view", 100.0, T0 + VIEW_INTEREST_MS)
    assert index.pairs() == 2
    apply(u2, ev("remove_favorite", T0 + HOUR, "u2", product_id="p1"), T0 + HOUR)
    index.refresh(u2, ["p1"], T0 + HOUR, W)
    assert index.shoppers("p1", T0 + HOUR) == ["u1"]
    assert "u2" not in index.by_shopper
    assert index.pairs() == 1


def test_shoppers_drops_lapsed_entries() -> None:
    index = InterestIndex()
    u1 = shopper(ev("view_product", T0, "u1", product_id="p1", price=100))
    u2 = shopper(ev("view_product", T0 + DAY, "u2", product_id="p1", price=100))
    index.refresh(u1, ["p1"], T0, W)
    index.refresh(u2, ["p1"], T0 + DAY, W)
    assert index.shoppers("p1", T0 + 30 * DAY) == ["u1", "u2"]  # u1's last instant
    assert index.shoppers("p1", T0 + 30 * DAY + 1) == ["u2"]
    assert index.pairs() == 1
    assert "u1" not in index.by_shopper
    assert index.shoppers("p1", T0 + 31 * DAY + 1) == []
    assert index.by_product == {}
    assert index.by_shopper == {}


def test_an_identity_link_moves_the_anonymous_entries_to_the_user() -> None:
    from engine.identity import merge

    index = InterestIndex()
    anon = shopper(
        ev("view_product", T0, "a1", product_id="p1", price=100),
        ev("add_favorite", T0, "a1", product_id="p2"),
    )
    user = shopper(ev("add_to_cart", T0, "u1", product_id="p3", price=5))
    index.refresh(anon, ["p1", "p2"], T0, W)
    index.refresh(user, ["p3"], T0, W)
    merge(user, anon, "a1", T0 + HOUR, W)
    index.merge("a1", user, T0 + HOUR, W)
    assert index.by_shopper == {"u1": {"p1", "p2", "p3"}}
    assert index.shoppers("p1", T0 + HOUR) == ["u1"]
    assert index.by_product["p1"]["u1"] == Interest("view", 100.0, T0 + VIEW_INTEREST_MS)
    assert index.by_product["p2"]["u1"].via == "favorite"
    assert index.pairs() == 3


def test_merging_an_id_the_index_never_saw_changes_nothing() -> None:
    index = InterestIndex()
    user = shopper(ev("add_to_cart", T0, "u1", product_id="p3", price=5))
    index.refresh(user, ["p3"], T0, W)
    index.merge("a9", user, T0, W)
    assert index.by_shopper == {"u1": {"p3"}}
