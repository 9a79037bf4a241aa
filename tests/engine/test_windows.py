"""Per-type windows: ordering, count and age bounds, range queries, settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.errors import ConfigError
from engine.windows import (
    DEFAULT_CONFIG,
    Stored,
    WindowConfig,
    WindowLimits,
    config_from_mapping,
    event_hash,
    evict_older,
    insert,
    since_index,
)

DAY = 86_400_000
BIG = WindowLimits(max_count=100)


def rec(ts: int, tag: int) -> Stored:
    """A record whose `h` doubles as an arrival tag."""
    return Stored(ts=ts, h=tag)


def fill(*ts: int, limits: WindowLimits = BIG) -> list[Stored]:
    window: list[Stored] = []
    for tag, moment in enumerate(ts):
        assert insert(window, rec(moment, tag), limits) == []
    return window


def stamps(window: list[Stored]) -> list[int]:
    return [r.ts for r in window]


def tags(window: list[Stored]) -> list[int]:
    return [r.h for r in window]


def test_insert_orders_out_of_order_arrivals() -> None:
    window = fill(50, 10, 40, 20, 30, 60, 5)
    assert stamps(window) == [5, 10, 20, 30, 40, 50, 60]


def test_insert_ties_keep_arrival_order() -> None:
    # tags: 0 1 2 3 4; ties at ts 20 must stay 0, 2, 4 whether appended or bisected in.
    window = fill(20, 30, 20, 10, 20)
    assert stamps(window) == [10, 20, 20, 20, 30]
    assert tags(window) == [3, 0, 2, 4, 1]


def test_insert_over_max_count_keeps_newest_and_returns_dropped() -> None:
    limits = WindowLimits(max_count=3)
    window: list[Stored] = []
    dropped_all: list[Stored] = []
    for tag, ts in enumerate([10, 20, 30, 40, 25]):
        dropped_all += insert(window, rec(ts, tag), limits)
    assert stamps(window) == [25, 30, 40]
    assert stamps(dropped_all) == [10, 20]
    assert len(window) == 3


def test_insert_older_than_a_full_window_drops_the_record_itself() -> None:
    limits = WindowLimits(max_count=2)
    window = fill(10, 20, limits=limits)
    late = rec(5, 99)
    assert insert(window, late, limits) == [late]
    assert stamps(window) == [10, 20]


@pytest.mark.parametrize(
    ("cutoff", "kept", "dropped"),
    [
        (5, [10, 20, 20, 30], []),
        (10, [10, 20, 20, 30], []),
        (11, [20, 20, 30], [10]),
        (20, [20, 20, 30], [10]),
        (21, [30], [10, 20, 20]),
        (30, [30], [10, 20, 20]),
        (31, [], [10, 20, 20, 30]),
    ],
)
def test_evict_older_keeps_records_at_the_cutoff(
    cutoff: int, kept: list[int], dropped: list[int]
) -> None:
    window = fill(10, 20, 20, 30)
    assert stamps(evict_older(window, cutoff)) == dropped
    assert stamps(window) == kept


def test_evict_older_on_empty_window() -> None:
    window: list[Stored] = []
    assert evict_older(window, 100) == []
    assert window == []


@pytest.mark.parametrize(
    ("cutoff", "index"), [(0, 0), (10, 0), (11, 1), (20, 1), (21, 3), (30, 3), (31, 4)]
)
def test_since_index_is_first_record_at_or_after_cutoff(cutoff: int, index: int) -> None:
    window = fill(10, 20, 20, 30)
    assert since_index(window, cutoff) == index
    assert all(r.ts >= cutoff for r in window[index:])
    assert all(r.ts < cutoff for r in window[:index])


def test_event_hash_is_stable_distinct_and_64_bit() -> None:
    ids = [f"evt-{i}" for i in range(2000)] + ["", "ş", "a" * 128]
    hashes = [event_hash(i) for i in ids]
    assert hashes == [event_hash(i) for i in ids]
    assert len(set(hashes)) == len(ids)
    assert all(isinstance(h, int) and 0 <= h < 2**64 for h in hashes)


def test_event_hash_is_the_same_in_another_process() -> None:
    code = "from engine.windows import event_hash; print(event_hash('evt-42'))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert int(out.stdout) == event_hash("evt-42")


def test_config_defaults_follow_the_spec() -> None:
    for config in (DEFAULT_CONFIG, config_from_mapping({})):
        assert config.limits("purchase") == WindowLimits(max_count=1000, max_age_ms=400 * DAY)
        for kind in ("view_product", "add_to_cart", "consent", "spin_wheel"):
            assert config.limits(kind) == WindowLimits(max_count=1000, max_age_ms=30 * DAY)
    assert config_from_mapping({}) == DEFAULT_CONFIG


def test_config_overrides_and_parses_durations() -> None:
    config = config_from_mapping(
        {
            "default": {"max_age": "7d"},
            "types": {
                "view_product": {"max_count": 50},
                "purchase": {"max_age": "2w"},
                "search": {"max_count": 5, "max_age": "12h"},
            },
            "cart": {"max_count": 10, "max_age": "1d"},
            "favorites": {"max_age": "90d"},
            "profile_max_keys": 20,
        }
    )
    assert config.limits("login") == WindowLimits(max_count=1000, max_age_ms=7 * DAY)
    assert config.limits("view_product") == WindowLimits(max_count=50, max_age_ms=7 * DAY)
    assert config.limits("purchase") == WindowLimits(max_count=1000, max_age_ms=14 * DAY)
    assert config.limits("search") == WindowLimits(max_count=5, max_age_ms=12 * 3_600_000)
    assert (config.cart_max_lines, config.cart_max_age_ms) == (10, DAY)
    assert (config.favorites_max, config.favorites_max_age_ms) == (500, 90 * DAY)
    assert config.profile_max_keys == 20


def test_config_keeps_purchase_default_when_only_default_changes() -> None:
    config = config_from_mapping({"default": {"max_count": 10}})
    assert config.limits("view_product").max_count == 10
    assert config.limits("purchase").max_age_ms == 400 * DAY
    assert isinstance(config, WindowConfig)


def bad(raw: dict[str, Any], *needles: str) -> Any:
    return pytest.param(raw, needles, id=repr(raw).replace(" ", ""))


@pytest.mark.parametrize(
    ("raw", "needles"),
    [
        bad({"bogus": 1}, "bogus"),
        bad({"default": {"max_cnt": 5}}, "windows.default", "max_cnt"),
        bad({"types": {"search": {"ttl": "1d"}}}, "windows.types.search", "ttl"),
        bad({"default": {"max_count": 0}}, "windows.default.max_count", "0"),
        bad({"types": {"search": {"max_count": -1}}}, "windows.types.search.max_count"),
        bad({"cart": {"max_count": "10"}}, "windows.cart.max_count", "'10'"),
        bad({"favorites": {"max_count": 2.5}}, "windows.favorites.max_count", "2.5"),
        bad({"default": {"max_age": "1.5h"}}, "windows.default.max_age", "1.5h"),
        bad({"types": {"purchase": {"max_age": 30}}}, "windows.types.purchase.max_age", "30"),
        bad({"cart": {"max_age": "5y"}}, "windows.cart.max_age", "5y"),
        bad({"default": 5}, "windows.default"),
        bad({"types": {"search": "1d"}}, "windows.types.search"),
        bad(
            {"default": {"max_count": True}},
            "windows.default.max_count",
        ),
        bad(
            {"types": "purchase"},
            "types",
        ),
        bad(
            {"profile_max_keys": "many"},
            "profile_max_keys",
        ),
        bad(
            {"profile_max_keys": -3},
            "profile_max_keys",
        ),
    ],
)
def test_config_rejects_bad_settings_naming_the_key(
    raw: dict[str, Any], needles: tuple[str, ...]
) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_mapping(raw)
    for needle in needles:
        assert needle in str(info.value), f"{needle!r} not in {info.value}"
