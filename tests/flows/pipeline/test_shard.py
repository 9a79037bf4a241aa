"""The shard pipeline in process: Bytewax's TestingSource and TestingSink, real Redis and Kafka.

Each test checks the live behaviour against ``tetik replay`` on the same log:
the same actions, once.
"""

from __future__ import annotations

import orjson
import pytest

from engine.actions import to_dict
from engine.journeys import Engine
from engine.replay import replay
from engine.rules.loader import load_rules
from flows.retry import RedisClient
from flows.stores.keys import shard_of
from flows.stores.states import ShardStore, read_stats
from tests.flows.live import read_topic
from tests.flows.pipeline.support import NOW, Pipeline, event, message

pytestmark = pytest.mark.integration

RULES = """\
version: 1
consent: {email: opt_out, push: opt_out}
journeys:
  - id: welcome
    trigger: signup
    steps:
      - send: push
  - id: cart
    trigger: add_to_cart
    exit: [purchase]
    steps:
      - wait: 1m
      - send: email
"""


@pytest.fixture
def pipeline(store_client: RedisClient, kafka_bootstrap: str, unique: str) -> Pipeline:
    return Pipeline.create(store_client, kafka_bootstrap, unique, RULES, partitions=2)


def replayed(docs: list[dict[str, object]], until: int | None = None) -> list[str]:
    engine = Engine(load_rules(RULES, "rules.yaml"))
    actions = replay(engine, [orjson.dumps(d) for d in docs], until=until)
    return sorted(a.action_id for a in actions)


def test_events_of_many_shoppers_emit_their_actions_once_through_the_outbox(
    pipeline: Pipeline,
) -> None:
    docs = [event(i, f"u{i % 10}", "signup", NOW - 60_000 + i) for i in range(30)]
    pipeline.run(message(i, d) for i, d in enumerate(docs))
    emitted = sorted(a["action_id"] for a in read_topic(pipeline.bootstrap, pipeline.actions_topic))
    assert emitted == replayed(docs)
    assert len(emitted) == 10  # one welcome each; the 20 later signups change nothing
    for shard in pipeline.keys.all_shards():  # every record acknowledged and confirmed
        assert ShardStore(pipeline.client, shard, 0).outbox() == {}
    stats = read_stats(pipeline.client, pipeline.keys)
    assert stats["applied"] == 30
    assert stats["actions.emitted"] == 10


def test_states_live_in_their_shard_and_the_worker_keeps_no_shopper_past_its_cache(
    pipeline: Pipeline,
) -> None:
    docs = [event(i, f"u{i}", "add_to_cart", NOW - 1000, product_id="p1") for i in range(40)]
    pipeline.run((message(i, d) for i, d in enumerate(docs)), cache_users=3)
    for i in range(40):
        identity = f"u{i}"
        store = ShardStore(pipeline.client, pipeline.keys.of(identity), 0)
        state = store.load(identity)
        assert state is not None
        assert state.key == identity
        assert shard_of(identity, pipeline.shards) == store.keys.shard
    due = [ShardStore(pipeline.client, s, 0).next_due() for s in pipeline.keys.all_shards()]
    assert min(d for d in due if d is not None) == NOW - 1000 + 60_000  # the 1-minute wait


def test_a_run_read_again_from_older_offsets_applies_and_emits_nothing_twice(
    pipeline: Pipeline,
) -> None:
    docs = [event(i, f"u{i % 7}", "signup", NOW - 60_000 + i) for i in range(21)]
    messages = [message(i, d) for i, d in enumerate(docs)]
    pipeline.run(messages[:15])
    pipeline.run(messages)  # as after a crash: Bytewax resumes from an older snapshot
    emitted = [a["action_id"] for a in read_topic(pipeline.bootstrap, pipeline.actions_topic)]
    assert sorted(emitted) == replayed(docs)
    assert len(emitted) == len(set(emitted))
    stats = read_stats(pipeline.client, pipeline.keys)
    assert stats["skipped"] == 15
    assert stats["applied"] == 21


def test_due_timers_fire_from_the_redis_index_at_their_due_time(pipeline: Pipeline) -> None:
    start = NOW - 10 * 60_000
    docs = [
        event(1, "a", "add_to_cart", start, product_id="p1"),
        event(2, "b", "add_to_cart", start + 1, product_id="p2"),
        event(3, "b", "purchase", start + 30_000, order_id="o1", revenue=10.0),
    ]

    def fired() -> bool:
        return any(a.channel == "email" for a in pipeline.actions())

    pipeline.run_holding([message(i, d) for i, d in enumerate(docs)], fired)
    emails = [a for a in pipeline.actions() if a.channel == "email"]
    assert [(a.user_id, a.at) for a in emails] == [("a", start + 60_000)]
    assert sorted(a.action_id for a in pipeline.actions()) == replayed(docs, until=NOW)
    state = ShardStore(pipeline.client, pipeline.keys.of("a"), 0).load("a")
    assert state is not None
    assert Engine(load_rules(RULES, "r")).next_due(state) is None
    assert pipeline.client.zscore(pipeline.keys.of("a").timers, "a") is None  # nothing pending
    assert state.entered  # the journey is remembered for re-entry


def test_every_action_is_the_replay_action(pipeline: Pipeline) -> None:
    docs = [event(i, f"u{i % 5}", "signup", NOW - 5000 + i) for i in range(5)]
    pipeline.run(message(i, d) for i, d in enumerate(docs))
    emitted = read_topic(pipeline.bootstrap, pipeline.actions_topic)
    engine = Engine(load_rules(RULES, "rules.yaml"))
    expected = [to_dict(a) for a in replay(engine, [orjson.dumps(d) for d in docs])]

    def strip(a: dict[str, object]) -> dict[str, object]:
        return {k: v for k, v in a.items() if k != "ingested_at"}

    assert sorted(map(orjson.dumps, map(strip, emitted))) == sorted(
        map(orjson.dumps, map(strip, expected))
    )
