"""``engine.catalog`` (SPEC section 10): updates, their change, the events they derive,
``product()`` / ``bought_together()`` in conditions and templates, and replay's fan-out.

States and updates are real decoded events; each test names the rule of the
module docstring (or of SPEC section 10) it checks.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import msgspec
import pytest

from engine.actions import Action
from engine.bought_together import pairs
from engine.catalog import Catalog, Change, Product, apply_update, change_of, derive, derived_id
from engine.errors import ExpressionError, RulesError
from engine.events import Event, decode_event, parse_ts
from engine.journeys import Engine
from engine.replay import ReplayStats, replay
from engine.rules.compiler import Scope, compile_expression
from engine.rules.context import Context
from engine.rules.loader import load_rules
from engine.state import UserState, apply
from engine.windows import DEFAULT_CONFIG

T0 = 1_714_557_600_000  # 2024-05-01T10:00:00Z
HOUR = 3_600_000
DAY = 24 * HOUR
W = DEFAULT_CONFIG
_serial = itertools.count()


def update(eid: str, ts: int, pid: str = "p1", **fields: Any) -> Event:
    doc = {"event_id": eid, "type": "product_update", "ts": ts, "product_id": pid, **fields}
    return decode_event(json.dumps(doc))


def ev(kind: str, ts: int, who: str = "u1", **fields: Any) -> Event:
    ident = {"anon_id": who} if who.startswith("a") else {"user_id": who}
    doc = {"event_id": f"k{next(_serial)}", "type": kind, "ts": ts, **ident, **fields}
    return decode_event(json.dumps(doc))


def shopper(*events: Event) -> UserState:
    built = UserState()
    for one in events:
        assert apply(built, one, one.ts, W) == "applied"
    return built


def updated(*updates: Event) -> Product:
    """The record after ``updates`` applied in order (each must apply)."""
    record: Product | None = None
    for one in updates:
        record = apply_update(record, one)
        assert record is not None
    assert record is not None
    return record


# -- apply_update ---------------------------------------------------------------------


def test_the_first_update_sets_the_fields_it_carries() -> None:
    first = update("c1", T0, price=100, stock=5, name="Shoe", url="/s", category="shoes")
    record = apply_update(None, first)
    assert record == Product(
        price=100.0, stock=5, name="Shoe", url="/s", category="shoes", ts=T0, event="c1"
    )
    assert record is not None
    assert record.fields() == {
        "price": 100.0,
        "stock": 5,
        "name": "Shoe",
        "url": "/s",
        "category": "shoes",
    }


def test_an_update_replaces_the_fields_it_carries_and_keeps_the_others() -> None:
    record = updated(
        update("c1", T0, price=100, stock=5, name="Shoe", image="a.png", props={"color": "red"}),
        update("c2", T0 + 1, stock=0, props={"size": 42}),
    )
    assert record == Product(
        price=100.0,
        stock=0,
        name="Shoe",
        image="a.png",
        props={"size": 42},  # a field is replaced whole
        ts=T0 + 1,
        event="c2",
        was_price=100.0,
        was_stock=5,
    )


def test_an_older_update_changes_nothing_and_on_equal_ts_the_greater_id_wins() -> None:
    record = updated(update("c1", T0, price=100))
    assert apply_update(record, update("c0", T0 - 1, price=50)) is None
    same_ts = apply_update(record, update("c2", T0, price=90))
    assert same_ts is not None
    assert (same_ts.price, same_ts.event, same_ts.was_price) == (90.0, "c2", 100.0)
    assert apply_update(same_ts, update("c1", T0, price=100)) is None  # c1 read again
    assert apply_update(same_ts, update("c0", T0, price=70)) is None  # either order: c2


def test_the_same_update_twice_is_the_same_record_and_the_same_change() -> None:
    lower = update("c2", T0 + 1, price=80)
    record = updated(update("c1", T0, price=100), lower)
    again = apply_update(record, lower)
    assert again is record
    assert change_of(again) == change_of(record) == Change(True, False)


# -- change_of ------------------------------------------------------------------------


def test_the_first_price_seen_is_no_drop() -> None:
    assert change_of(updated(update("c1", T0, price=100))) == Change(False, False)
    assert not change_of(updated(update("c1", T0, name="x"), update("c2", T0 + 1, price=5)))


def test_a_lower_price_is_a_drop_an_equal_or_higher_one_is_not() -> None:
    first = update("c1", T0, price=100)
    assert change_of(updated(first, update("c2", T0 + 1, price=99.5))).price_lowered
    assert not change_of(updated(first, update("c2", T0 + 1, price=100)))
    assert not change_of(updated(first, update("c2", T0 + 1, price=120)))
    assert not change_of(updated(first, update("c2", T0 + 1, name="renamed")))  # price kept


def test_a_restock_is_only_from_zero_to_more() -> None:
    def change(before: dict[str, Any], after: dict[str, Any]) -> Change:
        return change_of(updated(update("c1", T0, **before), update("c2", T0 + 1, **after)))

    assert change({"stock": 0}, {"stock": 3}) == Change(False, True)
    assert change({"price": 10}, {"stock": 3}) == Change(False, False)  # unknown before
    assert change({"stock": 2}, {"stock": 3}) == Change(False, False)
    assert change({"stock": 0}, {"stock": 0}) == Change(False, False)
    assert change({"stock": 0}, {"price": 1}) == Change(False, False)  # still 0
    assert change({"stock": 3}, {"stock": 0}) == Change(False, False)  # sold out
    assert change({"stock": 0, "price": 10}, {"stock": 1, "price": 8}) == Change(True, True)


# -- derive ---------------------------------------------------------------------------

DROP = (update("c1", T0 - DAY, price=100, stock=4, category="shoes"), update("c2", T0, price=80))


def drop_for(state: UserState, *updates: Event) -> list[Event]:
    """What the last of ``updates`` (default: 100 -> 80 at T0) derives for ``state``."""
    updates = updates or DROP
    return derive(updates[-1], updated(*updates), state, W)


def test_a_drop_below_the_price_seen_derives_a_price_drop_for_that_shopper() -> None:
    state = shopper(ev("view_product", T0 - HOUR, product_id="p1", price=100))
    assert drop_for(state) == [
        Event(
            event_id=derived_id("c2/price_drop", "u1"),
            type="price_drop",
            ts=T0,
            user_id="u1",
            product_id="p1",
            category="shoes",
            price=80.0,
            old_price=100.0,
            drop_pct=20.0,
            via="view",
        )
    ]


def test_via_is_the_strongest_interest() -> None:
    view = ev("view_product", T0 - 3 * HOUR, product_id="p1", price=100)
    favorite = ev("add_favorite", T0 - 2 * HOUR, product_id="p1")
    cart = ev("add_to_cart", T0 - HOUR, product_id="p1", price=100)
    assert [e.via for e in drop_for(shopper(view, favorite))] == ["favorite"]
    assert [e.via for e in drop_for(shopper(view, favorite, cart))] == ["cart"]


def test_the_price_seen_is_from_the_latest_priced_event_before_the_update() -> None:
    state = shopper(
        ev("view_product", T0 - 3 * HOUR, product_id="p1", price=120),
        ev("add_to_cart", T0 - 2 * HOUR, product_id="p1", price=90),
        ev("view_product", T0 - HOUR, product_id="p1"),  # no price: not a price seen
        ev("view_product", T0 + HOUR, product_id="p1", price=80),  # after the update
    )
    (found,) = drop_for(state)
    assert (found.old_price, found.price, found.drop_pct, found.via) == (90.0, 80.0, 11.11, "cart")


def test_a_shopper_who_already_saw_the_new_price_or_lower_gets_nothing() -> None:
    saw_new = shopper(
        ev("view_product", T0 - 2 * HOUR, product_id="p1", price=100),
        ev("view_product", T0 - HOUR, product_id="p1", price=80),  # the feed came late
    )
    assert drop_for(saw_new) == []
    saw_lower = shopper(ev("add_to_cart", T0 - HOUR, product_id="p1", price=70))
    assert drop_for(saw_lower) == []


def test_without_a_price_seen_the_catalogs_price_before_the_update_is_the_old_price() -> None:
    state = shopper(ev("add_favorite", T0 - HOUR, product_id="p1"))
    (found,) = drop_for(state)
    assert (found.old_price, found.price, found.via) == (100.0, 80.0, "favorite")


def test_a_view_older_than_30_days_interests_no_more() -> None:
    old = shopper(ev("view_product", T0 - 30 * DAY - 1, product_id="p1", price=100))
    assert drop_for(old) == []
    edge = shopper(ev("view_product", T0 - 30 * DAY, product_id="p1", price=100))
    assert [e.via for e in drop_for(edge)] == ["view"]


def test_a_removed_favorite_or_a_lapsed_cart_line_derives_nothing() -> None:
    removed = shopper(
        ev("add_favorite", T0 - 2 * HOUR, product_id="p1"),
        ev("remove_favorite", T0 - HOUR, product_id="p1"),
    )
    assert drop_for(removed) == []
    lapsed = shopper(ev("add_to_cart", T0 - W.cart_max_age_ms - 1, product_id="p1", price=100))
    assert lapsed.cart  # still stored, but it no longer counts
    assert drop_for(lapsed) == []


def test_a_cart_line_or_favorite_added_after_the_update_derives_nothing() -> None:
    # A re-processed update (or one read late) must not reach a shopper who came later.
    assert drop_for(shopper(ev("add_favorite", T0 + 1, product_id="p1"))) == []
    assert drop_for(shopper(ev("add_to_cart", T0 + 1, product_id="p1", price=100))) == []


def test_derived_ids_are_deterministic_per_update_kind_and_shopper() -> None:
    state = shopper(ev("view_product", T0 - HOUR, product_id="p1", price=100))
    first, again = drop_for(state), drop_for(state)
    assert first == again
    assert first[0].event_id == derived_id("c2/price_drop", "u1")
    other = shopper(ev("view_product", T0 - HOUR, "u2", product_id="p1", price=100))
    assert drop_for(other)[0].event_id != first[0].event_id
    assert derived_id("c2/price_drop", "u1") != derived_id("c2/back_in_stock", "u1")
    assert derived_id("c2/price_drop", "u1") != derived_id("c3/price_drop", "u1")


def test_an_anonymous_shopper_gets_anon_id_an_identified_one_user_id() -> None:
    anon = shopper(ev("view_product", T0 - HOUR, "a1", product_id="p1", price=100))
    (found,) = drop_for(anon)
    assert (found.anon_id, found.user_id, found.key) == ("a1", None, "a1")
    user = shopper(ev("view_product", T0 - HOUR, "u7", product_id="p1", price=100))
    (found,) = drop_for(user)
    assert (found.anon_id, found.user_id) == (None, "u7")


def test_a_restock_derives_back_in_stock_with_via() -> None:
    state = shopper(ev("add_favorite", T0 - HOUR, product_id="p1"))
    restock = (update("c1", T0 - DAY, price=50, stock=0), update("c2", T0, stock=7))
    assert drop_for(state, *restock) == [
        Event(
            event_id=derived_id("c2/back_in_stock", "u1"),
            type="back_in_stock",
            ts=T0,
            user_id="u1",
            product_id="p1",
            price=50.0,
            via="favorite",
        )
    ]


def test_a_restock_at_a_lower_price_derives_both() -> None:
    state = shopper(ev("add_to_cart", T0 - HOUR, product_id="p1", price=50))
    both = (update("c1", T0 - DAY, price=50, stock=0), update("c2", T0, price=40, stock=7))
    assert [(e.type, e.via, e.drop_pct) for e in drop_for(state, *both)] == [
        ("price_drop", "cart", 20.0),
        ("back_in_stock", "cart", None),
    ]


def test_an_update_that_changes_nothing_derives_nothing() -> None:
    state = shopper(ev("add_to_cart", T0 - HOUR, product_id="p1", price=150))
    rise = (update("c1", T0 - DAY, price=100), update("c2", T0, price=120))
    assert drop_for(state, *rise) == []  # below the 150 seen, but the price went up
    first = (update("c1", T0, price=90),)
    assert drop_for(state, *first) == []  # the first price seen is no drop


def test_the_catalog_keeps_products_and_counts_bought_together() -> None:
    catalog = Catalog()
    assert catalog.product("p1") is None
    assert catalog.update(update("c1", T0, price=10, name="A")) is not None
    assert catalog.update(update("c0", T0 - 1, price=1)) is None  # stale
    assert catalog.product("p1") == Product(price=10.0, name="A", ts=T0, event="c1")
    catalog.together.record(
        pairs(ev("purchase", T0, order_id="o", items=[{"product_id": "p1"}, {"product_id": "p2"}]))
    )
    assert catalog.bought_together("p1", 5) == ["p2"]
    assert catalog.bought_together("p9", 5) == []


# -- product() and bought_together() in conditions -------------------------------------

SCOPE = Scope(event=True, entry=True, where="trigger.if")


def shop() -> Catalog:
    catalog = Catalog()
    catalog.update(update("c1", T0, "p1", price=100, stock=3, name="Shoe", props={"c": "red"}))
    catalog.update(update("c2", T0, "p2", price=10, stock=0, name="Sock", category="socks"))
    for items in (("p1", "p2"), ("p1", "p3"), ("p1", "p2", "p4")):
        order = ev("purchase", T0, order_id="o", items=[{"product_id": p} for p in items])
        catalog.together.record(pairs(order))
    return catalog


def evaluate(text: str, event: Event | None = None, catalog: Catalog | None = None) -> Any:
    condition = compile_expression(text, SCOPE, boolean=False)
    ctx = Context(UserState(), T0, event or ev("view_product", T0, product_id="p1"))
    ctx.catalog = catalog
    return condition.fn(ctx)


def test_product_reads_the_catalogs_latest_fields() -> None:
    catalog = shop()
    assert evaluate("product(event.product_id).stock", catalog=catalog) == 3
    assert evaluate("product('p2').name", catalog=catalog) == "Sock"
    assert evaluate("product('p2').category", catalog=catalog) == "socks"
    assert evaluate("product('p1').price * 2", catalog=catalog) == 200.0
    assert evaluate("product('p1').props", catalog=catalog) == {"c": "red"}
    assert evaluate("product(event.product_id).stock > 0", catalog=catalog) is True
    assert evaluate("product('p2').stock > 0", catalog=catalog) is False


def test_an_unknown_product_or_no_catalog_reads_null() -> None:
    assert evaluate("product('nope').name", catalog=shop()) is None
    assert evaluate("product('nope').stock > 0", catalog=shop()) is False
    assert evaluate("product('p1').name", catalog=None) is None
    assert evaluate("product('p1') == null", catalog=shop()) is False
    assert evaluate("product('nope') == null", catalog=shop()) is True


def test_bought_together_in_a_condition() -> None:
    catalog = shop()
    assert evaluate("bought_together('p1', 2)", catalog=catalog) == ["p2", "p3"]
    assert evaluate("bought_together('p1', 10)", catalog=catalog) == ["p2", "p3", "p4"]
    assert evaluate("bought_together('p1', 0)", catalog=catalog) == []
    assert evaluate("bought_together(event.product_id, 3) contains 'p4'", catalog=catalog)
    assert evaluate("bought_together('p1', 3)", catalog=None) == []


@pytest.mark.parametrize(
    ("text", "message", "column"),
    [
        ("product(1).stock > 0", "product needs a product id (a string), but 1 is a number", 8),
        ("product('p1').stok > 0", "product('p1') has no field 'stok' (did you mean 'stock'?)", 14),
        ("product() == null", "missing argument: product(PRODUCT)", 8),
        ("product('a', 'b') == null", "too many arguments: product(PRODUCT)", 13),
        (
            "bought_together(2, 3) contains 'x'",
            "bought_together needs a product id (a string), but 2 is a number",
            16,
        ),
        (
            "bought_together('p1', 'x') contains 'x'",
            "bought_together's N is how many product ids to return (a number), but 'x' is a string",
            22,
        ),
        ("bought_together('p1') contains 'x'", "missing argument: bought_together(PRODUCT, N)", 20),
        ("product('p1') > 3", "'>' needs numbers, but product('p1') is a record", 0),
    ],
)
def test_wrong_arguments_are_compile_errors_that_say_why(
    text: str, message: str, column: int
) -> None:
    with pytest.raises(ExpressionError) as caught:
        compile_expression(text, SCOPE)
    assert message in str(caught.value)
    assert caught.value.offset == column


def test_a_rules_file_with_a_wrong_product_call_names_file_line_and_column() -> None:
    text = (
        "version: 1\n"
        "journeys:\n"
        "  - id: drops\n"
        '    trigger: {event: price_drop, if: "product(event.drop_pct).stock > 0"}\n'
        "    steps:\n"
        "      - send: email\n"
    )
    with pytest.raises(RulesError) as caught:
        load_rules(text, "r.yaml")
    assert str(caught.value) == (
        "r.yaml:4:47: journey drops trigger.if: product needs a product id (a string), but "
        "event.drop_pct is a number"
    )


def test_derived_fields_are_readable_in_conditions() -> None:
    drop = Event(
        event_id="d",
        type="price_drop",
        ts=T0,
        user_id="u1",
        product_id="p1",
        price=80,
        old_price=100,
        drop_pct=20.0,
        via="view",
    )
    assert evaluate("event.via == 'view' and event.drop_pct >= 15", drop) is True
    assert evaluate("event.old_price - event.price", drop) == 20.0


# -- templates and replay --------------------------------------------------------------

DROP_SUBJECT = (
    "{{ product.name }}: {{ entry.old_price }} -> {{ entry.price }} (-{{ entry.drop_pct }}%) "
    "{{ entry.via }}"
)
DROP_BODY = (
    "{{ bought_together(entry.product_id, 2) | join(',') }} / {{ product('p2').name }} / "
    "[{{ product('nope').name }}] / [{{ bought_together('nope', 2) | join(',') }}]"
)
RULES = f"""\
version: 1
timezone: Europe/Istanbul
consent: {{email: opt_out}}
templates:
  drop:
    email: {{subject: {json.dumps(DROP_SUBJECT)}, body: {json.dumps(DROP_BODY)}}}
  back:
    email: {{subject: "{{{{ product.name }}}} is back ({{{{ product.stock }}}})"}}
journeys:
  - id: drops
    trigger: price_drop
    reentry: always
    steps:
      - send: email
        template: drop
  - id: back
    trigger: back_in_stock
    reentry: always
    steps:
      - send: email
        template: back
"""


def at(hm: str, d: int = 0) -> str:
    return f"2024-05-{6 + d:02d}T{hm}:00+03:00"


def line(eid: str, kind: str, when: str, who: str | None = None, **fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"event_id": eid, "type": kind, "ts": when, **fields}
    if who is not None:
        doc["anon_id" if who.startswith("a") else "user_id"] = who
    return doc


def run(
    docs: list[dict[str, Any]], rules: str = RULES, stats: ReplayStats | None = None
) -> tuple[list[Action], dict[str, UserState]]:
    states: dict[str, UserState] = {}
    engine = Engine(load_rules(rules, "catalog.yaml"))
    lines = [json.dumps(doc).encode() for doc in docs]
    return replay(engine, lines, drain=True, stats=stats, states=states), states


def summary(actions: list[Action]) -> list[tuple[str, str, dict[str, str] | None]]:
    return [(a.user_id, a.journey, a.content) for a in actions]


def bought(eid: str, *products: str) -> dict[str, Any]:
    items = [{"product_id": pid} for pid in products]
    return line(eid, "purchase", at("09:00"), "u9", order_id=eid, items=items)


BASE = [
    line("c1", "product_update", at("08:00"), product_id="p1", price=100, stock=5, name="Shoe"),
    line("c2", "product_update", at("08:00"), product_id="p2", price=10, stock=0, name="Sock"),
    bought("o1", "p1", "p2"),
    bought("o2", "p1", "p3"),
    bought("o3", "p1", "p2"),  # p2 twice with p1, p3 once
    line("v1", "view_product", at("10:00"), "u1", product_id="p1", price=100),
]


def test_templates_read_product_and_bought_together() -> None:
    actions, _ = run([*BASE, line("c3", "product_update", at("12:00"), product_id="p1", price=75)])
    assert summary(actions) == [
        (
            "u1",
            "drops",
            {"subject": "Shoe: 100.0 -> 75.0 (-25.0%) view", "body": "p2,p3 / Sock / [] / []"},
        )
    ]


def test_a_restock_reaches_the_shoppers_who_wanted_it() -> None:
    docs = [
        *BASE,
        line("f2", "add_favorite", at("10:00"), "u2", product_id="p2"),
        line("c3", "product_update", at("12:00"), product_id="p2", stock=8),
    ]
    actions, _ = run(docs)
    assert summary(actions) == [("u2", "back", {"subject": "Sock is back (8)"})]


def test_a_duplicate_product_update_changes_nothing() -> None:
    drop = line("c3", "product_update", at("12:00"), product_id="p1", price=80)
    later = line("f5", "add_favorite", at("12:30"), "u5", product_id="p1")
    once, once_states = run([*BASE, drop, later])
    twice, twice_states = run([*BASE, drop, drop, later, drop])  # again, and after u5 came
    content = {"subject": "Shoe: 100.0 -> 80.0 (-20.0%) view", "body": "p2,p3 / Sock / [] / []"}
    assert summary(once) == [("u1", "drops", content)]
    assert twice == once
    assert msgspec.json.encode(twice_states) == msgspec.json.encode(once_states)


def test_an_update_after_the_shoppers_later_view_at_the_new_price_is_no_drop() -> None:
    docs = [
        *BASE,
        line("v2", "view_product", at("10:00"), "u2", product_id="p1", price=100),
        line("v3", "view_product", at("11:00"), "u2", product_id="p1", price=80),  # site first
        line("c3", "product_update", at("12:00"), product_id="p1", price=80),
        line("c4", "product_update", at("13:00"), product_id="p1", price=90),  # a rise
    ]
    actions, _ = run(docs)
    assert [(a.user_id, a.journey) for a in actions] == [("u1", "drops")]


def test_an_identity_link_moves_an_anonymous_shoppers_interest_to_the_user() -> None:
    docs = [
        *BASE,
        line("a-v", "view_product", at("10:00"), "a7", product_id="p1", price=100),
        line("a-f", "add_favorite", at("10:05"), "a8", product_id="p1"),
        line("lg", "login", at("11:00"), "u7", anon_id="a7"),
        line("c3", "product_update", at("12:00"), product_id="p1", price=70),
    ]
    stats = ReplayStats()
    actions, states = run(docs, stats=stats)
    assert [(a.user_id, a.content["subject"]) for a in actions if a.content] == [
        ("a8", "Shoe: 100.0 -> 70.0 (-30.0%) favorite"),  # still anonymous
        ("u1", "Shoe: 100.0 -> 70.0 (-30.0%) view"),
        ("u7", "Shoe: 100.0 -> 70.0 (-30.0%) view"),  # a7's view, merged at the login
    ]
    assert "a7" not in states
    assert [r.via for r in states["a8"].windows["price_drop"]] == ["favorite"]
    assert [r.old_price for r in states["u7"].windows["price_drop"]] == [100.0]
    assert (states["a8"].identified, states["u7"].identified) == (False, True)
    assert stats.derived == 3


def test_a_lapsed_view_gets_no_drop_in_replay() -> None:
    docs = [
        *BASE,
        line("v8", "view_product", "2024-04-06T11:59:59+03:00", "u8", product_id="p1", price=100),
        line("v6", "view_product", "2024-04-06T12:00:00+03:00", "u6", product_id="p1", price=100),
        line("c3", "product_update", at("12:00"), product_id="p1", price=70),
    ]
    actions, _ = run(sorted(docs, key=lambda d: parse_ts(d["ts"])))
    assert [a.user_id for a in actions] == ["u1", "u6"]  # u8's view is 30 days and 1s old


REMINDER = """\
version: 1
timezone: Europe/Istanbul
consent: {email: opt_out}
journeys:
  - id: back
    trigger: back_in_stock
    steps:
      - wait: 1d
      - if: "product(entry.product_id).stock > 0"
        then:
          - send: email
"""


def test_a_timer_reads_the_catalog_as_it_was_when_the_timer_was_due() -> None:
    docs = [
        line("c1", "product_update", at("08:00"), product_id="p1", stock=0, name="Shoe"),
        line("f1", "add_favorite", at("09:00"), "u1", product_id="p1"),
        line("c2", "product_update", at("10:00"), product_id="p1", stock=3),  # back in stock
        line("c3", "product_update", at("20:00"), product_id="p1", stock=0),  # sold out
        line("c4", "product_update", at("12:00", 1), product_id="p1", stock=4),  # after 10:00
    ]
    actions, _ = run(docs, REMINDER)
    assert actions == []  # at day 1 10:00 the stock was 0


TOGETHER_LATER = """\
version: 1
timezone: Europe/Istanbul
consent: {email: opt_out}
templates:
  with_it:
    email: {subject: "{% for pid in bought_together(entry.product_id, 5) %}{{ pid }} {% endfor %}"}
journeys:
  - id: cross
    trigger: add_to_cart
    steps:
      - wait: 1h
      - if: "'p2' in bought_together(entry.product_id, 5)"
        then:
          - {send: email, template: with_it}
"""


def _order(eid: str, when: str, who: str, *products: str) -> dict[str, Any]:
    items = [{"product_id": pid} for pid in products]
    return line(eid, "purchase", when, who, order_id=eid, items=items)


@pytest.mark.parametrize("next_event", [False, True], ids=["fired-at-the-end", "fired-lazily"])
def test_a_timer_reads_bought_together_as_it_stood_when_the_timer_was_due(
    next_event: bool,
) -> None:
    """A step due at 10:00 counts the orders before 10:00 only, whenever replay runs
    it: the live engine runs it as the watermark passes 10:00 (module rules of
    engine.bought_together; orders at the due time itself come after it)."""
    docs = [
        line("a1", "add_to_cart", at("09:00"), "u1", product_id="p1", price=10),
        _order("o1", at("09:30"), "u2", "p1", "p2"),
        _order("o2", at("10:00"), "u3", "p1", "p3"),  # at the due time: after the timer
        _order("o3", at("11:00"), "u4", "p1", "p4", "p5"),
    ]
    if next_event:  # u1's next event makes replay fire the timer then, at 12:00
        docs.append(line("v1", "view_product", at("12:00"), "u1", product_id="p9"))
    actions, _ = run(docs, TOGETHER_LATER)
    assert [(a.user_id, a.at, a.content) for a in actions] == [
        ("u1", parse_ts(at("10:00")), {"subject": "p2 "})
    ]


def test_an_event_reads_bought_together_as_it_is() -> None:
    """Without a wait, the step runs at the event and counts every order before it."""
    rules = TOGETHER_LATER.replace("      - wait: 1h\n", "")
    docs = [
        _order("o1", at("09:30"), "u2", "p1", "p2"),
        _order("o2", at("10:00"), "u3", "p1", "p3"),
        line("a1", "add_to_cart", at("10:00"), "u1", product_id="p1", price=10),
    ]
    actions, _ = run(docs, rules)
    assert [a.content for a in actions] == [{"subject": "p2 p3 "}]
