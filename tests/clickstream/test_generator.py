"""The synthetic clickstream: deterministic, exact in count, ordered, valid by SPEC section 1.

Validity is judged by the engine's own decoder (``engine.events.decode_event``,
tested in tests/engine); the checks here are what the generator adds on top.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from clickstream.generator import CHANNELS as GENERATOR_CHANNELS
from clickstream.generator import GeneratorConfig, generate, generate_records, write_jsonl
from engine.errors import InvalidEvent
from engine.events import PRODUCT_TYPES, STANDARD_TYPES, Event, decode_event
from engine.journeys import Engine
from engine.replay import ReplayStats, replay
from engine.rules.loader import load_rules

PROFILE_KEYS = {"email", "phone", "timezone", "first_name", "birthday"}
# Which malformed kind a rejection reason points at (reason texts of decode_event).
REASON_KINDS = {
    "truncated": r"^not valid JSON",
    "no_event_id": r"`event_id`",
    "naive_ts": r"^ts ",
    "bad_type": r"`\$\.type`",
    "negative_price": r"`\$\.price`",
    "qty0": r"`\$\.quantity`",
}

# Four-way mix (view incl. category views and searches : cart add : favorite add :
# purchase) the generator is calibrated to; see clickstream/generator.py's docstring.
TARGET_MIX = {"view": 0.898, "cart": 0.053, "favorite": 0.028, "purchase": 0.016}
MIX_GROUP = {
    "view_product": "view",
    "view_category": "view",
    "search": "view",
    "add_to_cart": "cart",
    "add_favorite": "favorite",
    "purchase": "purchase",
}

DEFAULT = GeneratorConfig()


@pytest.fixture(scope="module")
def events() -> list[dict[str, Any]]:
    return list(generate(DEFAULT))


def decode(ev: dict[str, Any]) -> Event:
    try:
        return decode_event(orjson.dumps(ev))
    except InvalidEvent as exc:
        pytest.fail(f"{exc.reason}: {ev}")


def rejection(value: bytes) -> str | None:
    """decode_event's reason for rejecting a record, or None when it is valid."""
    try:
        decode_event(value)
    except InvalidEvent as exc:
        return exc.reason
    return None


def check_generator_fields(e: Event) -> None:
    """What the generator always fills in, beyond what the contract requires."""
    if e.type in PRODUCT_TYPES:
        assert e.category
        assert e.price is not None
        assert round(e.price, 2) == e.price
        assert e.type != "add_to_cart" or e.quantity in (1, 2, 3)
    elif e.type == "purchase":
        assert None not in (e.order_id, e.revenue, e.items)
        assert all(None not in (i.category, i.price, i.quantity) for i in e.items or ())
    elif e.type == "profile":
        assert set(e.attributes or ()) == PROFILE_KEYS
    elif e.type in ("consent", "engagement"):
        assert e.channel in GENERATOR_CHANNELS
        assert e.type == "consent" or (e.action_id or "").startswith("act-")
    elif e.type == "view_category":
        assert "/" in (e.category or "")
    elif e.type == "search":
        assert e.query
    elif e.type in ("signup", "login"):
        assert None not in (e.user_id, e.anon_id)
    elif e.type not in STANDARD_TYPES:
        assert e.props


def test_same_seed_gives_identical_bytes() -> None:
    cfg = GeneratorConfig(events=3000, users=300, invalid_ratio=0.1)
    first = list(generate_records(cfg))
    assert first == list(generate_records(cfg))
    other = list(
        generate_records(GeneratorConfig(events=3000, users=300, invalid_ratio=0.1, seed=7))
    )
    assert first != other


def test_exact_count(tmp_path: Path) -> None:
    cfg = GeneratorConfig(events=1234, users=50)
    assert sum(1 for _ in generate(cfg)) == 1234
    assert sum(1 for _ in generate_records(cfg)) == 1234
    assert list(generate(GeneratorConfig(events=0))) == []
    path = tmp_path / "events.jsonl"
    assert write_jsonl(cfg, path) == 1234
    lines = path.read_bytes().splitlines()
    assert lines == [value for _, value in generate_records(cfg)]


def test_ts_non_decreasing_in_both_forms(events: list[dict[str, Any]]) -> None:
    stamps = [decode(ev).ts for ev in events]
    assert stamps == sorted(stamps)
    assert stamps[0] == DEFAULT.start_ms
    strings = sum(isinstance(ev["ts"], str) for ev in events) / len(events)
    assert 0.03 < strings < 0.07
    hours = (stamps[-1] - stamps[0]) / 3_600_000
    assert 0.8 < hours < 1.4  # sessions spread over span_ms


def test_every_event_follows_spec(events: list[dict[str, Any]]) -> None:
    decoded = [decode(ev) for ev in events]
    for e in decoded:
        check_generator_fields(e)
    assert len({e.event_id for e in decoded}) == len(events)
    types = {e.type for e in decoded}
    assert STANDARD_TYPES - {"remove_favorite"} <= types  # rare but usually present
    assert types - STANDARD_TYPES  # some custom events


def test_type_mix_matches_calibration(events: list[dict[str, Any]]) -> None:
    groups = Counter(MIX_GROUP[ev["type"]] for ev in events if ev["type"] in MIX_GROUP)
    total = sum(groups.values())
    mix = {name: groups[name] / total for name in TARGET_MIX}
    for name, target in TARGET_MIX.items():
        assert abs(mix[name] - target) <= (0.025 if name == "view" else 0.01), (name, mix)
    assert total / len(events) > 0.9  # other kinds stay a small share


def test_invalid_ratio_share_and_prefix() -> None:
    cfg = GeneratorConfig(events=5000, users=500, invalid_ratio=0.2)
    records = list(generate_records(cfg))
    valid = [orjson.loads(value) for _, value in records if rejection(value) is None]
    assert 0.17 < 1 - len(valid) / len(records) < 0.23
    assert valid == list(generate(cfg))[: len(valid)]


def test_malformed_kinds_all_occur() -> None:
    cfg = GeneratorConfig(events=2000, users=200, invalid_ratio=0.5)
    found: Counter[str] = Counter()
    for _, value in generate_records(cfg):
        if (reason := rejection(value)) is not None:
            kinds = [kind for kind, pattern in REASON_KINDS.items() if re.search(pattern, reason)]
            found.update(kinds or [reason])  # an unexpected reason shows up in the failure
    assert set(found) == set(REASON_KINDS), found


def test_keys_are_identity() -> None:
    cfg = GeneratorConfig(events=3000, users=300)
    for key, value in generate_records(cfg):
        ev = orjson.loads(value)
        assert key.decode() == (ev.get("user_id") or ev["anon_id"])


def test_anon_ratio_and_signup(events: list[dict[str, Any]]) -> None:
    anon = sum("user_id" not in ev for ev in events) / len(events)
    assert 0.15 < anon < 0.4
    fewer = list(generate(GeneratorConfig(events=5000, anon_ratio=0.0)))
    assert sum("user_id" not in ev for ev in fewer) / len(fewer) < 0.05
    signed = {ev["anon_id"]: ev["user_id"] for ev in events if ev["type"] == "signup"}
    assert signed
    after = [
        ev for ev in events if ev.get("user_id") in signed.values() and ev["type"] == "profile"
    ]
    assert after  # a sign-up brings a profile


def test_purchases_mostly_come_from_the_cart(events: list[dict[str, Any]]) -> None:
    carted: set[tuple[str, str]] = set()
    from_cart = lines = 0
    for ev in events:
        key = ev.get("user_id") or ev["anon_id"]
        if ev["type"] == "add_to_cart":
            carted.add((key, ev["product_id"]))
        elif ev["type"] == "purchase":
            revenue = sum(i["price"] * i["quantity"] for i in ev["items"])
            assert ev["revenue"] == pytest.approx(revenue, abs=0.01)
            lines += len(ev["items"])
            from_cart += sum((key, i["product_id"]) in carted for i in ev["items"])
    assert lines > 0
    assert from_cart / lines > 0.7


def test_product_popularity_is_skewed(events: list[dict[str, Any]]) -> None:
    views = Counter(ev["product_id"] for ev in events if ev["type"] == "view_product")
    counts = sorted(views.values(), reverse=True)
    total = sum(counts)
    assert 0.005 < counts[0] / total < 0.05
    assert sum(counts[:50]) / total > 0.2  # 1% of the catalog draws a fifth of the views


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="users"):
        GeneratorConfig(users=0)
    with pytest.raises(ValueError, match="invalid_ratio"):
        GeneratorConfig(invalid_ratio=1.5)


# --- catalog updates (SPEC section 10), off by default ---

CATALOG = GeneratorConfig(
    events=5000, users=300, products=300, catalog_updates=True, catalog_changes_per_hour=300
)
CATALOG_RULES = """\
version: 1
consent: {email: opt_out}
templates:
  note: {email: {subject: "{{ entry.type }} {{ entry.product_id }} via {{ entry.via }}"}}
journeys:
  - id: drop
    trigger: price_drop
    steps: [{send: email, template: note}]
  - id: back
    trigger: back_in_stock
    steps: [{send: email, template: note}]
"""


@pytest.fixture(scope="module")
def catalog_events() -> list[dict[str, Any]]:
    return list(generate(CATALOG))


def test_catalog_updates_are_off_by_default(events: list[dict[str, Any]]) -> None:
    assert not DEFAULT.catalog_updates
    assert all(ev["type"] != "product_update" for ev in events)


def test_catalog_stream_opens_with_every_product_and_stays_ordered(
    catalog_events: list[dict[str, Any]],
) -> None:
    opening = catalog_events[: CATALOG.products]
    assert {ev["type"] for ev in opening} == {"product_update"}
    assert {ev["ts"] for ev in opening} == {CATALOG.start_ms}
    assert len({ev["product_id"] for ev in opening}) == CATALOG.products
    for ev in opening:
        assert ev["stock"] > 0
        assert ev["name"]
        assert ev["price"] > 0
    decoded = [decode(ev) for ev in catalog_events]
    assert [e.ts for e in decoded] == sorted(e.ts for e in decoded)
    assert len({e.event_id for e in decoded}) == len(decoded)
    shoppers = [e for e in decoded if e.type != "product_update"]
    assert len(shoppers) == CATALOG.events  # updates come on top
    assert catalog_events == list(generate(CATALOG))  # deterministic, ids included


def test_catalog_changes_drop_raise_and_restock(catalog_events: list[dict[str, Any]]) -> None:
    price: dict[str, float] = {}
    stock: dict[str, int] = {}
    moves: Counter[str] = Counter()
    for ev in catalog_events:
        if ev["type"] != "product_update":
            continue
        pid = ev["product_id"]
        if "price" in ev:
            if pid in price:
                moves["drop" if ev["price"] < price[pid] else "rise"] += 1
            price[pid] = ev["price"]
        if "stock" in ev:
            if pid in stock:
                moves["out" if ev["stock"] == 0 else "back"] += 1
                assert (stock[pid] == 0) == (ev["stock"] > 0)  # out, then back, then out...
            stock[pid] = ev["stock"]
    assert min(moves.values()) > 10, moves
    assert moves["drop"] > moves["rise"]
    hours = (catalog_events[-1]["ts"] - CATALOG.start_ms) / 3_600_000
    changes = moves["drop"] + moves["rise"] + moves["out"]
    assert 0.7 < changes / hours / CATALOG.catalog_changes_per_hour < 1.3


def test_shoppers_see_the_catalog_price_and_cart_only_what_is_in_stock(
    catalog_events: list[dict[str, Any]],
) -> None:
    price: dict[str, float] = {}
    stock: dict[str, int] = {}
    opening = {ev["product_id"]: ev["price"] for ev in catalog_events[: CATALOG.products]}
    changed = 0
    for ev in catalog_events:
        if ev["type"] == "product_update":
            price[ev["product_id"]] = ev.get("price", price.get(ev["product_id"], 0.0))
            stock[ev["product_id"]] = ev.get("stock", stock.get(ev["product_id"], 0))
        elif ev["type"] in PRODUCT_TYPES:
            assert ev["price"] == price[ev["product_id"]], ev
            changed += ev["price"] != opening[ev["product_id"]]
            assert ev["type"] != "add_to_cart" or stock[ev["product_id"]] > 0, ev
        elif ev["type"] == "purchase":
            assert all(item["price"] == price[item["product_id"]] for item in ev["items"])
    assert changed > 50  # shoppers saw the changed prices


def test_catalog_records_are_keyed_by_product_and_never_malformed() -> None:
    cfg = dataclasses.replace(CATALOG, invalid_ratio=0.2)
    records = list(generate_records(cfg))
    updates = [(k, v) for k, v in records if b'"product_update"' in v]
    assert len(records) - len(updates) == cfg.events
    assert all(rejection(v) is None for _, v in updates)
    assert all(k.decode() == orjson.loads(v)["product_id"] for k, v in updates)
    valid = [orjson.loads(v) for _, v in records if rejection(v) is None]
    assert valid == list(generate(cfg))[: len(valid)]


def test_catalog_log_replays_with_price_drops_and_restocks_derived(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    write_jsonl(CATALOG, path)
    stats = ReplayStats()
    actions = replay(
        Engine(load_rules(CATALOG_RULES, "catalog.yaml")),
        path.read_bytes().splitlines(),
        stats=stats,
    )
    assert stats.invalid == 0
    assert stats.derived > 0
    journeys = Counter(action.journey for action in actions if action.status == "sent")
    assert journeys["drop"] > 0, journeys
    assert journeys["back"] > 0, journeys
