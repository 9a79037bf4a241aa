"""The synthetic clickstream: deterministic, exact in count, ordered, valid by SPEC section 1.

The SPEC checks are written out here on purpose (no engine import), so the
generator is checked against the contract itself.
"""

from __future__ import annotations

import re
import zoneinfo
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench.generator import GeneratorConfig, generate, generate_records, write_jsonl

STANDARD_TYPES = {
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
    "consent",
    "profile",
    "engagement",
}
PRODUCT_TYPES = {
    "view_product",
    "add_to_cart",
    "remove_from_cart",
    "add_favorite",
    "remove_favorite",
}
CHANNELS = {"email", "sms", "push", "whatsapp", "onsite"}
KINDS = {"delivered", "opened", "clicked", "bounced", "unsubscribed"}
PROFILE_KEYS = {"email", "phone", "timezone", "first_name", "birthday"}
TYPE_RE = re.compile(r"^[a-z][a-z0-9_.:-]{0,63}$")
RFC3339_RE = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
)
BIRTHDAY_RE = re.compile(r"^(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])$")
ZONES = zoneinfo.available_timezones()

# Four-way mix (view incl. category views and searches : cart add : favorite add :
# purchase) the generator is calibrated to; see bench/generator.py's docstring.
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


def ts_ms(ts: int | str) -> int:
    if isinstance(ts, int):
        return ts
    return int(datetime.fromisoformat(ts).timestamp() * 1000)


def is_number(value: Any, minimum: float = 0.0) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= minimum


def depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    return 0


def common_errors(ev: dict[str, Any]) -> list[str]:
    errors = []
    event_id = ev.get("event_id")
    if not (isinstance(event_id, str) and 1 <= len(event_id) <= 128):
        errors.append("event_id")
    kind = ev.get("type")
    if not (isinstance(kind, str) and (kind in STANDARD_TYPES or TYPE_RE.match(kind))):
        errors.append("type")
    ts = ev.get("ts")
    if isinstance(ts, bool) or not (
        (isinstance(ts, int) and ts >= 0) or (isinstance(ts, str) and RFC3339_RE.match(ts))
    ):
        errors.append("ts")
    if not any(isinstance(ev.get(k), str) and ev[k] for k in ("user_id", "anon_id")):
        errors.append("identity")
    if "price" in ev and not is_number(ev["price"]):
        errors.append("price")
    if "quantity" in ev and not (is_number(ev["quantity"], 1) and isinstance(ev["quantity"], int)):
        errors.append("quantity")
    if "props" in ev and not (isinstance(ev["props"], dict) and depth(ev["props"]) <= 5):
        errors.append("props")
    return errors


def purchase_errors(ev: dict[str, Any]) -> list[str]:
    items = ev.get("items")
    ok = (
        isinstance(ev.get("order_id"), str)
        and is_number(ev.get("revenue"))
        and isinstance(items, list)
        and len(items) > 0
        and all(
            isinstance(i.get("product_id"), str)
            and isinstance(i.get("category"), str)
            and is_number(i.get("price"))
            and isinstance(i.get("quantity"), int)
            and i["quantity"] >= 1
            for i in items
        )
    )
    return [] if ok else ["purchase fields"]


def profile_errors(ev: dict[str, Any]) -> list[str]:
    attrs = ev.get("attributes")
    if not isinstance(attrs, dict) or set(attrs) != PROFILE_KEYS:
        return ["attributes"]
    if not all(isinstance(v, str | int | float | bool) for v in attrs.values()):
        return ["attributes not scalars"]
    if attrs["timezone"] not in ZONES or not BIRTHDAY_RE.match(attrs["birthday"]):
        return ["timezone or birthday"]
    return []


def type_errors(ev: dict[str, Any]) -> list[str]:
    kind = ev["type"]
    if kind in PRODUCT_TYPES:
        ok = all(isinstance(ev.get(k), str) for k in ("product_id", "category"))
        ok = ok and is_number(ev.get("price")) and round(ev["price"], 2) == ev["price"]
        if kind == "add_to_cart":
            ok = ok and ev.get("quantity") in (1, 2, 3)
        return [] if ok else [f"{kind} fields"]
    checks = {
        "view_category": lambda: isinstance(ev.get("category"), str) and "/" in ev["category"],
        "search": lambda: isinstance(ev.get("query"), str) and ev["query"] != "",
        "consent": lambda: ev.get("channel") in CHANNELS and isinstance(ev.get("granted"), bool),
        "engagement": lambda: (
            str(ev.get("action_id", "")).startswith("act-")
            and ev.get("channel") in CHANNELS
            and ev.get("kind") in KINDS
        ),
        "signup": lambda: "user_id" in ev and "anon_id" in ev,
        "login": lambda: "user_id" in ev and "anon_id" in ev,
    }
    if kind == "purchase":
        return purchase_errors(ev)
    if kind == "profile":
        return profile_errors(ev)
    if kind in checks:
        return [] if checks[kind]() else [f"{kind} fields"]
    return [] if isinstance(ev.get("props"), dict) else ["custom event props"]


def spec_errors(ev: dict[str, Any]) -> list[str]:
    errors = common_errors(ev)
    return errors or type_errors(ev)


def record_is_invalid(value: bytes) -> bool:
    try:
        ev = orjson.loads(value)
    except orjson.JSONDecodeError:
        return True
    return not isinstance(ev, dict) or bool(common_errors(ev))


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
    stamps = [ts_ms(ev["ts"]) for ev in events]
    assert stamps == sorted(stamps)
    assert stamps[0] == DEFAULT.start_ms
    strings = sum(isinstance(ev["ts"], str) for ev in events) / len(events)
    assert 0.03 < strings < 0.07
    hours = (stamps[-1] - stamps[0]) / 3_600_000
    assert 0.8 < hours < 1.4  # sessions spread over span_ms


def test_every_event_follows_spec(events: list[dict[str, Any]]) -> None:
    bad = [(ev, errs) for ev in events if (errs := spec_errors(ev))]
    assert bad == []
    assert len({ev["event_id"] for ev in events}) == len(events)
    assert all(len(orjson.dumps(ev)) <= 64 * 1024 for ev in events)
    types = {ev["type"] for ev in events}
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
    invalid = [value for _, value in records if record_is_invalid(value)]
    assert 0.17 < len(invalid) / len(records) < 0.23
    valid = [orjson.loads(value) for _, value in records if not record_is_invalid(value)]
    assert valid == list(generate(cfg))[: len(valid)]
    assert all(not spec_errors(ev) for ev in valid)


def test_malformed_kinds_all_occur() -> None:
    cfg = GeneratorConfig(events=2000, users=200, invalid_ratio=0.5)
    found: Counter[str] = Counter()
    for _, value in generate_records(cfg):
        if not record_is_invalid(value):
            continue
        try:
            ev = orjson.loads(value)
        except orjson.JSONDecodeError:
            found["truncated"] += 1
            continue
        found.update(common_errors(ev))
        found["qty0"] += ev.get("quantity") == 0
        found["negative price"] += is_number(ev.get("price"), -1e9) and ev["price"] < 0
    for reason in ("truncated", "event_id", "ts", "type", "qty0", "negative price"):
        assert found[reason] > 0, found


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
