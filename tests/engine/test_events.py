"""The event contract (SPEC section 1): what decode_event rejects, and what it accepts."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import InvalidEvent
from engine.events import MAX_EVENT_BYTES, STANDARD_TYPES, Event, decode_event, encode_event

# No example database in the work tree; no deadline, so a loaded CI machine cannot flake.
FUZZ = settings(database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
TS = 1_714_557_600_000  # 2024-05-01T10:00:00Z
BASE: dict[str, Any] = {"event_id": "e1", "type": "login", "ts": TS, "user_id": "u1"}
DROP = object()  # a field value meaning "leave this field out"
LONG = "x" * 1025


def doc(**fields: Any) -> str:
    """BASE with fields replaced (or removed with DROP), as JSON."""
    data = {**BASE, **fields}
    return json.dumps({k: v for k, v in data.items() if v is not DROP}, ensure_ascii=False)


def ms(moment: datetime) -> int:
    """Exact epoch ms by integer arithmetic (floor for sub-ms fractions)."""
    return (moment - EPOCH) // timedelta(milliseconds=1)


def nested(depth: int) -> dict[str, Any]:
    """An object that is `depth` objects deep (nested(1) == {"k": 1})."""
    value: Any = 1
    for _ in range(depth):
        value = {"k": value}
    return value


def padded(size: int, **fields: Any) -> bytes:
    """A valid event padded with whitespace to exactly `size` bytes."""
    body = doc(**fields).encode()
    return body[:-1] + b" " * (size - len(body)) + b"}"


def case(name: str, raw: str | bytes, *needles: str) -> Any:
    return pytest.param(raw, needles, id=name)


def engagement(**fields: Any) -> str:
    base = {"type": "engagement", "action_id": "a1", "channel": "email", "kind": "opened"}
    return doc(**(base | fields))


def profile(**attributes: Any) -> str:
    return doc(type="profile", attributes=attributes)


PRODUCT_TYPES = [
    "view_product",
    "add_to_cart",
    "remove_from_cart",
    "add_favorite",
    "remove_favorite",
]

REJECTED = [
    case("not-json", "{nope", "JSON"),
    case(
        "invalid-utf8",
        b'{"event_id": "\xff"}',
        "UTF-8",
    ),
    case("json-array", "[1, 2]", "object", "array"),
    case("json-string", '"hello"', "object", "str"),
    case("json-null", "null", "object", "null"),
    case("too-big", padded(MAX_EVENT_BYTES + 1), str(MAX_EVENT_BYTES + 1), "64 KiB"),
    case("no-event-id", doc(event_id=DROP), "event_id"),
    case("empty-event-id", doc(event_id=""), "$.event_id", ">= 1"),
    case("long-event-id", doc(event_id="e" * 129), "$.event_id", "<= 128"),
    case("no-type", doc(type=DROP), "type"),
    case("type-uppercase", doc(type="Login"), "$.type"),
    case("type-leading-digit", doc(type="1login"), "$.type"),
    case("type-65-chars", doc(type="a" * 65), "$.type"),
    case("type-space", doc(type="spin wheel"), "$.type"),
    case(
        "type-trailing-newline",
        doc(type="login\n"),
        "$.type",
    ),
    case("no-ts", doc(ts=DROP), "ts"),
    case("ts-float", doc(ts=1714557600000.5), "$.ts", "float"),
    case("ts-whole-float", doc(ts=1714557600000.0), "$.ts", "float"),
    case("ts-bool", doc(ts=True), "$.ts"),
    case("ts-negative", doc(ts=-1), "ts -1", "negative"),
    case("ts-no-offset", doc(ts="2024-05-01T10:00:00"), "'2024-05-01T10:00:00'", "offset"),
    case("ts-date-only", doc(ts="2024-05-01"), "'2024-05-01'"),
    case("ts-not-a-date", doc(ts="2024-13-45T00:00:00Z"), "'2024-13-45T00:00:00Z'"),
    case("ts-feb-30", doc(ts="2024-02-30T00:00:00+03:00"), "'2024-02-30T00:00:00+03:00'"),
    case("no-identity", doc(user_id=DROP), "user_id", "anon_id"),
    case("empty-user-id", doc(user_id=""), "$.user_id"),
    case("long-user-id", doc(user_id=LONG), "$.user_id", "1024"),
    case("long-query", doc(type="search", query=LONG), "$.query", "1024"),
    case("long-category", doc(type="view_category", category=LONG), "$.category", "1024"),
    case("long-props-value", doc(props={"note": LONG}), "props.note", "1024"),
    case("long-props-list-item", doc(props={"tags": ["ok", LONG]}), "props.tags[1]", "1024"),
    case("long-props-key", doc(props={LONG: 1}), "$.props", "1024"),
    case("long-attribute", profile(first_name=LONG), "$.attributes", "1024"),
    case(
        "long-item-category",
        doc(type="purchase", items=[{"product_id": "p1", "category": LONG}]),
        "$.items[0].category",
        "1024",
    ),
    case("price-negative", doc(type="view_product", product_id="p1", price=-0.01), "$.price"),
    case("price-string", doc(type="view_product", product_id="p1", price="10"), "$.price", "str"),
    case("quantity-zero", doc(type="add_to_cart", product_id="p1", quantity=0), "$.quantity"),
    case("quantity-float", doc(type="add_to_cart", product_id="p1", quantity=1.5), "$.quantity"),
    case("item-no-product", doc(type="purchase", items=[{"price": 3}]), "product_id", "items[0]"),
    case(
        "item-negative-price",
        doc(type="purchase", items=[{"product_id": "p1"}, {"product_id": "p2", "price": -1}]),
        "$.items[1].price",
    ),
    *[case(f"{t}-no-product", doc(type=t), f"`{t}`", "product_id") for t in PRODUCT_TYPES],
    case("view-category-no-category", doc(type="view_category"), "`view_category`", "category"),
    case("search-no-query", doc(type="search"), "`search`", "query"),
    case("consent-no-channel", doc(type="consent", granted=True), "`consent`", "channel"),
    case("consent-no-granted", doc(type="consent", channel="sms"), "`consent`", "granted"),
    case("consent-granted-string", doc(type="consent", channel="sms", granted="yes"), "$.granted"),
    case("consent-unknown-channel", doc(type="consent", channel="fax", granted=True), "'fax'"),
    case(
        "consent-typo-channel",
        doc(type="consent", channel="emial", granted=True),
        "'emial'",
        "did you mean 'email'",
    ),
    case("profile-no-attributes", doc(type="profile"), "`profile`", "attributes"),
    case("attribute-object", profile(a={"b": 1}), "$.attributes"),
    case("attribute-list", profile(a=[1]), "$.attributes"),
    case("timezone-not-iana", profile(timezone="Mars/Olympus"), "attributes.timezone", "Mars/"),
    case("timezone-offset", profile(timezone="+03:00"), "attributes.timezone", "'+03:00'"),
    case("timezone-number", profile(timezone=3), "attributes.timezone"),
    case("birthday-month-13", profile(birthday="13-01"), "attributes.birthday", "'13-01'"),
    case("birthday-full-date", profile(birthday="1990-04-23"), "attributes.birthday", "1990"),
    case("birthday-day-32", profile(birthday="01-32"), "attributes.birthday", "'01-32'"),
    case(
        "birthday-trailing-newline",
        profile(birthday="04-23\n"),
        "attributes.birthday",
    ),
    *[
        case(f"engagement-no-{f}", engagement(**{f: DROP}), "`engagement`", f)
        for f in ("action_id", "channel", "kind")
    ],
    case("engagement-bad-kind", engagement(kind="read"), "'read'", "$.kind"),
    case("engagement-bad-channel", engagement(channel="pigeon"), "'pigeon'"),
    case("props-depth-6", doc(props=nested(6)), "props.k.k.k.k.k", "deeper than 5"),
    case("props-list-depth-6", doc(props={"l": [[[[[1]]]]]}), "props.l[0][0][0][0]", "than 5"),
    case("props-not-object", doc(props=[1]), "$.props"),
]


@pytest.mark.parametrize(("raw", "needles"), REJECTED)
def test_rejects_with_reason(raw: str | bytes, needles: tuple[str, ...]) -> None:
    with pytest.raises(InvalidEvent) as info:
        decode_event(raw)
    reason = info.value.reason
    assert reason == str(info.value)
    for needle in needles:
        assert needle in reason, f"{needle!r} not in {reason!r}"


def test_rejects_lone_surrogate_str_as_invalid_event() -> None:
    # decode_event documents that bad input only ever raises InvalidEvent.
    with pytest.raises(InvalidEvent):
        decode_event('{"event_id": "\ud800"}')


MINIMAL: dict[str, dict[str, Any]] = {
    "view_product": {"product_id": "p1"},
    "view_category": {"category": "shoes/running"},
    "search": {"query": "koşu"},
    "add_to_cart": {"product_id": "p1"},
    "remove_from_cart": {"product_id": "p1"},
    "add_favorite": {"product_id": "p1"},
    "remove_favorite": {"product_id": "p1"},
    "purchase": {},
    "signup": {},
    "login": {},
    "consent": {"channel": "whatsapp", "granted": False},
    "profile": {"attributes": {}},
    "engagement": {"action_id": "a1", "channel": "push", "kind": "unsubscribed"},
}


def test_minimal_table_covers_the_spec_types() -> None:
    assert set(MINIMAL) == STANDARD_TYPES


@pytest.mark.parametrize(("kind", "fields"), MINIMAL.items(), ids=list(MINIMAL))
def test_standard_type_minimal_fields_decode(kind: str, fields: dict[str, Any]) -> None:
    event = decode_event(doc(type=kind, **fields))
    assert event.type == kind
    for name, value in fields.items():
        assert getattr(event, name) == value


@pytest.mark.parametrize("kind", ["spin_wheel", "app.opened:v2", "a", "x-y", "a" + "b" * 63])
def test_custom_types_decode(kind: str) -> None:
    assert decode_event(doc(type=kind)).type == kind


@pytest.mark.parametrize(
    ("kind", "fields"),
    [
        ("consent", {"channel": channel, "granted": True})
        for channel in (
            "email",
            "sms",
            "push",
            "webpush",
            "whatsapp",
            "telegram",
            "inapp",
            "onsite",
        )
    ]
    + [
        ("engagement", {"action_id": "a", "channel": "sms", "kind": kind})
        for kind in ("delivered", "opened", "clicked", "bounced", "unsubscribed")
    ]
    + [("profile", {"attributes": {"timezone": "Europe/Istanbul", "birthday": "02-29"}})]
    + [("profile", {"attributes": {"first_name": "Ayşe", "vip": True, "score": 1.5, "x": None}})],
)
def test_valid_variants_decode(kind: str, fields: dict[str, Any]) -> None:
    event = decode_event(doc(type=kind, **fields))
    for name, value in fields.items():
        assert getattr(event, name) == value


def test_ts_int_stays() -> None:
    event = decode_event(doc(ts=TS))
    assert event.ts == TS
    assert type(event.ts) is int


def test_ts_zero_is_valid() -> None:
    assert decode_event(doc(ts=0)).ts == 0


PLUS3 = timezone(timedelta(hours=3))


@pytest.mark.parametrize(
    ("text", "moment"),
    [
        ("2024-05-01T10:00:00Z", datetime(2024, 5, 1, 10, tzinfo=UTC)),
        ("2024-05-01t10:00:00z", datetime(2024, 5, 1, 10, tzinfo=UTC)),
        ("2024-05-01 10:00:00Z", datetime(2024, 5, 1, 10, tzinfo=UTC)),
        ("2024-05-01T10:00:00+03:00", datetime(2024, 5, 1, 10, tzinfo=PLUS3)),
        ("2024-05-01T10:00:00-05:30", datetime(2024, 5, 1, 15, 30, tzinfo=UTC)),
        ("2024-05-01T10:00:00.5Z", datetime(2024, 5, 1, 10, 0, 0, 500_000, tzinfo=UTC)),
        ("2024-05-01T10:00:00.123+03:00", datetime(2024, 5, 1, 10, 0, 0, 123_000, tzinfo=PLUS3)),
        ("2024-05-01T10:00:00.123456Z", datetime(2024, 5, 1, 10, 0, 0, 123_456, tzinfo=UTC)),
        ("2024-05-01T10:00:00.987654321Z", datetime(2024, 5, 1, 10, 0, 0, 987_654, tzinfo=UTC)),
        ("2024-12-31T23:59:59.999+00:00", datetime(2024, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC)),
    ],
)
def test_ts_rfc3339_becomes_exact_epoch_ms(text: str, moment: datetime) -> None:
    event = decode_event(doc(ts=text))
    assert event.ts == ms(moment)
    assert type(event.ts) is int


def test_ts_plus_three_hours_is_seven_utc() -> None:
    # The +03:00 case against a hand-computed value: 2024-05-01T07:00:00Z.
    assert decode_event(doc(ts="2024-05-01T10:00:00+03:00")).ts == 1_714_546_800_000


def test_ts_rfc3339_ms_exact_after_2038() -> None:
    moment = datetime(2038, 5, 1, 10, 0, 0, 3_000, tzinfo=UTC)
    assert decode_event(doc(ts="2038-05-01T10:00:00.003Z")).ts == ms(moment) == 2_156_320_800_003


def test_identity_key_prefers_user_id() -> None:
    assert decode_event(doc(user_id="u1", anon_id="d1")).key == "u1"
    assert decode_event(doc(user_id=DROP, anon_id="d1")).key == "d1"


def test_quantity_defaults_to_one() -> None:
    event = decode_event(doc(type="add_to_cart", product_id="p1"))
    assert event.quantity is None
    assert event.qty == 1
    assert decode_event(doc(type="add_to_cart", product_id="p1", quantity=3)).qty == 3
    items = decode_event(doc(type="purchase", items=[{"product_id": "a"}])).items
    assert items is not None
    assert items[0].qty == 1


def test_unknown_top_level_fields_are_ignored() -> None:
    event = decode_event(doc(storefront={"theme": [1, 2]}, campaign="spring", Type="X"))
    assert event == decode_event(doc())
    assert b"storefront" not in encode_event(event)


def test_props_at_depth_five_accepted() -> None:
    props = nested(5) | {"l": [[[[1]]]]}
    assert decode_event(doc(props=props)).props == props


def test_size_limit_is_inclusive_in_bytes() -> None:
    exact = padded(MAX_EVENT_BYTES)
    assert len(exact) == MAX_EVENT_BYTES == 65536
    assert decode_event(exact).event_id == "e1"
    with pytest.raises(InvalidEvent):
        decode_event(padded(MAX_EVENT_BYTES + 1))


def test_size_limit_counts_utf8_bytes_of_str_input() -> None:
    fits = padded(MAX_EVENT_BYTES, type="search", query="ş").decode()
    assert decode_event(fits).query == "ş"
    too_big = padded(MAX_EVENT_BYTES + 1, type="search", query="ş").decode()
    assert len(too_big) == MAX_EVENT_BYTES  # characters, but one byte too many
    with pytest.raises(InvalidEvent, match="bytes"):
        decode_event(too_big)


FULL = doc(
    type="purchase",
    ts="2024-05-01T10:00:00.250+03:00",
    anon_id="d9",
    order_id="o1",
    revenue=25.5,
    items=[
        {"product_id": "p1", "category": "shoes/running", "price": 10.5, "quantity": 2},
        {"product_id": "p2"},
    ],
    props={"coupon": "SPRING", "nested": {"a": [1, 2.5, None, True]}},
)


@pytest.mark.parametrize(
    "raw",
    [
        FULL,
        doc(),
        engagement(),
        profile(timezone="Asia/Tokyo", first_name=None),
        doc(type="search", query="x"),
    ],
)
def test_encode_decode_round_trip(raw: str) -> None:
    event = decode_event(raw)
    wire = encode_event(event)
    assert isinstance(wire, bytes)
    again = decode_event(wire)
    assert again == event
    assert encode_event(again) == wire


def test_encode_writes_ts_as_epoch_ms() -> None:
    wire = json.loads(encode_event(decode_event(FULL)))
    assert wire["ts"] == ms(datetime(2024, 5, 1, 7, 0, 0, 250_000, tzinfo=UTC))
    assert "price" not in wire  # defaults are omitted


def test_str_and_bytes_input_agree() -> None:
    assert decode_event(FULL) == decode_event(FULL.encode())
    assert isinstance(decode_event(FULL), Event)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=6,
)
FIELDS = st.sampled_from(
    [
        "event_id",
        "type",
        "ts",
        "user_id",
        "anon_id",
        "product_id",
        "price",
        "quantity",
        "items",
        "channel",
        "granted",
        "attributes",
        "kind",
        "props",
        "query",
        "category",
        "action_id",
    ]
)


def outcome(raw: str | bytes) -> Event | InvalidEvent:
    """The decoded event or the InvalidEvent; any other exception fails the test."""
    try:
        return decode_event(raw)
    except InvalidEvent as exc:
        return exc


@FUZZ
@given(st.dictionaries(FIELDS, JSON, max_size=8), st.sampled_from([*sorted(STANDARD_TYPES), "x"]))
def test_any_json_object_decodes_or_raises_invalid_event(fields: dict[str, Any], kind: str) -> None:
    result = outcome(json.dumps({**BASE, "type": kind, **fields}))
    if isinstance(result, InvalidEvent):
        assert result.reason
    else:
        assert isinstance(result.ts, int)
        assert result.key


@FUZZ
@given(st.text(max_size=64))
def test_any_text_decodes_or_raises_invalid_event(raw: str) -> None:
    result = outcome(raw.encode())
    assert isinstance(result, Event) or result.reason


# Numbers the state store cannot hold, and times that would move the clock for everyone.
HUGE = 2**64


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"type": "clicked_banner", "props": {"n": HUGE}}, "props.n"),
        ({"type": "clicked_banner", "props": {"a": [{"b": -HUGE}]}}, "props.a[0].b"),
        ({"type": "add_to_cart", "product_id": "p", "quantity": HUGE}, "quantity"),
        ({"type": "add_to_cart", "product_id": "p", "quantity": 1_000_001}, "quantity"),
        ({"type": "profile", "attributes": {"points": HUGE}}, "attributes"),
        ({"ts": HUGE}, "after 2100-01-01"),
        ({"ts": "9999-01-01T00:00:00Z"}, "after 2100-01-01"),
        ({"type": "purchase", "revenue": "1e999"}, "revenue"),
    ],
)
def test_numbers_beyond_the_state_store_are_invalid(fields: dict[str, Any], needle: str) -> None:
    raw = doc(**fields).replace('"1e999"', "1e999")
    with pytest.raises(InvalidEvent) as info:
        decode_event(raw)
    assert needle in info.value.reason


def test_int64_edges_are_accepted_in_props() -> None:
    event = decode_event(doc(type="clicked_banner", props={"lo": -(2**63), "hi": 2**63 - 1}))
    assert event.props == {"lo": -(2**63), "hi": 2**63 - 1}


def test_a_bounded_event_always_serialises_in_the_state() -> None:
    from engine.state import UserState, apply, dumps, loads

    event = decode_event(
        doc(type="clicked_banner", props={"big": 2**63 - 1, "neg": -(2**63), "f": 1e308})
    )
    state = UserState(key=event.key)
    assert apply(state, event, event.ts) == "applied"
    assert loads(dumps(state)).windows["clicked_banner"][0].props == event.props


def test_future_ts_is_refused_relative_to_its_reference() -> None:
    from engine.events import MAX_FUTURE_MS, check_not_future

    event = decode_event(doc(ts=TS + MAX_FUTURE_MS))
    check_not_future(event, TS)  # exactly at the bound: accepted
    late = decode_event(doc(ts=TS + MAX_FUTURE_MS + 1))
    with pytest.raises(InvalidEvent, match="in the future are refused"):
        check_not_future(late, TS)


# -- the catalog's feed (SPEC section 10) ------------------------------------------------


def test_a_product_update_has_no_identity_and_names_its_product() -> None:
    update = decode_event(
        '{"event_id":"c1","type":"product_update","ts":1,"product_id":"p1","price":9.5,'
        '"stock":3,"name":"Shoe","url":"/p1","image":"/p1.png"}'
    )
    assert (update.key, update.stock, update.name, update.image) == ("", 3, "Shoe", "/p1.png")


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ('"product_id":"p1","user_id":"u1"', "product_update events carry no user_id or anon_id"),
        ('"product_id":"p1","anon_id":"a1"', "product_update events carry no user_id or anon_id"),
        ('"price":3', "`product_update` events require `product_id`"),
        ('"product_id":"p1","stock":-1', "stock"),
        ('"product_id":"p1","stock":1.5', "stock"),
    ],
)
def test_a_bad_product_update_is_invalid_with_its_reason(fields: str, needle: str) -> None:
    with pytest.raises(InvalidEvent) as refused:
        decode_event(f'{{"event_id":"c1","type":"product_update","ts":1,{fields}}}')
    assert needle in refused.value.reason


def test_only_a_product_update_may_omit_both_ids() -> None:
    with pytest.raises(InvalidEvent, match="one of user_id or anon_id is required"):
        decode_event('{"event_id":"d1","type":"price_drop","ts":1,"product_id":"p1"}')
    drop = decode_event(
        '{"event_id":"d1","type":"price_drop","ts":1,"user_id":"u1","product_id":"p1",'
        '"price":8,"old_price":10,"drop_pct":20,"via":"cart"}'
    )
    assert (drop.old_price, drop.drop_pct, drop.via) == (10.0, 20.0, "cart")
    with pytest.raises(InvalidEvent, match="via"):
        decode_event('{"event_id":"d2","type":"price_drop","ts":1,"user_id":"u","via":"mail"}')
