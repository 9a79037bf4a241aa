"""Segment calls as tetik events (flows/collect/segment.py): the mapping table, the
common fields, identify and page, batches taken whole, and every refusal's reason."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from engine.errors import InvalidEvent
from engine.events import Event, Item
from engine.identity import resolve
from flows.collect.segment import TRACK_TYPES, events_of, snake, to_event

NOW = 1_714_557_600_000  # 2024-05-01T10:00:00Z
TS = "2024-05-01T09:59:00.123Z"


def track(name: str, **properties: Any) -> Event:
    call = {"event": name, "userId": "u1", "messageId": "m1", "timestamp": TS}
    return to_event({**call, "properties": properties}, "track", NOW)


def refused(body: dict[str, Any] | bytes, kind: str = "track") -> str:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    with pytest.raises(InvalidEvent) as caught:
        events_of(raw, kind, NOW)
    return caught.value.reason


@pytest.mark.parametrize(
    ("name", "properties", "expected"),
    [
        ("Product Viewed", {"product_id": "p1", "price": 9.5}, "view_product"),
        ("Product List Viewed", {"category": "shoes/running"}, "view_category"),
        ("Products Searched", {"query": "red shoes"}, "search"),
        ("Product Added", {"product_id": "p1", "quantity": 2}, "add_to_cart"),
        ("Product Removed", {"product_id": "p1"}, "remove_from_cart"),
        ("Product Added to Wishlist", {"product_id": "p1"}, "add_favorite"),
        ("Product Removed from Wishlist", {"product_id": "p1"}, "remove_favorite"),
        ("Order Completed", {"order_id": "o1", "revenue": 30}, "purchase"),
        ("Signed Up", {}, "signup"),
        ("Signed In", {}, "login"),
    ],
)
def test_every_ecommerce_name_maps_to_its_standard_type(
    name: str, properties: dict[str, Any], expected: str
) -> None:
    event = track(name, **properties)
    assert event.type == expected
    for field, value in properties.items():
        assert getattr(event, field) == value
    assert event.props is None  # every property was one of the event's fields


def test_the_table_is_the_specs_ten_names() -> None:
    assert set(TRACK_TYPES.values()) == {
        "view_product",
        "view_category",
        "search",
        "add_to_cart",
        "remove_from_cart",
        "add_favorite",
        "remove_favorite",
        "purchase",
        "signup",
        "login",
    }


def test_common_fields() -> None:
    event = track("Product Viewed", product_id="p1")
    assert (event.event_id, event.ts, event.user_id, event.anon_id) == (
        "m1",
        NOW - 59_877,
        "u1",
        None,
    )


def test_both_ids_are_carried_so_the_engine_links_them() -> None:
    call = {"event": "Signed In", "userId": 42, "anonymousId": "a-1", "messageId": "m"}
    event = to_event(call, "track", NOW)
    assert (event.user_id, event.anon_id, event.key) == ("42", "a-1", "42")


def test_an_anonymous_cart_then_a_login_resolve_as_the_engine_links_identities() -> None:
    cart = {"event": "Product Added", "anonymousId": "a-1", "properties": {"product_id": "p1"}}
    login = {"event": "Signed In", "userId": "u1", "anonymousId": "a-1"}
    later = {"event": "Product Viewed", "anonymousId": "a-1", "properties": {"product_id": "p2"}}
    first, linking, after = (to_event(call, "track", NOW) for call in (cart, login, later))
    assert resolve(first, {}).key == "a-1"
    assert (resolve(linking, {}).key, resolve(linking, {}).link) == ("u1", "a-1")
    assert resolve(after, {"a-1": "u1"}).key == "u1"  # from the link on, the user's


def test_timestamp_falls_back_to_original_timestamp_then_the_time_received() -> None:
    base = {"event": "Signed In", "anonymousId": "a1", "messageId": "m"}
    original = to_event({**base, "originalTimestamp": "2024-05-01T09:00:00Z"}, "track", NOW)
    assert original.ts == NOW - 3_600_000
    assert to_event(base, "track", NOW).ts == NOW


def test_a_call_without_message_id_gets_the_same_digest_id_every_time() -> None:
    call = {"event": "Signed In", "userId": "u1", "timestamp": TS}
    first, again = to_event(call, "track", NOW), to_event(dict(call), "track", NOW + 5)
    other = to_event({**call, "userId": "u2"}, "track", NOW)
    assert first.event_id == again.event_id != other.event_id
    assert first.event_id.startswith("seg-")


def test_a_device_clock_days_ahead_is_corrected_by_its_sent_at() -> None:
    ahead = 2 * 86_400_000  # the browser's clock: two days ahead
    call = {"type": "track", "event": "Signed In", "anonymousId": "a1", "messageId": "m"}
    body = {
        "batch": [
            {**call, "timestamp": "2024-05-03T09:59:00Z"},  # a minute before it sent
            {**call, "messageId": "n", "timestamp": NOW + ahead - 120_000},
        ],
        "sentAt": "2024-05-03T10:00:00Z",
    }
    first, second = events_of(orjson.dumps(body), "batch", NOW)
    assert (first.ts, second.ts) == (NOW - 60_000, NOW - 120_000)


def test_an_offline_queue_sent_later_keeps_its_times() -> None:
    call = {"event": "Signed In", "anonymousId": "a1", "timestamp": "2024-04-28T10:00:00Z"}
    sent = to_event({**call, "sentAt": "2024-05-01T09:59:59.900Z"}, "track", NOW)
    assert sent.ts == NOW - 3 * 86_400_000  # the clock was right: the times stay as sent
    retried = to_event({**call, "sentAt": "2024-05-01T10:00:00Z"}, "track", NOW)
    assert retried.event_id == sent.event_id  # a retry's new sentAt keeps the digest id


def test_purchase_takes_total_numeric_text_and_products_as_items() -> None:
    event = track(
        "Order Completed",
        order_id=1001,
        total="59.90",
        currency="EUR",
        products=[
            {"product_id": "p1", "price": "19.95", "quantity": "2", "name": "Mug"},
            {"product_id": 7, "category": "home/kitchen"},
        ],
    )
    assert (event.type, event.order_id, event.revenue) == ("purchase", "1001", 59.9)
    assert event.items == (
        Item(product_id="p1", price=19.95, quantity=2),
        Item(product_id="7", category="home/kitchen"),
    )
    assert event.props == {"currency": "EUR"}


def test_revenue_wins_over_total() -> None:
    assert track("Order Completed", order_id="o", revenue=10, total=12).revenue == 10


def test_other_names_become_snake_cased_custom_types_with_props() -> None:
    event = track("Coupon Applied", coupon="SPRING", product_id="p1")
    assert (event.type, event.product_id, event.props) == (
        "coupon_applied",
        "p1",
        {"coupon": "SPRING"},
    )
    assert track("checkoutStarted").type == "checkout_started"
    assert track("product viewed", product_id="p1").type == "view_product"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Ürün Görüntülendi", "urun_goruntulendi"),
        ("Sepete Eklendi!", "sepete_eklendi"),
        ("  Video -- Played  ", "video_played"),
        ("order.completed:v2 re-sent", "order.completed:v2_re-sent"),
        ("Snake_Case__Name", "snake_case_name"),
        ("HTTPError Seen", "httperror_seen"),
    ],
)
def test_snake(name: str, expected: str) -> None:
    assert snake(name) == expected


def test_consent_properties_are_the_events_fields() -> None:
    event = track("consent", channel="email", granted=True)
    assert (event.type, event.channel, event.granted) == ("consent", "email", True)
    custom = track("Chat Opened", channel="web", kind="bubble")  # not lifted on custom types
    assert custom.props == {"channel": "web", "kind": "bubble"}


def test_identify_is_a_profile_event() -> None:
    call = {
        "type": "identify",
        "userId": "u1",
        "anonymousId": "a1",
        "messageId": "m",
        "timestamp": TS,
        "traits": {
            "email": "ada@example.com",
            "firstName": "Ada",
            "birthday": "1990-04-23T00:00:00.000Z",
            "vip": True,
            "address": {"city": "Izmir"},
        },
        "context": {"timezone": "Europe/Istanbul"},
    }
    event = to_event(call, "identify", NOW)
    assert (event.type, event.user_id, event.anon_id) == ("profile", "u1", "a1")
    assert event.attributes == {
        "email": "ada@example.com",
        "first_name": "Ada",
        "birthday": "04-23",
        "vip": True,
        "timezone": "Europe/Istanbul",
    }
    assert event.props == {"address": {"city": "Izmir"}}


def test_page_and_screen_are_view_events_with_props() -> None:
    call = {
        "anonymousId": "a1",
        "messageId": "m",
        "name": "Home",
        "properties": {"url": "https://shop.example/", "title": "Shop"},
    }
    page = to_event(call, "page", NOW)
    assert (page.type, page.anon_id) == ("page_view", "a1")
    assert page.props == {"url": "https://shop.example/", "title": "Shop", "name": "Home"}
    assert to_event(call, "screen", NOW).type == "screen_view"


def test_a_batch_maps_each_call_with_the_batch_context_and_drops_group() -> None:
    body = {
        "batch": [
            {"type": "track", "event": "Product Viewed", "userId": "u1", "messageId": "1",
             "properties": {"product_id": "p1"}},
            {"type": "group", "userId": "u1", "groupId": "g"},
            {"type": "identify", "userId": "u1", "messageId": "2", "traits": {}},
            {"type": "page", "anonymousId": "a1", "messageId": "3"},
            {"type": "alias", "userId": "u1", "previousId": "a1", "messageId": "4"},
        ],
        "context": {"timezone": "Europe/Berlin"},
    }  # fmt: skip
    events = events_of(orjson.dumps(body), "batch", NOW)
    assert [e.type for e in events] == ["view_product", "profile", "page_view", "alias"]
    assert events[1].attributes == {"timezone": "Europe/Berlin"}


def test_an_alias_links_its_previous_id_to_the_user() -> None:
    call = {"userId": "u1", "previousId": "a-old", "anonymousId": "a-now", "messageId": "m",
            "timestamp": TS}  # fmt: skip
    alias = to_event(call, "alias", NOW)
    assert (alias.type, alias.user_id, alias.anon_id) == ("alias", "u1", "a-old")
    assert (resolve(alias, {}).key, resolve(alias, {}).link) == ("u1", "a-old")
    later = to_event({"anonymousId": "a-old", "messageId": "m2", "timestamp": TS}, "page", NOW)
    assert resolve(later, {"a-old": "u1"}).key == "u1"  # the old id's events: the user's


def test_an_alias_of_an_id_to_itself_links_nothing() -> None:
    alias = to_event({"userId": "u1", "previousId": "u1", "anonymousId": "a1"}, "alias", NOW)
    assert (alias.user_id, alias.anon_id, resolve(alias, {}).link) == ("u1", None, None)


def test_one_bad_call_refuses_the_whole_batch_naming_it() -> None:
    good = {"type": "track", "event": "Signed In", "userId": "u1"}
    body = {"batch": [good, {"type": "track", "event": "Signed In"}, {"type": "wat"}]}
    assert refused(body, "batch") == (
        "batch[1]: one of userId or anonymousId is required (the shopper) "
        "(and 1 more bad calls); nothing of this batch was taken"
    )


@pytest.mark.parametrize(
    ("body", "kind", "reason"),
    [
        ({"userId": "u1"}, "alias", "an alias needs userId and previousId"),
        ({"anonymousId": "a1", "previousId": "a0"}, "alias", "an alias needs userId and"),
        (b"{not json", "track", "not valid JSON"),
        (b"[1]", "track", "the body must be a JSON object"),
        ({"event": "Signed In", "userId": ""}, "track", "one of userId or anonymousId"),
        ({"userId": "u1"}, "track", "a track call needs `event`"),
        ({"event": "404 Seen", "userId": "u1"}, "track", "makes the type '404_seen'"),
        (
            {"event": "Product Viewed", "userId": "u1"},
            "track",
            "track 'Product Viewed': `view_product` events require `product_id`",
        ),
        (
            {
                "event": "Product Added",
                "userId": "u1",
                "properties": {"product_id": "p", "price": -1},
            },
            "track",
            "Expected `float` >= 0.0 - at `$.price`",
        ),
        (
            {"event": "Order Completed", "userId": "u1", "properties": {"products": "p1"}},
            "track",
            "properties.products must be a list",
        ),
        (
            {"event": "Signed In", "userId": "u1", "timestamp": "2024-05-01 10:00"},
            "track",
            "is not epoch milliseconds or an RFC 3339 time",
        ),
        (
            {"event": "Signed In", "userId": "u1", "timestamp": "2024-05-03T10:00:00Z"},
            "track",
            "in the future are refused",
        ),
        ({"userId": "u1", "traits": {"birthday": "23.04."}}, "identify", "is not MM-DD"),
        ({"userId": "u1", "traits": {"timezone": "Mars/Base"}}, "identify", "not an IANA"),
        ({"userId": "u1", "properties": [1]}, "page", "`properties` must be a JSON object"),
        ({"batch": {"type": "track"}}, "batch", "a batch needs `batch`, a list of calls"),
        ({"batch": [{"type": "screen"}]}, "batch", "batch[0]: one of userId"),
        ({"batch": [7]}, "batch", "batch[0]: a call must be a JSON object"),
    ],
)
def test_refusals_say_why(body: dict[str, Any] | bytes, kind: str, reason: str) -> None:
    assert reason in refused(body, kind)
