"""All-time rollups and monthly buckets (engine/history.py, SPEC section 8)."""

from __future__ import annotations

import itertools
from datetime import datetime
from zoneinfo import ZoneInfo

import msgspec

from bench.history import BUDGET, PROFILE, Profile, added_bytes, build
from engine.events import Event, parse_ts
from engine.history import (
    CATS_MAX,
    CATS_PER_MONTH,
    KEEP_MONTHS,
    TypeRollup,
    backfill,
    merge_rollups,
    month_label,
    month_of,
    month_start,
    months_total,
    record,
)
from engine.state import UserState, apply, dumps, ensure_rollups, loads
from engine.windows import DEFAULT_CONFIG, with_timezone

IST = with_timezone(DEFAULT_CONFIG, "Europe/Istanbul")
_serial = itertools.count()


def purchase(ts: int | str, revenue: float | None = None, category: str | None = None) -> Event:
    stamp = parse_ts(ts) if isinstance(ts, str) else ts
    return Event(
        event_id=f"h{next(_serial)}",
        type="purchase",
        ts=stamp,
        user_id="u",
        revenue=revenue,
        category=category,
    )


def rollups_of(*events: Event, config=IST) -> dict[str, TypeRollup]:  # type: ignore[no-untyped-def]
    rollups: dict[str, TypeRollup] = {}
    for event in events:
        record(rollups, event.type, event.ts, event.category, event.revenue, config)
    return rollups


def test_month_of_follows_the_zone_and_the_table_matches_zoneinfo() -> None:
    # 2024-01-31T21:30Z is 2024-02-01T00:30 in Istanbul (UTC+3): February there.
    ts = parse_ts("2024-01-31T21:30:00Z")
    assert month_label(month_of(ts, "UTC")) == "2024-01"
    assert month_label(month_of(ts, "Europe/Istanbul")) == "2024-02"
    for zone in ("Europe/Istanbul", "America/New_York", "Australia/Lord_Howe"):
        for year, month in ((1999, 3), (2024, 3), (2024, 11), (2031, 10)):
            start = datetime(year, month, 1, tzinfo=ZoneInfo(zone)).timestamp() * 1000
            index = (year - 1970) * 12 + month - 1
            assert month_start(index, zone) == start
            assert month_of(int(start), zone) == index
            assert month_of(int(start) - 1, zone) == index - 1


def test_record_counts_first_last_revenue_and_months() -> None:
    rollups = rollups_of(
        purchase("2024-03-10T10:00:00Z", 10.10, "shoes"),
        purchase("2024-01-05T10:00:00Z", 5.05),  # out of order: an older month, no category
        purchase("2024-03-20T10:00:00Z", 0.2, "shoes"),
        purchase("2024-03-21T10:00:00Z", 1.0, "bags"),
    )
    roll = rollups["purchase"]
    assert (roll.n, roll.first, roll.last) == (
        4,
        parse_ts("2024-01-05T10:00:00Z"),
        parse_ts("2024-03-21T10:00:00Z"),
    )
    assert roll.rev == 16.35
    january, march = (
        month_of(parse_ts("2024-01-05T10:00:00Z"), "UTC"),
        month_of(parse_ts("2024-03-10T10:00:00Z"), "UTC"),
    )
    assert months_total(roll, january, january + 1) == (1, 505)
    assert months_total(roll, march, march + 1) == (3, 1130)
    assert months_total(roll, january, march + 1) == (4, 1635)
    assert months_total(roll, march, march + 1, lambda c: c == "shoes") == (2, 1030)
    assert months_total(roll, january, march + 1, lambda c: c is None) == (1, 505)
    assert months_total(roll, january + 1, march) == (0, 0)


def test_types_without_detail_keep_counts_only() -> None:
    views = [
        Event(
            event_id=f"v{i}",
            type="view_product",
            ts=parse_ts("2024-02-01T00:00:00Z") + i,
            user_id="u",
            category="shoes",
            product_id="p",
            price=5.0,
        )
        for i in range(3)
    ]
    roll = rollups_of(*views)["view_product"]
    assert roll.months == [[0, 3]]
    assert roll.cats == []
    assert roll.rev == 0.0
    feb = month_of(views[0].ts, "Europe/Istanbul")
    assert months_total(roll, feb, feb + 1, lambda c: c == "shoes") == (0, 0)  # category unknown
    assert months_total(roll, feb, feb + 1, lambda c: c is None) == (3, 0)


def test_months_older_than_six_years_are_dropped_and_offsets_stay_small() -> None:
    first = parse_ts("2015-01-10T12:00:00Z")
    events = [purchase(first + m * 31 * 86_400_000, 1.0, f"c{m % 3}") for m in range(100)]
    roll = rollups_of(*events)["purchase"]
    assert roll.n == 100  # all-time figures keep everything
    newest = month_of(events[-1].ts, "Europe/Istanbul")
    months = {month_of(e.ts, "Europe/Istanbul") for e in events}
    kept = sorted(m for m in months if m >= newest - KEEP_MONTHS)
    assert [roll.base + row[0] for row in roll.months] == kept
    assert len(kept) < len(months)
    assert all(0 <= row[0] <= KEEP_MONTHS for row in roll.months)
    # An event older than what is kept counts all-time only.
    rows = len(roll.months)
    record({"purchase": roll}, "purchase", first, "c0", 1.0, IST)
    assert roll.n == 101
    assert len(roll.months) == rows


def test_categories_are_capped_per_month_and_per_table() -> None:
    base = parse_ts("2024-05-02T00:00:00Z")
    events = [purchase(base + i, 1.0, f"cat{i}") for i in range(CATS_PER_MONTH + 3)]
    roll = rollups_of(*events)["purchase"]
    row = roll.months[0]
    assert (len(row) - 3) // 3 == CATS_PER_MONTH
    may = month_of(base, "Europe/Istanbul")
    assert months_total(roll, may, may + 1) == (CATS_PER_MONTH + 3, (CATS_PER_MONTH + 3) * 100)
    # The ones past the cap count as uncategorised.
    assert months_total(roll, may, may + 1, lambda c: c is None) == (3, 300)
    many = [
        purchase(base + m * 31 * 86_400_000 + i, 1.0, f"k{m}-{i}")
        for m in range(8)
        for i in range(CATS_PER_MONTH)
    ]
    assert len(rollups_of(*many)["purchase"].cats) == CATS_MAX
    long = rollups_of(purchase(base, 1.0, "x" * 200))["purchase"]
    assert long.cats == []
    assert long.months[0][1] == 1


def test_custom_types_are_bounded_like_the_windows() -> None:
    config = msgspec.structs.replace(IST, custom_types_max=3)
    rollups: dict[str, TypeRollup] = {}
    for i, name in enumerate(["a1", "a2", "a3", "view_product", "a4"]):
        record(rollups, name, 1_700_000_000_000 + i, None, None, config)
    assert sorted(rollups) == ["a2", "a3", "a4", "view_product"]


def test_merge_rollups_adds_counts_and_months_min_first_max_last() -> None:
    mine = rollups_of(
        purchase("2024-03-10T10:00:00Z", 10.0, "shoes"), purchase("2024-04-10T10:00:00Z", 2.0)
    )
    theirs = rollups_of(
        purchase("2023-12-10T10:00:00Z", 1.0, "bags"),
        purchase("2024-03-11T10:00:00Z", 3.0, "shoes"),
        purchase("2024-03-12T10:00:00Z", 4.0, "bags"),
    )
    theirs["login"] = rollups_of(
        Event(event_id="l", type="login", ts=parse_ts("2024-01-01T10:00:00Z"), user_id="a")
    )["login"]
    before = msgspec.msgpack.encode(theirs)
    merge_rollups(mine, theirs, IST)
    assert msgspec.msgpack.encode(theirs) == before  # the other side is unchanged
    both = rollups_of(
        purchase("2024-03-10T10:00:00Z", 10.0, "shoes"),
        purchase("2024-04-10T10:00:00Z", 2.0),
        purchase("2023-12-10T10:00:00Z", 1.0, "bags"),
        purchase("2024-03-11T10:00:00Z", 3.0, "shoes"),
        purchase("2024-03-12T10:00:00Z", 4.0, "bags"),
    )["purchase"]
    roll = mine["purchase"]
    assert (roll.n, roll.first, roll.last, roll.rev) == (both.n, both.first, both.last, both.rev)
    dec, may = (
        month_of(parse_ts("2023-12-01T12:00:00Z"), "UTC"),
        month_of(parse_ts("2024-05-01T12:00:00Z"), "UTC"),
    )
    for test in (None, lambda c: c == "shoes", lambda c: c == "bags", lambda c: c is None):
        for m in range(dec, may):
            assert months_total(roll, m, m + 1, test) == months_total(both, m, m + 1, test)
    assert mine["login"].n == 1


def test_apply_records_only_applied_events_and_states_round_trip() -> None:
    state = UserState()
    event = purchase(1_714_557_600_000, 12.5, "shoes")
    assert apply(state, event, event.ts, IST) == "applied"
    assert apply(state, event, event.ts, IST) == "duplicate"
    stale = purchase(event.ts - 401 * 86_400_000, 1.0)
    assert apply(state, stale, event.ts, IST) == "stale"
    assert state.rollups["purchase"].n == 1
    assert loads(dumps(state)) == state
    assert loads(dumps(UserState())).rollups == {}


def test_a_state_written_before_rollups_gets_them_from_its_windows() -> None:
    state = UserState()
    for day in range(3):
        apply(state, purchase(1_714_557_600_000 + day, 2.0, "c"), 1_714_557_600_000 + day, IST)
    expected = msgspec.msgpack.encode(state.rollups)
    old = loads(dumps(msgspec.structs.replace(state, rollups={})))
    ensure_rollups(old, IST)
    assert msgspec.msgpack.encode(old.rollups) == expected
    fresh: dict[str, TypeRollup] = {}
    backfill(fresh, state.windows, IST)
    assert msgspec.msgpack.encode(fresh) == expected


def test_an_active_shoppers_two_years_add_at_most_one_kib() -> None:
    """The memory goal, on bench.history's REES46-calibrated profile (deterministic)."""
    state = build()
    assert state.rollups["purchase"].n == round(PROFILE.purchases_per_month * PROFILE.months)
    assert len(state.rollups["view_product"].months) >= 24
    added, alone = added_bytes(state)
    assert 0 < alone <= added <= BUDGET
    # Twice the purchases still fits: the bound is not a knife edge.
    assert added_bytes(build(Profile(purchases_per_month=4.0)))[0] <= 2 * BUDGET
