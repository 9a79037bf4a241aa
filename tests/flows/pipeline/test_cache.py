"""The shard's cache of states: a fan-out's shoppers do not take its places.

A price drop reaches thousands of shoppers once each; caching their states would
push out the states of the shoppers whose own events keep coming (each then read
from Redis again). Here the cache holds two states: after a fan-out to two other
shoppers, an event of a cached shopper still needs no read.
"""

from __future__ import annotations

import pytest

from engine.catalog import apply_update
from engine.events import Event
from flows.pipeline.decode import Fanout, Stamped, decode_stamped
from flows.pipeline.shard import ShardLogic
from flows.retry import RedisClient
from tests.flows.pipeline.support import NOW, Pipeline, Spy, event, message

pytestmark = pytest.mark.integration

RULES = """\
version: 1
consent: {email: opt_out}
journeys:
  - id: on_sale
    trigger: price_drop
    key: product_id
    steps:
      - send: email
"""


def test_a_fan_out_leaves_the_cached_shoppers_cached(
    store_client: RedisClient, kafka_bootstrap: str, unique: str
) -> None:
    pipeline = Pipeline.create(store_client, kafka_bootstrap, unique, RULES, shards=1)
    spy = Spy(store_client)
    config = pipeline.config(client=spy, committer=None, cache_users=2)
    decode = decode_stamped(config.watermark)
    logic = ShardLogic(config, 0)
    views = {}
    for n, user in enumerate(["c", "d", "a", "b"]):  # a and b viewed last: they are cached
        views[user] = decode(message(n, event(n, user, "view_product", NOW - 60_000 + n,
                                              product_id="p1", price=100.0)))  # fmt: skip
    logic.on_batch([views["c"], views["d"]])
    logic.on_batch([views["a"], views["b"]])

    def update(n: int, price: float) -> Event:
        return Event(event_id=f"c{n}", type="product_update", ts=NOW - 30_000 + n,
                     product_id="p1", price=price)  # fmt: skip

    first = apply_update(None, update(1, 100.0))
    drop = update(2, 80.0)
    record = apply_update(first, drop)
    assert record is not None
    fanned = [Stamped(drop, NOW, fanout=Fanout(user, record)) for user in ("c", "d")]
    reports = logic.on_batch(fanned)[0]
    assert sorted(a.user_id for r in reports for a in r.actions) == ["c", "d"]

    spy.calls.clear()
    again = decode(message(4, event(4, "a", "view_product", NOW - 20_000, product_id="p2")))
    assert isinstance(again, Stamped)
    logic.on_batch([again])
    assert spy.calls["mget"] == 0  # a's state came from the cache
