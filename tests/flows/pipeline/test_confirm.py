"""Kafka's acknowledgements leave the outbox with the shard's next write, or by a write of
their own once the oldest has waited ``confirm_ms``: a timer pass with nothing else to
write does not write them sooner."""

from __future__ import annotations

import pytest

from flows.pipeline.decode import Stamped, decode_stamped
from flows.pipeline.shard import ShardConfig, ShardLogic
from flows.retry import RedisClient
from flows.stores.states import ShardStore
from tests.flows.pipeline.support import NOW, Pipeline, event, message

pytestmark = pytest.mark.integration

RULES = """\
version: 1
consent: {email: opt_out}
journeys:
  - id: welcome
    trigger: signup
    steps:
      - send: email
"""


@pytest.fixture
def pipeline(store_client: RedisClient, kafka_bootstrap: str, unique: str) -> Pipeline:
    return Pipeline.create(store_client, kafka_bootstrap, unique, RULES, shards=1)


def signups(config: ShardConfig, first: int, count: int) -> list[Stamped]:
    decode = decode_stamped(config.watermark)
    docs = [event(i, f"u{i}", "signup", NOW - 1000 + i) for i in range(first, first + count)]
    items = [decode(message(i, d)) for i, d in zip(range(first, first + count), docs, strict=True)]
    return [i for i in items if isinstance(i, Stamped)]


def test_acknowledgements_wait_for_the_next_write_or_confirm_ms(pipeline: Pipeline) -> None:
    config = pipeline.config(confirm_ms=60_000)
    logic = ShardLogic(config, 0)
    store = ShardStore(pipeline.client, pipeline.keys.shard(0), 0)
    logic.on_batch(list(signups(config, 0, 3)))
    config.emitter.flush()  # Kafka acknowledged the three welcomes
    logic.on_notify()  # nothing due, the acknowledgements are younger than confirm_ms
    assert len(store.outbox()) == 3
    logic.on_batch(list(signups(config, 3, 1)))  # the next write takes them
    assert len(store.outbox()) == 1  # only the new welcome, not acknowledged yet
    config.emitter.flush()
    config.confirm_ms = 0  # the oldest has waited long enough: a write of their own
    logic.on_notify()
    assert store.outbox() == {}
