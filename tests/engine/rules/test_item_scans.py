"""Additions for the Black Friday segments: sum_items() over purchase lines, `anonymous`,
and no approximate-range warning for a between that starts at an enclosing record's it.ts."""

# ruff: noqa: E501 (rules fixtures hold one-line expressions whose columns are asserted)

from __future__ import annotations

import itertools
import json
import textwrap
from typing import Any

import pytest

from engine.errors import ExpressionError, RulesError
from engine.events import Event, decode_event
from engine.rules import segment_defs
from engine.rules.compiler import Scope, compile_expression
from engine.rules.context import Context
from engine.rules.loader import load_rules
from engine.rules.model import Deps
from engine.rules.parser import parse
from engine.state import UserState, apply, dumps, loads, to_view

NOW = 1_731_661_200_000  # 2024-11-15T12:00:00+03:00
DAY = 86_400_000
_serial = itertools.count()


def ev(event_type: str, ts: int, who: dict[str, str] | None = None, **fields: Any) -> Event:
    doc = {
        "event_id": f"i{next(_serial)}",
        "type": event_type,
        "ts": ts,
        **(who or {"user_id": "u"}),
    }
    return decode_event(json.dumps({**doc, **fields}))


def state_of(*events: Event) -> UserState:
    state = UserState()
    for event in events:
        assert apply(state, event, NOW) == "applied"
    return state


def value(text: str, state: UserState, now: int = NOW) -> Any:
    condition = compile_expression(text, Scope(where="t"), boolean=False)
    return condition.fn(Context(state, now))


def warnings(text: str) -> list[str]:
    return [message for _, message in compile_expression(text, Scope(where="t")).warnings]


SHOES = ev(
    "purchase",
    NOW - 20 * DAY,
    order_id="o1",
    props={"discount_pct": 20},
    items=[
        {"product_id": "p1", "category": "shoes", "price": 700.0},
        {"product_id": "p2", "category": "shoes", "price": 200.0, "quantity": 2},
        {"product_id": "p3", "category": "beauty", "price": 50.0},
        {"product_id": "p4", "price": 10.0},  # no category, no purchase category either
    ],
)
MIXED = ev(
    "purchase",
    NOW - 100 * DAY,
    order_id="o2",
    category="shoes",  # the purchase's category: an item without one takes it
    items=[
        {"product_id": "p5", "price": 300.0},
        {"product_id": "p6", "category": "electronics", "price": 2000.0},
    ],
)
PLAIN = ev("purchase", NOW - 2 * DAY, order_id="o3", revenue=80.0, category="shoes")
OLD = ev("purchase", NOW - 390 * DAY, order_id="o4", revenue=5.0)


# -- sum_items -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sum_items(revenue, 30d, it.category == 'shoes')", 1180),  # 700 + 2 x 200 + o3's 80
        (
            "sum_items(revenue, 180d, it.category == 'shoes')",
            1480,
        ),  # + p5 300 (o2's category) + o3 80
        ("sum_items(quantity, 30d, it.category == 'shoes')", 4),
        ("sum_items(quantity, 30d)", 6),
        ("sum_items(revenue, 30d, it.category == null)", 10),
        ("sum_items(revenue, 30d, it.price >= 200 and it.props.discount_pct >= 20)", 1100),
        ("sum_items(revenue, 30d, it.order_id == 'o1' and it.product_id in ['p1', 'p3'])", 750),
        ("sum_items(price, 30d, it.ts == now - 20d)", 960),
        ("sum_items(revenue, 5d)", 80),  # a purchase without items is one line: its revenue
        ("sum_items(quantity, 5d)", 1),
        ("sum_items(revenue, between(now - 101d, now - 99d))", 2300),
        ("sum_items(revenue, between(now - 99d, now - 101d))", 0),
        ("sum_items(revenue)", 3545),  # every purchase the window keeps (400 days)
        ("sum_items(props.discount_pct, 30d)", 80),  # the purchase's props, per line
    ],
)
def test_sum_items_adds_a_field_over_purchase_lines(text: str, expected: int) -> None:
    assert value(text, state_of(OLD, MIXED, SHOES, PLAIN)) == expected


def test_sum_items_reads_only_what_the_purchase_window_keeps() -> None:
    state = state_of(OLD, PLAIN)
    assert value("sum_items(revenue)", state) == 85
    assert value("sum_items(revenue)", state, NOW + 20 * DAY) == 80  # OLD is 410 days old
    assert value("sum_items(revenue, 30d)", UserState()) == 0
    assert value("sum_items(revenue, between(profile.missing, now))", state) == 0
    assert value("sum_items(revenue, 30d, it.category == 'shoes') > 50", state) is True


def test_sum_items_restores_it_so_wheres_nest() -> None:
    state = state_of(SHOES, PLAIN)
    text = "count(purchase, 30d, sum_items(revenue, 30d, it.category == 'shoes') > 1000 and it.order_id == 'o1')"
    assert value(text, state) == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "sum_items() > 1",
            "missing argument: sum_items(FIELD [, WITHIN or between(FROM, TO)] [, WHERE])",
        ),
        ("sum_items(revenue, 30d, true, 1) > 1", "too many arguments"),
        ("sum_items(product_id) > 1", "sum_items needs a number field of a purchase line"),
        ("sum_items(revnue) > 1", "unknown field revnue (did you mean 'revenue'?)"),
        ("sum_items(revenue, 30d, it.price) > 1", "WHERE of sum_items must be a condition"),
        ("sum_items(revenue, 30) > 1", "WITHIN must be a duration"),
        ("sum_items(revenue, between(1)) > 1", "between takes two numbers"),
    ],
)
def test_sum_items_errors(text: str, message: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        compile_expression(text, Scope(where="t"))
    assert message in caught.value.message


def test_sum_items_warns_when_a_range_can_reach_before_the_window() -> None:
    assert warnings("sum_items(revenue, 90d) > 1") == []
    assert (
        warnings("exists(purchase, 30d, sum_items(revenue, between(it.ts, it.ts + 1d)) > 1)") == []
    )
    (long,) = warnings("sum_items(revenue, 500d) > 1")
    assert long.startswith(
        "t: sum_items: WITHIN 500d is longer than the purchase window keeps (400d"
    )
    (dated,) = warnings("sum_items(revenue, between(1700000000000, now)) > 1")
    assert "once FROM 1700000000000 is older than the purchase window (400d by default)" in dated


def test_sum_items_in_a_segment_depends_on_purchases_and_ages_with_within() -> None:
    found = segment_defs.analyse(parse("sum_items(revenue, 30d, it.category == 'shoes') > 9"), {})
    assert found == Deps(types=frozenset({"purchase"}), agings=frozenset({("purchase", 30 * DAY)}))
    ranged = segment_defs.analyse(parse("sum_items(revenue, between(now - 1d, now)) > 9"), {})
    assert ranged.types == {"purchase"}
    assert ranged.continuous
    assert not ranged.every_type


# -- anonymous ---------------------------------------------------------------------------


def test_anonymous_until_an_event_carries_a_user_id() -> None:
    guest = state_of(ev("purchase", NOW - DAY, {"anon_id": "a1"}, revenue=10.0))
    assert value("anonymous", guest) is True
    assert value("anonymous and exists(purchase)", guest) is True
    assert to_view(guest)["identified"] is False
    apply(guest, ev("login", NOW, {"anon_id": "a1", "user_id": "u1"}), NOW)
    assert value("anonymous", guest) is False
    assert value("anonymous", state_of(ev("signup", NOW))) is False
    assert value("anonymous", UserState()) is True  # nothing applied: no user id seen


def test_identified_round_trips_and_old_states_load() -> None:
    state = state_of(ev("signup", NOW))
    assert loads(dumps(state)).identified is True
    old = UserState(key="u9", events=1)
    assert b"identified" not in dumps(old)  # omitted while false: states stay as small
    assert loads(dumps(old)).identified is False


def test_anonymous_is_a_bare_name() -> None:
    with pytest.raises(ExpressionError) as caught:
        compile_expression("anonymous.x", Scope(where="t"))
    assert caught.value.message == "t: anonymous has no fields"
    with pytest.raises(ExpressionError) as close:
        compile_expression("anonymus", Scope(where="t"))
    assert "did you mean 'anonymous'?" in close.value.message


# -- it.ts ranges inside the window ------------------------------------------------------


ACTIVATED = "exists(engagement, 30d, it.channel == 'email' and it.kind == 'clicked' and exists(purchase, between(it.ts, it.ts + 3d)))"


def test_a_between_from_an_enclosing_records_ts_is_exact_and_silent() -> None:
    assert warnings(ACTIVATED) == []
    click = ev("engagement", NOW - 5 * DAY, action_id="a", channel="email", kind="clicked")
    bought = ev("purchase", NOW - 3 * DAY, revenue=5.0)
    late = ev("purchase", NOW - 1 * DAY, revenue=5.0)
    assert value(ACTIVATED, state_of(click, bought)) is True
    assert value(ACTIVATED, state_of(click, late)) is False
    before = ev("purchase", NOW - 6 * DAY, revenue=5.0)
    assert value(ACTIVATED, state_of(before, click)) is False


@pytest.mark.parametrize(
    "text",
    [
        # the record's window reaches further back than the counted type's
        "exists(purchase, 30d, exists(view_product, between(it.ts, it.ts + 1d)))",
        # 30 days of engagement minus 380 days reach past 400 days of purchases
        "exists(engagement, 30d, exists(purchase, between(it.ts - 380d, it.ts)))",
        # not it.ts alone
        "exists(engagement, 30d, exists(purchase, between(it.ts * 1, it.ts)))",
        # it.ts outside a WHERE is an error, not a silence: see the next test
    ],
)
def test_other_it_ts_ranges_still_warn(text: str) -> None:
    assert any("is not a constant date" in message for message in warnings(text))


def test_an_it_ts_range_within_reach_is_silent() -> None:
    assert warnings("exists(engagement, 30d, exists(purchase, between(it.ts - 300d, it.ts)))") == []
    with pytest.raises(ExpressionError):
        compile_expression("exists(purchase, between(it.ts, now))", Scope(where="t"))


def test_the_rules_file_reports_sum_items_errors_at_their_column() -> None:
    text = textwrap.dedent(
        """\
        version: 1
        segments:
          spenders: "sum_items(order_id, 30d) > 1"
        journeys: []
        """
    )
    with pytest.raises(RulesError) as caught:
        load_rules(text, "r.yaml")
    assert str(caught.value).startswith(
        "r.yaml:3:24: segment spenders: sum_items needs a number field"
    )
