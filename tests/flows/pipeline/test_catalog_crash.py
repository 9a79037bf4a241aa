"""Exactly once through a product update's fan-out, with the process killed in the middle.

The fan-out stage, the identity resolver and the shards are driven directly, as
Bytewax drives them (as in ``test_identity_crash``): a crash ends one
incarnation (its logics, watermark and producer are dropped, what it committed
to Redis stays), and the next re-reads the input from offset 0, as after
resuming from a snapshot older than Redis, the fan-out stage's included. Every
action of every incarnation is counted: each must come once, and together they
must be exactly replay's.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
import pytest

from engine.actions import Action
from engine.journeys import Engine
from engine.replay import ReplayStats, replay
from engine.rules.loader import load_rules
from flows.pipeline.catalog_fanout import ProductDeriver
from flows.pipeline.decode import Stamped, decode_stamped
from flows.pipeline.derive import Credit, FanoutConfig, FanoutLogic
from flows.pipeline.identity import Resolver, identity_of
from flows.pipeline.shard import ShardLogic, ShardReport
from flows.retry import RedisClient
from flows.stores.catalog import CatalogStore
from flows.stores.keys import shard_of
from flows.stores.states import read_stats
from tests.flows.pipeline.support import NOW, Pipeline, commits_ran, message, price_drop_log

pytestmark = pytest.mark.integration

RULES = """\
version: 1
consent: {email: opt_out}
templates:
  drop:
    email: {subject: "{{ product.name }} {{ entry.old_price }} -> {{ entry.price }}"}
journeys:
  - id: drop
    trigger: price_drop
    key: product_id
    steps:
      - send: email
        template: drop
"""
SHARDS = 4
SHOPPERS = 30
PAGE = 4
START = NOW - 30 * 60_000


@pytest.fixture
def pipeline(store_client: RedisClient, kafka_bootstrap: str, unique: str) -> Pipeline:
    return Pipeline.create(store_client, kafka_bootstrap, unique, RULES, shards=SHARDS)


def log() -> list[dict[str, Any]]:
    return price_drop_log(SHOPPERS, START, 75.0, name="Shoe")


class Incarnation:
    """One life of the engine: a fresh fan-out stage, resolver and shards over one Redis."""

    def __init__(self, pipeline: Pipeline, seen: list[Action]) -> None:
        # The previous incarnation is dead: Redis has run every commit it had sent
        # (a slice's commit runs behind its shard, flows.pipeline.shard).
        commits_ran()
        self.pipeline = pipeline
        self.config = pipeline.config(credit=Credit())  # the shards tell the fan-out
        self.resolver = Resolver(pipeline.client, pipeline.keys)
        deriver = ProductDeriver(CatalogStore(pipeline.client, pipeline.keys), SHARDS)
        config = self.config
        fanout = FanoutConfig([deriver], config.watermark, config.clock, PAGE, config.credit)
        self.fanout = FanoutLogic(fanout, None)  # no snapshot: it starts the input again
        self.logics = {s: ShardLogic(self.config, s) for s in range(SHARDS)}
        self.seen = seen

    def feed(self, docs: list[dict[str, Any]]) -> list[Stamped]:
        """Read the log from offset 0: shoppers' events to their shards, updates to the
        fan-out stage; the first page of the fan-out (the input is all read)."""
        decode = decode_stamped(self.config.watermark)
        stamped = [decode(message(i, d)) for i, d in enumerate(docs)]
        events = [s for s in stamped if isinstance(s, Stamped)]
        self.to_shards([s for s in events if s.event.type != "product_update"])
        for logic in self.logics.values():  # an epoch closes: every commit lands
            logic.snapshot()
        self.config.watermark.polled("0-events", 0, True)  # read to its end
        page, _ = self.fanout.on_batch([s for s in events if s.event.type == "product_update"])
        return list(page)

    def next_page(self) -> list[Stamped]:
        page, _ = self.fanout.on_notify()
        return list(page)

    def to_shards(self, items: Iterable[Stamped]) -> None:
        by_shard: dict[int, list[Any]] = {}
        for item in self.resolver(list(items)):
            by_shard.setdefault(shard_of(identity_of(item), SHARDS), []).append(item)
        for s, batch in sorted(by_shard.items()):
            self._collect(self.logics[s].on_batch(batch)[0])

    def finish(self) -> None:
        """Pages until the fan-out is done, each applied by its shards."""
        for _ in range(100):
            self.wake()
            page = self.next_page()
            if not page and self.fanout.notify_at() is None:
                for logic in self.logics.values():  # an epoch closes: every commit lands
                    logic.snapshot()
                return
            self.to_shards(page)
        raise AssertionError("the fan-out did not end in 100 pages")

    def wake(self) -> None:
        """Bytewax wakes the shards that ask for it: commits running behind land (and
        the events they wrote let the watermark pass)."""
        for logic in self.logics.values():
            if logic.notify_at() is not None:
                self._collect(logic.on_notify()[0])

    def _collect(self, reports: Iterable[ShardReport]) -> None:
        for report in reports:
            self.seen.extend(report.actions)


def replayed(docs: list[dict[str, Any]]) -> list[str]:
    engine = Engine(load_rules(RULES, "rules.yaml"))
    stats = ReplayStats()
    actions = replay(engine, [orjson.dumps(d) for d in docs], until=NOW, stats=stats)
    assert stats.derived == SHOPPERS
    return sorted(a.action_id for a in actions)


def check(pipeline: Pipeline, docs: list[dict[str, Any]], seen: list[Action]) -> None:
    ids = [a.action_id for a in seen]
    assert len(ids) == len(set(ids)), "an action was emitted twice"
    assert sorted(ids) == replayed(docs)
    assert {a.content["subject"] for a in seen if a.content} == {"Shoe 100.0 -> 75.0"}
    counts = read_stats(pipeline.client, pipeline.keys)
    assert counts["applied"] == SHOPPERS * 2  # each view and each price drop once


def test_killed_after_the_update_was_taken_and_before_any_page(pipeline: Pipeline) -> None:
    docs, seen = log(), []
    first = Incarnation(pipeline, seen)
    first.feed(docs)  # the catalog has the new price; its first page is lost with the process
    product = CatalogStore(pipeline.client, pipeline.keys).product("p1")
    assert product is not None
    assert product.price == 75.0
    second = Incarnation(pipeline, seen)
    second.to_shards(second.feed(docs))
    second.finish()
    check(pipeline, docs, seen)


def test_killed_in_the_middle_of_a_fan_out(pipeline: Pipeline) -> None:
    docs, seen = log(), []
    first = Incarnation(pipeline, seen)
    first.to_shards(first.feed(docs))
    first.to_shards(first.next_page())  # two pages applied and committed ...
    third = first.next_page()  # ... and a third on its way to the shards: lost
    assert third
    assert 0 < len(seen) < SHOPPERS
    second = Incarnation(pipeline, seen)
    second.to_shards(second.feed(docs))  # from the start again: the shards drop duplicates
    second.finish()
    check(pipeline, docs, seen)
    assert read_stats(pipeline.client, pipeline.keys)["duplicate"] >= 2 * PAGE
