"""What `tetik demo` streams, without servers: the catalog's feed among the shoppers.

The demo's stream (:func:`flows.jobs.demo.stream_records`) is stamped here by
a virtual clock that advances as the demo's producer would at its rate (the
catalog's opening at once, then one record every ``1 / rate`` s), and replayed
with the demo's journeys (``examples/demo/journeys.yaml``) through
:func:`engine.replay.replay`, as the live engine would apply it. `tetik
generate --catalog-updates` is the same generator's option on the command line.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from cli.main import _parser
from engine.actions import Action
from engine.events import parse_ts
from engine.journeys import Engine
from engine.replay import ReplayStats, replay
from engine.rules.loader import load_rules_file
from flows.jobs.action_watch import Snapshot
from flows.jobs.demo import (
    CATALOG_JOURNEYS,
    REDELIVER_EVERY,
    RULES,
    Tally,
    Traffic,
    catalog_lines,
    stream_records,
)
from flows.kafka.producer import Record, identity_of

START = parse_ts("2024-05-06T12:00:00+03:00")  # midday in Istanbul: most shoppers awake
TRAFFIC = Traffic(duration=8, users=150, rate=400, seed=7)  # as tests/flows/test_demo.py


Records = list[Record]


def _produced(traffic: Traffic, tally: Tally) -> tuple[Records, Records]:
    """The opening (sent at once at ``START``) and the rest, each stamped as it leaves
    a producer sending ``traffic.rate`` records a second."""
    now = [float(START)]
    opening, rest = stream_records(traffic.config(), lambda: int(now[0]), tally)
    paced = []
    for record in rest:
        paced.append(record)
        now[0] += 1000 / traffic.rate
    return opening, paced


@pytest.fixture(scope="module")
def stream() -> tuple[Records, Records, Tally]:
    tally = Tally()
    return (*_produced(TRAFFIC, tally), tally)


def _doc(value: bytes) -> dict[str, Any] | None:
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


def test_the_stream_opens_with_the_catalog_and_keys_updates_by_product(stream: Any) -> None:
    opening, paced, tally = stream
    products = TRAFFIC.config().products
    first = {_doc(value)["product_id"] for _, value in opening}  # type: ignore[index]
    assert len(first) == products  # a first price and stock for every product
    assert all(_doc(v)["ts"] == START for _, v in opening)  # type: ignore[index]
    updates = [(key, _doc(value)) for key, value in opening + paced if b"product_update" in value]
    assert all(doc is not None and doc["type"] == "product_update" for _, doc in updates)
    assert len({doc["event_id"] for _, doc in updates}) == tally.updates > products  # type: ignore[index]
    assert any(key.startswith(b"p") for key, _ in paced)  # changes come during the stream
    for key, doc in updates:
        assert doc is not None
        assert key == doc["product_id"].encode() == identity_of(orjson.dumps(doc))
    shoppers = sum(1 for key, _ in opening + paced if not key.startswith(b"p"))
    assert shoppers >= TRAFFIC.config().events  # plus the redeliveries
    generated = sum(tally.keys.values()) + tally.updates  # each once
    assert generated + generated // REDELIVER_EVERY == len(opening) + len(paced)


def test_updates_are_stamped_with_the_shoppers_so_drops_follow_the_views(stream: Any) -> None:
    opening, paced, tally = stream
    docs = [doc for _, value in opening + paced if (doc := _doc(value)) and "ts" in doc]
    stamps = [doc["ts"] for doc in docs if isinstance(doc["ts"], int)]
    assert len(stamps) == len(docs)  # RFC 3339 strings are re-stamped as ms too
    assert stamps == sorted(stamps)  # one clock, in the generator's order
    assert stamps[-1] - START <= TRAFFIC.duration * 1000 * 1.2  # the changes fit the demo
    seen: dict[str, float] = {}  # product -> the latest price a shopper viewed
    drops_below_a_view = 0
    price: dict[str, float] = {}
    for doc in docs:
        pid = str(doc.get("product_id"))
        if doc["type"] == "view_product":
            seen[pid] = doc["price"]
        elif doc["type"] == "product_update" and "price" in doc:
            if pid in price and doc["price"] < price[pid] and doc["price"] < seen.get(pid, 0):
                drops_below_a_view += 1
                assert doc["ts"] > START  # during the demo, after the opening
            price[pid] = doc["price"]
    assert drops_below_a_view > 0
    assert tally.latest == {
        doc["product_id"]: doc["event_id"] for doc in docs if doc["type"] == "product_update"
    }


def _replayed(opening: list[Any], paced: list[Any]) -> tuple[list[Action], ReplayStats]:
    engine = Engine(load_rules_file(RULES))
    stats = ReplayStats()
    lines = [value for _, value in opening + paced]
    end = START + int(TRAFFIC.duration * 1000) * 2  # the stream and the demo's settling
    actions = replay(engine, lines, stats=stats, received=end, until=end)
    return actions, stats


def test_replaying_the_demo_stream_derives_catalog_events_and_sends_their_journeys(
    stream: Any,
) -> None:
    opening, paced, _ = stream
    actions, stats = _replayed(opening, paced)
    assert stats.derived > 0
    assert not stats.failed
    sent = Counter(a.journey for a in actions if a.status == "sent")
    assert sum(sent[name] for name in CATALOG_JOURNEYS) > 0, sent
    drops = [a for a in actions if a.journey == "price_drop_viewed" and a.status == "sent"]
    assert drops, sent
    for action in drops:  # the templates read the catalog and the derived event
        assert action.content is not None
        text = " ".join(action.content.values())
        assert "None" not in text
        assert "{{" not in text
    # the demo's other journeys still send
    assert min(sent[j] for j in ("abandoned_cart", "favorite_added", "post_purchase")) > 0


def test_every_catalog_journey_of_the_view_is_in_the_demo_rules() -> None:
    rules = load_rules_file(RULES)
    by_id = {journey.id: journey for journey in rules.journeys}
    assert set(CATALOG_JOURNEYS) <= set(by_id)
    triggers = {by_id[name].trigger.event for name in CATALOG_JOURNEYS}
    assert triggers == {"price_drop", "back_in_stock", "purchase"}


def test_the_view_counts_the_catalog_journeys_and_derived_events() -> None:
    data = Snapshot(journeys=Counter({"price_drop_viewed": 7, "abandoned_cart": 3}))
    stats = {"catalog.price_drop": 12, "catalog.back_in_stock": 1_204, "applied": 9}
    derived, journeys = catalog_lines(data, stats, 5_321)
    assert derived.split()[1:] == [
        "product", "updates", "sent", "5,321", "derived", "price_drop", "12",
        "back_in_stock", "1,204",
    ]  # fmt: skip
    assert "price_drop_viewed 7" in journeys
    assert "back_in_stock 0" in journeys
    assert "abandoned_cart" not in journeys


def _generate(tmp_path: Path, *flags: str) -> tuple[int, list[dict[str, Any]]]:
    out = tmp_path / "events.jsonl"
    argv = ["generate", "--events", "400", "--users", "50", "--out", str(out), *flags]
    args = _parser().parse_args(argv)
    code = args.func(args)
    lines = out.read_bytes().splitlines() if out.exists() else []
    return code, [orjson.loads(line) for line in lines]


def test_generate_writes_catalog_updates_only_when_asked(tmp_path: Path) -> None:
    code, plain = _generate(tmp_path)
    assert code == 0
    assert len(plain) == 400
    assert not [e for e in plain if e["type"] == "product_update"]
    code, catalog = _generate(tmp_path, "--catalog-updates")
    assert code == 0
    updates = [e for e in catalog if e["type"] == "product_update"]
    assert len(catalog) - len(updates) == 400  # updates come on top of --events
    assert len({e["product_id"] for e in updates}) == 5_000  # the opening, one per product


def test_generate_catalog_changes_per_hour(tmp_path: Path, capsys: Any) -> None:
    def changes(flag: str) -> int:
        code, events = _generate(tmp_path, "--catalog-updates", "--catalog-changes-per-hour", flag)
        assert code == 0
        return sum(e["type"] == "product_update" for e in events) - 5_000

    assert changes("0") == 0
    assert changes("3000") > changes("300") > 0
    code, _ = _generate(tmp_path / "none", "--catalog-changes-per-hour", "5")
    assert code == 2
    assert "needs --catalog-updates" in capsys.readouterr().err
    code, _ = _generate(tmp_path / "none", "--catalog-updates", "--catalog-changes-per-hour", "-1")
    assert code == 2
    assert "catalog_changes_per_hour must be a number >= 0" in capsys.readouterr().err
