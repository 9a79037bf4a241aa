"""Kafka's acknowledgements leave the outbox with the shard's next write, or by a write of
their own once the oldest has waited ``confirm_ms``: a timer pass with nothing else to
write does not write them sooner."""

from __future__ import annotations

import pytest

from flows.pipeline.shard import ShardLogic
from flows.retry import RedisClient
from flows.stores.states import ShardStore
from tests.flows.pipeline.support import SIGNUP_RULES, Pipeline, signups

pytestmark = pytest.mark.integration


@pytest.fixture
def pipeline(store_client: RedisClient, kafka_bootstrap: str, unique: str) -> Pipeline:
    return Pipeline.create(store_client, kafka_bootstrap, unique, SIGNUP_RULES, shards=1)


def test_acknowledgements_wait_for_the_next_write_or_confirm_ms(pipeline: Pipeline) -> None:
    config = pipeline.config(confirm_ms=60_000)
    logic = ShardLogic(config, 0)
    store = ShardStore(pipeline.client, pipeline.keys.shard(0), 0)
    logic.on_batch(list(signups(config.watermark, 0, 3)))
    logic.snapshot()  # the commit (running behind the worker) lands: its records are sent
    config.emitter.flush()  # Kafka acknowledged the three welcomes
    logic.on_notify()  # nothing due, the acknowledgements are younger than confirm_ms
    assert len(store.outbox()) == 3
    logic.on_batch(list(signups(config.watermark, 3, 1)))  # the next write takes them
    logic.snapshot()
    assert len(store.outbox()) == 1  # only the new welcome, not acknowledged yet
    config.emitter.flush()
    config.confirm_ms = 0  # the oldest has waited long enough: a write of their own
    logic.on_notify()
    logic.snapshot()
    assert store.outbox() == {}
