"""The long-history language (SPEC section 8): all-time forms, first, since_first, date(),
between(), retention of reads, and the warnings of approximate ranges."""

# ruff: noqa: E501 (rules fixtures hold one-line expressions whose columns are asserted)

from __future__ import annotations

import copy
import itertools
import random
import textwrap
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from engine.errors import ExpressionError, RulesError
from engine.events import Event, parse_ts
from engine.history import month_of, month_start
from engine.rules.compiler import Scope, compile_expression
from engine.rules.context import Context
from engine.rules.loader import load_rules
from engine.state import UserState, apply, prune
from engine.windows import DEFAULT_CONFIG, WindowConfig, with_timezone

ZONE = "Europe/Istanbul"
IST = with_timezone(DEFAULT_CONFIG, ZONE)
DAY = 86_400_000
NOW = parse_ts("2024-11-01T12:00:00+03:00")
_serial = itertools.count()


def ev(event_type: str, ts: int, **fields: Any) -> Event:
    return Event(event_id=f"x{next(_serial)}", type=event_type, ts=ts, user_id="u", **fields)


def local(text: str) -> int:
    """Epoch ms of a wall-clock time in Istanbul."""
    return int(datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(ZONE)).timestamp() * 1000)


def value(text: str, state: UserState, now: int = NOW, config: WindowConfig = IST) -> Any:
    condition = compile_expression(text, Scope(where="t", timezone=config.timezone), boolean=False)
    return condition.fn(Context(state, now, windows=config))


def live(events: list[Event], config: WindowConfig = IST, *, pruned: bool) -> UserState:
    """The state after ``events`` applied in time order, pruned after each or never."""
    state = UserState()
    for event in sorted(events, key=lambda e: e.ts):
        assert apply(state, event, event.ts, config) == "applied"
        if pruned:
            prune(state, event.ts, config)
    return state


# -- all time ---------------------------------------------------------------------------


def test_all_time_forms_survive_the_windows_rolling_over() -> None:
    events = [ev("view_product", NOW - d * 40 * DAY, product_id="p") for d in range(3)]
    events += [ev("purchase", NOW - d * 300 * DAY, revenue=10.25) for d in (1, 2, 3)]
    events += [ev("signup", NOW - 1000 * DAY)]
    for pruned in (False, True):
        state = live(events, pruned=pruned)
        assert value("count(view_product)", state) == 3
        assert value("count(view_product, 30d)", state) == 1
        assert value("count(purchase)", state) == 3
        assert value("sum(purchase, revenue)", state) == 30.75
        assert value("sum(purchase, revenue, 400d)", state) == 10.25
        assert value("exists(signup)", state) is True
        assert value("exists(signup, it.ts > 0)", state) is False  # WHERE: the window only
        assert value("exists(login)", state) is False
        assert value("since(purchase)", state) == 300 * DAY
        assert value("since(signup)", state) == 1000 * DAY
        assert value("first(purchase)", state) == NOW - 900 * DAY
        assert value("since_first(view_product)", state) == 80 * DAY
        assert value("first(login)", state) is None
        assert value("since_first(login)", state) is None
        assert value("since(login)", state) is None
        assert value("count(purchase) == 3 and since_first(purchase) > 2 * 365d", state) is True


# -- date() -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "zone", "iso"),
    [
        ("date('2024-01-01')", ZONE, "2023-12-31T21:00:00Z"),
        ("date('2024-01-01')", "UTC", "2024-01-01T00:00:00Z"),
        ("date('2024-07-01T10:00')", "Europe/Berlin", "2024-07-01T08:00:00Z"),  # summer time
        ("date('2024-01-01T10:00')", "Europe/Berlin", "2024-01-01T09:00:00Z"),
        ("date('2024-03-10 02:30:15')", "UTC", "2024-03-10T02:30:15Z"),
    ],
)
def test_date_is_epoch_ms_in_the_rules_zone(text: str, zone: str, iso: str) -> None:
    config = with_timezone(DEFAULT_CONFIG, zone)
    assert value(text, UserState(), config=config) == parse_ts(iso)


@pytest.mark.parametrize(
    ("text", "offset", "message"),
    [
        ("date('2024-02-30') > 0", 5, "is not a valid date (day is out of range for month)"),
        ("date('2024-1-1') > 0", 5, "is not a date; expected 'YYYY-MM-DD' or 'YYYY-MM-DDTHH:MM'"),
        ("date('1969-12-31') > 0", 5, "the year must be between 1970 and 2099"),
        ("date(2024) > 0", 5, "date needs a quoted date"),
        ("date() > 0", 5, "missing argument: date('YYYY-MM-DD')"),
        ("between(1, 2) > 0", 0, "between(FROM, TO) is a range in place of WITHIN"),
        ("count(purchase, between(1)) > 0", 25, "between takes two numbers"),
        ("count(purchase, between('a', 2)) > 0", 24, "between's FROM must be a time"),
        ("count(purchase, 1d, between(1, 2)) > 0", 20, "between(FROM, TO) is a range"),
    ],
)
def test_date_and_between_errors_point_at_the_problem(text: str, offset: int, message: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        compile_expression(text, Scope(where="t", timezone=ZONE))
    assert message in caught.value.message
    assert caught.value.offset == offset


def test_a_bad_date_is_a_file_line_col_error() -> None:
    text = """\
        version: 1
        timezone: Europe/Istanbul
        journeys:
          - id: j
            trigger: login
            audience: "count(purchase, between(date('2023-01-01'), date('2023-13-01'))) > 0"
            steps: [{send: email}]
    """
    with pytest.raises(RulesError) as caught:
        load_rules(textwrap.dedent(text), "r.yaml")
    (problem,) = caught.value.problems
    assert problem.startswith("r.yaml:6:65: journey j audience: date: '2023-13-01' is not a valid")


# -- between ------------------------------------------------------------------------------


def _history(seed: int) -> list[Event]:
    """Two and a half years of purchases (some on month edges in Istanbul) and views."""
    rng = random.Random(seed)
    start = local("2022-05-01T00:00")
    events = []
    for _ in range(160):
        ts = start + rng.randrange(NOW - start)
        category = rng.choice(["shoes", "shoes/running", "bags", None])
        events.append(ev("purchase", ts, revenue=round(rng.uniform(1, 300), 2), category=category))
    for month in range(24, 31):  # exactly on a month start, and just before it
        edge = month_start((2022 - 1970) * 12 + month, ZONE)
        events += [ev("purchase", edge, revenue=1.0), ev("purchase", edge - 1, revenue=2.0)]
    for _ in range(200):
        ts = start + rng.randrange(NOW - start)
        events.append(ev("view_product", ts, product_id="p", category="shoes"))
    return events


WHERES = [
    "",
    ", it.category == 'shoes'",
    ", it.category != 'shoes'",
    ", it.category in ['bags', 'shoes/running']",
    ", 'shoes' in it.category",
    ", it.category == null",
]


def test_between_on_month_starts_is_exact_from_buckets_and_windows() -> None:
    events = _history(3)
    states = [live(events, pruned=False), live(events, pruned=True)]
    first = (2022 - 1970) * 12 + 4  # May 2022
    last = month_of(NOW, ZONE) + 1
    rng = random.Random(5)
    pairs = [(a, b) for a in range(first, last) for b in range(a + 1, last + 1)]
    for lo_m, hi_m in rng.sample(pairs, 60):
        lo, hi = month_start(lo_m, ZONE), month_start(hi_m, ZONE)
        span = f"between({lo}, {hi})"
        for where in WHERES:
            chosen = [
                e
                for e in events
                if e.type == "purchase" and lo <= e.ts < hi and _where(where, e.category)
            ]
            expected = (len(chosen), round(sum(e.revenue or 0 for e in chosen), 2))
            for state in states:
                got = (
                    value(f"count(purchase, {span}{where})", state),
                    round(value(f"sum(purchase, revenue, {span}{where})", state), 2),
                )
                assert got == expected, (lo_m, hi_m, where)
                assert value(f"exists(purchase, {span}{where})", state) is (expected[0] > 0)
        views = sum(1 for e in events if e.type == "view_product" and lo <= e.ts < hi)
        for state in states:
            assert value(f"count(view_product, {span})", state) == views


def _where(where: str, category: str | None) -> bool:
    if not where:
        return True
    return {
        ", it.category == 'shoes'": category == "shoes",
        ", it.category != 'shoes'": category != "shoes",
        ", it.category in ['bags', 'shoes/running']": category in ("bags", "shoes/running"),
        ", 'shoes' in it.category": category is not None and "shoes" in category,
        ", it.category == null": category is None,
    }[where]


def test_a_range_the_window_covers_is_exact_to_the_millisecond_with_any_where() -> None:
    events = _history(4)
    state = live(events, pruned=True)
    rng = random.Random(6)
    for _ in range(40):
        lo = NOW - rng.randrange(390 * DAY)
        hi = lo + rng.randrange(1, 200 * DAY)
        expected = [e for e in events if e.type == "purchase" and lo <= e.ts < hi]
        cheap = sum(1 for e in expected if (e.revenue or 0) < 100)
        assert value(f"count(purchase, between({lo}, {hi}))", state) == len(expected)
        assert value(f"count(purchase, between({lo}, {hi}), it.revenue < 100)", state) == cheap


def test_an_old_range_off_month_starts_counts_the_months_that_start_inside_it() -> None:
    march, june = local("2023-03-01T00:00"), local("2023-06-01T00:00")
    events = [
        ev("purchase", local("2023-02-20T10:00"), revenue=1.0),  # before FROM's month start
        ev("purchase", local("2023-03-10T10:00"), revenue=1.0),  # inside, before FROM
        ev("purchase", local("2023-04-10T10:00"), revenue=1.0),
        ev("purchase", local("2023-05-25T10:00"), revenue=1.0),  # after TO, in TO's month
        ev("purchase", local("2023-06-10T10:00"), revenue=1.0),
    ]
    state = live(events, pruned=True)
    lo, hi = march + 15 * DAY, june - 10 * DAY  # 2023-03-16 .. 2023-05-22
    # Approximate: April (starts inside) and May (starts before TO) count whole.
    assert value(f"count(purchase, between({lo}, {hi}))", state) == 2
    assert value(f"count(purchase, between({march}, {june}))", state) == 3  # exact


def test_null_or_empty_ranges_count_nothing() -> None:
    state = live([ev("purchase", NOW - DAY, revenue=5.0)], pruned=False)
    assert value("count(purchase, between(profile.nothing, now))", state) == 0
    assert value("exists(purchase, between(now, now - 1d))", state) is False
    assert value("sum(purchase, revenue, between(now - 2d, now))", state) == 5.0


def test_a_within_longer_than_the_window_reads_older_whole_months_from_buckets() -> None:
    views = [
        ev("view_product", local(f"2024-{m:02d}-15T12:00"), product_id="p") for m in range(1, 11)
    ]
    state = live(views, pruned=True)
    now = local("2024-10-20T12:00")
    assert value("count(view_product, it.ts > 0)", state, now) == 1  # 30 days: October's
    # 120d reaches 2024-06-22: July, August and September start inside it, October in the window.
    assert value("count(view_product, 120d)", state, now) == 4
    assert value("count(view_product, 10d)", state, now) == 1


# -- retention: reads never depend on whether prune ran ------------------------------------


READS = [
    "count(view_product, it.price > 0)",
    "count(view_product, 60d, it.product_id == 'p1')",
    "exists(view_product, it.product_id == 'p1')",
    "sum(view_product, price)",
    "last(view_product, product_id)",
    "cart.count",
    "cart.total",
    "cart.items",
    "in_cart('p1')",
    "favorited('p1')",
    "favorites",
    "count(purchase, 500d)",
]


def test_reads_ignore_what_retention_drops_pruned_or_not() -> None:
    t0 = parse_ts("2024-01-01T00:00:00Z")
    events = [
        ev("view_product", t0, product_id="p1", price=10.0),
        ev("purchase", t0 + 1, revenue=1.0),
        ev("add_to_cart", t0 + 2, product_id="p1", price=10.0),
        ev("add_favorite", t0 + 3, product_id="p1"),
        ev("view_product", t0 + 20 * DAY, product_id="p2", price=5.0),
    ]
    unpruned = live(events, pruned=False)
    for now in (t0 + 25 * DAY, t0 + 31 * DAY, t0 + 45 * DAY, t0 + 401 * DAY, t0 + 450 * DAY):
        pruned = copy.deepcopy(unpruned)
        prune(pruned, now, IST)
        for text in READS:
            assert value(text, unpruned, now) == value(text, pruned, now), (text, now)
    assert value("count(view_product, it.price > 0)", unpruned, t0 + 25 * DAY) == 2
    assert value("count(view_product, it.price > 0)", unpruned, t0 + 31 * DAY) == 1
    assert value("in_cart('p1')", unpruned, t0 + 29 * DAY) is True
    assert value("in_cart('p1')", unpruned, t0 + 31 * DAY) is False
    assert value("last(view_product, price)", unpruned, t0 + 51 * DAY) is None


# -- warnings --------------------------------------------------------------------------------

WARNED = """\
    version: 1
    timezone: Europe/Istanbul
    journeys:
      - id: exact
        trigger: login
        audience: "count(purchase, between(date('2023-01-01'), date('2024-01-01'))) > 3 and count(purchase, between(date('2024-01-01'), date('2025-01-01')), it.category == 'shoes') == 0"
        steps: [{send: email}]
      - id: approximate
        trigger: {event: login, if: "count(purchase, between(date('2023-01-15'), now)) > 1"}
        audience: "sum(view_product, price, between(date('2023-01-01'), date('2023-02-01'))) > 0 or count(purchase, between(date('2023-01-01'), date('2023-02-01')), it.revenue > 5) > 0"
        steps:
          - if: "count(view_product, 90d) > 1 or count(add_to_cart, between(date('2023-01-01'), date('2023-02-01')), it.category == 'x') > 0"
            then: [{send: email}]
"""


def test_validate_warns_where_a_range_can_only_be_approximate() -> None:
    rules = load_rules(textwrap.dedent(WARNED), "w.yaml")
    lines = list(rules.warnings)
    assert all(": warning: journey approximate " in line for line in lines), lines
    assert lines[0].startswith("w.yaml:9:58: warning: journey approximate trigger.if: between's ")
    assert "FROM date('2023-01-15') is not the start of a month in Europe/Istanbul" in lines[0]
    assert lines[1].startswith("w.yaml:9:78: ")
    assert "TO now is not a constant date" in lines[1]
    assert "sum(view_product, price) adds nothing" in lines[2]
    assert "WHERE reads it.revenue" in lines[3]
    assert "WITHIN 90d is longer than the view_product window keeps (30d by default)" in lines[4]
    assert "keep categories only for purchase" in lines[5]
    assert len(lines) == 6


def test_exact_rules_load_without_warnings() -> None:
    text = WARNED.split("      - id: approximate")[0]
    assert load_rules(textwrap.dedent(text), "w.yaml").warnings == ()
