"""The shard's write order: states and the actions they caused land in Redis together,
before Kafka has anything; a crash after that loses nothing and sends nothing twice.

The shard logic is driven directly (as Bytewax would) with a producer whose broker
never answers, so every action stays unacknowledged: the state of a process killed
right after its Redis write.
"""

from __future__ import annotations

import pytest
from confluent_kafka import Producer

from flows.pipeline.shard import ShardLogic
from flows.retry import RedisClient
from flows.stores.emissions import PRODUCER_CONFIG, Emitter, settle_outboxes, unpack
from flows.stores.keys import shard_of
from flows.stores.states import ShardStore
from tests.flows.live import read_topic
from tests.flows.pipeline.support import SIGNUP_RULES, Pipeline, commits_ran, signups

pytestmark = pytest.mark.integration


@pytest.fixture
def pipeline(store_client: RedisClient, kafka_bootstrap: str, unique: str) -> Pipeline:
    return Pipeline.create(store_client, kafka_bootstrap, unique, SIGNUP_RULES, shards=1)


def test_a_crash_after_the_redis_write_loses_no_action_and_sends_none_twice(
    pipeline: Pipeline,
) -> None:
    dead = Producer({"bootstrap.servers": "127.0.0.1:1", **PRODUCER_CONFIG, "log_level": 2})
    config = pipeline.config(emitter=Emitter(dead, pipeline.actions_topic))
    items = signups(config.watermark, 0, 5)
    assert {shard_of(i.event.key, 1) for i in items} == {0}
    ShardLogic(config, 0).on_batch(items)
    commits_ran()  # its commit ran, behind the worker
    dead.purge()  # the process dies: nothing it produced reached Kafka
    store = ShardStore(pipeline.client, pipeline.keys.shard(0), 0)
    outbox = {rid: unpack(data) for rid, data in store.outbox().items()}
    assert len(outbox) == 5  # every action, written with the states that caused it
    assert store.read([f"u{i}" for i in range(5)]).count(None) == 0
    assert store.offsets() == {"0-events": 4}
    assert read_topic(pipeline.bootstrap, pipeline.actions_topic, idle_s=0.3) == []

    assert settle_outboxes(pipeline.client, pipeline.keys, pipeline.bootstrap,
                           pipeline.actions_topic, idle_s=0.5) == 5  # fmt: skip
    # Bytewax resumes from an older snapshot: the same events come again.
    live = Producer({"bootstrap.servers": pipeline.bootstrap, **PRODUCER_CONFIG, "log_level": 2})
    again = ShardLogic(pipeline.config(emitter=Emitter(live, pipeline.actions_topic)), 0)
    (report,), _ = again.on_batch(items)
    assert report.actions == []
    assert report.counts["skipped"] == 5
    emitted = sorted(r["action_id"] for r in read_topic(pipeline.bootstrap, pipeline.actions_topic))
    assert emitted == sorted(outbox)  # each written action once, none other
