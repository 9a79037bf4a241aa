"""A shard applies a fan-out's derived items in slices, after its shoppers' own events.

The fan-out stage and a shard are driven directly, as Bytewax drives them, with
the slice made small: one activation applies every own event it got and at
most ``DERIVED_SLICE`` derived items, asks to be woken at once while some are
queued, and its snapshot carries the queue, so a shard resumed from it applies
the rest (exactly what one shard applying everything at once would).
"""

from __future__ import annotations

import pickle
from collections import Counter
from typing import Any

import pytest

from flows.pipeline import shard as shard_module
from flows.pipeline.catalog_fanout import ProductDeriver
from flows.pipeline.decode import Stamped, decode_stamped
from flows.pipeline.derive import Credit, FanoutConfig, FanoutLogic
from flows.pipeline.identity import identity_of
from flows.pipeline.shard import ShardLogic, ShardReport
from flows.retry import RedisClient
from flows.stores.catalog import CatalogStore
from flows.stores.keys import shard_of
from tests.flows.pipeline.support import NOW, Pipeline, message, price_drop_log

pytestmark = pytest.mark.integration

RULES = """\
version: 1
consent: {email: opt_out, onsite: opt_out}
journeys:
  - id: drop
    trigger: price_drop
    key: product_id
    steps:
      - send: email
  - id: viewed
    trigger: view_product
    key: product_id
    steps:
      - send: onsite
"""
SHARDS = 2
SHOPPERS = 24
SLICE = 3
START = NOW - 30 * 60_000


@pytest.fixture
def pipeline(store_client: RedisClient, kafka_bootstrap: str, unique: str) -> Pipeline:
    return Pipeline.create(store_client, kafka_bootstrap, unique, RULES, shards=SHARDS)


def docs() -> list[dict[str, Any]]:
    return price_drop_log(SHOPPERS, START, 80.0)


def counts(reports: Any) -> Counter[str]:
    total: Counter[str] = Counter()
    for report in reports:
        assert isinstance(report, ShardReport)
        total.update(report.counts)
    return total


def test_derived_items_are_sliced_and_survive_a_snapshot(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shard_module, "DERIVED_SLICE", SLICE)
    credit = Credit()
    config = pipeline.config(credit=credit)
    decode = decode_stamped(config.watermark)
    stamped = [decode(message(i, d)) for i, d in enumerate(docs())]
    events = [s for s in stamped if isinstance(s, Stamped)]
    views = [s for s in events if s.event.type == "view_product"]
    updates = [s for s in events if s.event.type == "product_update"]
    logics = {s: ShardLogic(config, s) for s in range(SHARDS)}
    for s in range(SHARDS):  # the views: every shopper interested at 100.0
        mine = [v for v in views if shard_of(identity_of(v), SHARDS) == s]
        assert counts(logics[s].on_batch(mine)[0])["applied"] == len(mine)
        logics[s].snapshot()  # an epoch closes: the commit running behind lands
    config.watermark.polled("0-events", 0, True)
    deriver = ProductDeriver(CatalogStore(pipeline.client, pipeline.keys), SHARDS)
    fanout = FanoutLogic(FanoutConfig([deriver], config.watermark, config.clock, 100), None)
    page = list(fanout.on_batch(updates)[0])
    assert len(page) == SHOPPERS
    shard = 0
    derived = [i for i in page if shard_of(identity_of(i), SHARDS) == shard]
    assert len(derived) > 2 * SLICE
    own = decode(message(len(docs()), {
        "event_id": "late", "type": "view_product", "ts": START + 11 * 60_000,
        "user_id": identity_of(derived[-1]), "product_id": "p2", "price": 5.0,
    }))  # fmt: skip
    assert isinstance(own, Stamped)

    first = ShardLogic(config, shard)
    reports = list(first.on_batch([*derived, own])[0])
    done = counts(reports)
    assert done["applied"] == 1 + SLICE  # the shopper's own event, then one slice
    assert done["catalog.price_drop"] == SLICE
    assert credit.applied == SLICE
    assert next(a.channel for r in reports for a in r.actions) == "onsite"  # own event first
    wake = first.notify_at()
    assert wake is not None
    assert wake.timestamp() * 1000 <= config.clock() + 1

    reports = list(first.on_notify()[0])
    assert counts(reports)["catalog.price_drop"] == SLICE
    snapshot = first.snapshot()
    assert isinstance(snapshot, tuple)
    assert snapshot[0] == shard
    assert len(snapshot[1]) == len(derived) - 2 * SLICE

    # A crash after the snapshot: the next incarnation resumes from it (as Bytewax
    # does, pickled) and applies the rest, a slice per wake-up.
    again = ShardLogic(config, pickle.loads(pickle.dumps(snapshot)))
    rest: Counter[str] = Counter()
    for _ in range(len(derived)):
        if again.snapshot() == shard:
            break
        rest.update(counts(again.on_notify()[0]))
    assert again.snapshot() == shard  # nothing left queued
    assert rest["catalog.price_drop"] == len(derived) - 2 * SLICE
    assert credit.applied == len(derived)
