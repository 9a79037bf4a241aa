"""The outbox: what a crash left between the Redis write and Kafka's acknowledgement.

:func:`settle_outboxes` reads the actions topic after each shard's recorded
offsets: an action found there is dropped from the outbox, one not found is
produced; a dead letter is produced again (at least once). On tansu here, on
Apache Kafka in test_apache_kafka.
"""

from __future__ import annotations

import pytest
from confluent_kafka import Producer

from engine.actions import Action
from flows.kafka.topics import ensure_topics
from flows.retry import RedisClient
from flows.stores.emissions import Record, action_record, pack, settle_outboxes
from flows.stores.keys import Keys
from flows.stores.states import ShardStore, ShardWrite
from tests.flows.live import read_topic

pytestmark = pytest.mark.integration


def action(n: int) -> Action:
    return Action(
        action_id=f"id{n}", at=n, user_id=f"u{n}", journey="j", step="0", channel="email",
        template=None, status="sent", rules_version="v",
    )  # fmt: skip


def crashed_outbox(
    client: RedisClient, keys: Keys, topic: str, dlq: str, in_kafka: list[int], lost: list[int]
) -> None:
    """Outboxes as a crash leaves them: every record written, some already in Kafka."""
    for n in in_kafka + lost:
        store = ShardStore(client, keys.of(f"u{n}"), 0)
        store.commit(ShardWrite(outbox={f"id{n}": pack(action_record(action(n), topic))}), 0)
    letter = Record(dlq, b"k", b'{"type": "Bad"}', [("tetik.error.reason", b"bad")])
    ShardStore(client, keys.shard(0), 0).commit(ShardWrite(outbox={"dead:0:7": pack(letter)}), 0)


def settle_check(client: RedisClient, bootstrap: str, unique: str) -> None:
    keys = Keys(unique, 4)
    topic, dlq = f"{unique}.actions", f"{unique}.dlq"
    ensure_topics(bootstrap, {topic: 2, dlq: 1})
    producer = Producer({"bootstrap.servers": bootstrap})
    for n in (1, 2):  # acknowledged by Kafka, not yet confirmed in Redis
        record = action_record(action(n), topic)
        producer.produce(topic, record.value, key=record.key)
    producer.flush(10)
    crashed_outbox(client, keys, topic, dlq, in_kafka=[1, 2], lost=[3, 4, 5])
    assert settle_outboxes(client, keys, bootstrap, topic, idle_s=0.5) == 6
    emitted = sorted(r["action_id"] for r in read_topic(bootstrap, topic))
    assert emitted == ["id1", "id2", "id3", "id4", "id5"]  # each once
    assert len(read_topic(bootstrap, dlq, idle_s=0.5)) == 1  # the dead letter, produced
    assert all(ShardStore(client, shard, 0).outbox() == {} for shard in keys.all_shards())
    assert settle_outboxes(client, keys, bootstrap, topic, idle_s=0.5) == 0


def test_settling_sends_what_kafka_lacks_and_nothing_twice(
    store_client: RedisClient, kafka_bootstrap: str, unique: str
) -> None:
    settle_check(store_client, kafka_bootstrap, unique)


def test_settling_reads_only_after_the_offsets_a_shard_recorded(
    store_client: RedisClient, kafka_bootstrap: str, unique: str
) -> None:
    """A pending id whose twin sits before the shard's recorded offset is not taken for sent."""
    keys = Keys(unique, 1)
    topic = f"{unique}.actions"
    ensure_topics(kafka_bootstrap, {topic: 1})
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for n in (1, 2):
        producer.produce(topic, action_record(action(n), topic).value)
    producer.flush(10)
    store = ShardStore(store_client, keys.shard(0), 0)
    store.commit(ShardWrite(acked={0: 1}), 0)  # offsets 0 and 1 were confirmed by this shard
    store.commit(ShardWrite(outbox={"id9": pack(action_record(action(9), topic))}), 0)
    assert settle_outboxes(store_client, keys, kafka_bootstrap, topic, idle_s=0.5) == 1
    assert [r["action_id"] for r in read_topic(kafka_bootstrap, topic)] == ["id1", "id2", "id9"]
