"""Exactly once through a merge across shards, with the process killed at the precise points.

The shard logics are driven directly, as Bytewax drives them: a crash is the
end of one incarnation (its logics, resolver, watermark and producer are
dropped, what it committed to Redis stays) and the next re-reads the input
from offset 0, as after resuming from a snapshot older than Redis. Every
action of every incarnation is counted: each must come once, and together
they must be exactly replay's.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from engine.actions import Action
from engine.journeys import Engine
from engine.replay import replay
from engine.rules.loader import load_rules
from flows.pipeline import shard as shard_module
from flows.pipeline.decode import Stamped, decode_stamped
from flows.pipeline.identity import LinkRequest, Resolver, identity_of, read_links
from flows.pipeline.shard import ShardLogic, ShardReport
from flows.retry import RedisClient
from flows.stores.keys import shard_of
from flows.stores.states import ShardStore, read_stats
from tests.flows.pipeline.support import NOW, Pipeline, commits_ran, message, quiet
from tests.flows.pipeline.test_identity import RULES, SHARDS, START, apart, doc

pytestmark = pytest.mark.integration


@pytest.fixture
def pipeline(store_client: RedisClient, kafka_bootstrap: str, unique: str) -> Pipeline:
    return Pipeline.create(store_client, kafka_bootstrap, unique, RULES, shards=SHARDS)


class Incarnation:
    """One life of the engine: fresh logics over the same Redis."""

    def __init__(self, pipeline: Pipeline, seen: list[Action]) -> None:
        self.pipeline = pipeline
        self.config = pipeline.config()
        self.resolver = Resolver(pipeline.client, pipeline.keys)
        self.logics = {s: ShardLogic(self.config, s) for s in range(SHARDS)}
        self.seen = seen

    def _collect(self, reports: Iterable[ShardReport]) -> None:
        for report in reports:
            self.seen.extend(report.actions)

    def feed(self, docs: list[dict[str, Any]], order: list[int]) -> None:
        """Read the whole log again from offset 0; only the shards in ``order`` get theirs."""
        decode = decode_stamped(self.config.watermark)
        stamped = [decode(message(i, d)) for i, d in enumerate(docs)]
        routed = self.resolver([s for s in stamped if isinstance(s, Stamped)])
        by_shard: dict[int, list[Stamped | LinkRequest]] = {}
        for item in routed:
            by_shard.setdefault(shard_of(identity_of(item), SHARDS), []).append(item)
        for s in order:
            if s in by_shard:
                self._collect(self.logics[s].on_batch(list(by_shard[s]))[0])
        commits_ran()  # then killed, or not: the commits behind the worker ran

    def notify(self, shards: Iterable[int]) -> None:
        for s in shards:
            self._collect(self.logics[s].on_notify()[0])
        commits_ran()

    def drain(self) -> None:
        """The input is read to its end: timers up to now fire; until nothing waits."""
        self.config.watermark.polled("0-events", 0, True)
        for _ in range(50):
            self.notify(range(SHARDS))
            if done(self.pipeline):
                return
        raise AssertionError("still waiting or due after 50 rounds")


def keyed_records(bootstrap: str, topic: str) -> list[tuple[bytes, Any]]:
    """Every record of ``topic`` as (key, JSON value)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "tests-keyed"})
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        found: list[tuple[bytes, Any]] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not found:
            for msg in consumer.consume(10, 0.2):
                if msg.error() is None:
                    found.append((msg.key(), orjson.loads(msg.value())))
        return found
    finally:
        consumer.close()


def done(pipeline: Pipeline) -> bool:
    return quiet(pipeline)


def scenario() -> tuple[str, str, list[dict[str, Any]]]:
    anon, user = apart("phone", "carol")
    docs = [
        doc(1, "add_to_cart", START, anon=anon, product_id="p1", price=30.0),
        doc(2, "login", START + 10_000, user=user, anon=anon),
        doc(3, "add_to_cart", START + 12_000, anon=anon, product_id="p2", price=9.0),
        doc(4, "view_product", START + 13_000, user=user, product_id="p2"),
        doc(5, "add_to_cart", START + 20_000, user=user, product_id="p3", price=5.0),
    ]
    return anon, user, docs


def replayed(docs: list[dict[str, Any]]) -> list[str]:
    engine = Engine(load_rules(RULES, "rules.yaml"))
    return sorted(a.action_id for a in replay(engine, [orjson.dumps(d) for d in docs], until=NOW))


def check(pipeline: Pipeline, anon: str, user: str, docs: list[dict[str, Any]],
          seen: list[Action]) -> None:  # fmt: skip
    ids = [a.action_id for a in seen]
    assert len(ids) == len(set(ids)), "an action was emitted twice"
    assert sorted(ids) == replayed(docs)
    assert {a.channel for a in seen} == {"email", "push"}  # the cart reminders and the welcome
    state = ShardStore(pipeline.client, pipeline.keys.of(user), 0).load(user)
    assert state is not None
    assert state.merged == [anon]
    assert state.holding is None
    assert state.events == len(docs)  # each event applied once, all on the user
    assert sorted(state.cart) == ["p1", "p2", "p3"]
    assert read_links(pipeline.client, pipeline.keys, [anon]) == {anon: user}
    assert ShardStore(pipeline.client, pipeline.keys.of(anon), 0).load(anon) is None
    assert read_stats(pipeline.client, pipeline.keys)["identity.merged"] == 1


def test_killed_after_the_anonymous_shard_linked_and_before_the_user_merged(
    pipeline: Pipeline,
) -> None:
    anon, user, docs = scenario()
    s_a, s_u = shard_of(anon, SHARDS), shard_of(user, SHARDS)
    seen: list[Action] = []
    first = Incarnation(pipeline, seen)
    first.feed(docs, [s_u, s_a])  # the user holds; the anonymous id's link is pending
    first.notify([s_a])  # the watermark passed the login: link + hand-off, one commit
    assert read_links(pipeline.client, pipeline.keys, [anon]) == {anon: user}
    assert pipeline.client.get(pipeline.keys.of(anon).handoff(anon)) is not None
    assert ShardStore(pipeline.client, pipeline.keys.of(user), 0).waiting() == {user: anon}
    # kill -9: the user's shard never polled. The next life re-reads everything.
    second = Incarnation(pipeline, seen)
    second.feed(docs, list(range(SHARDS)))
    second.drain()
    check(pipeline, anon, user, docs, seen)
    assert pipeline.client.get(pipeline.keys.of(anon).handoff(anon)) is None


def test_killed_while_the_user_holds_before_the_link(pipeline: Pipeline) -> None:
    anon, user, docs = scenario()
    s_a, s_u = shard_of(anon, SHARDS), shard_of(user, SHARDS)
    seen: list[Action] = []
    Incarnation(pipeline, seen).feed(docs, [s_u, s_a])
    state = ShardStore(pipeline.client, pipeline.keys.of(user), 0).load(user)
    assert state is not None
    assert state.holding is not None  # committed: survives the kill
    assert read_links(pipeline.client, pipeline.keys, [anon]) == {anon: None}
    second = Incarnation(pipeline, seen)
    second.feed(docs, list(range(SHARDS)))  # every offset is skipped: nothing held twice
    second.drain()
    check(pipeline, anon, user, docs, seen)


def test_killed_before_the_anonymous_shard_took_the_request(pipeline: Pipeline) -> None:
    anon, user, docs = scenario()
    s_u = shard_of(user, SHARDS)
    seen: list[Action] = []
    Incarnation(pipeline, seen).feed(docs, [s_u])  # the request never reached a's shard
    second = Incarnation(pipeline, seen)
    second.feed(docs, list(range(SHARDS)))
    second.drain()
    check(pipeline, anon, user, docs, seen)


def test_killed_after_the_merge_before_the_hand_off_was_deleted(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    anon, user, docs = scenario()
    seen: list[Action] = []

    def killed(*_args: object) -> None:
        raise ConnectionError("killed before the hand-off was deleted")

    monkeypatch.setattr(shard_module, "delete_handoffs", killed)
    first = Incarnation(pipeline, seen)
    first.feed(docs, list(range(SHARDS)))
    first.drain()
    assert pipeline.client.get(pipeline.keys.of(anon).handoff(anon)) is not None  # left over
    monkeypatch.undo()
    second = Incarnation(pipeline, seen)
    second.feed(docs, list(range(SHARDS)))  # the link event again, tagged `via` now
    second.drain()
    check(pipeline, anon, user, docs, seen)  # merged once: a stray hand-off merges nothing


def test_an_anonymous_event_that_reaches_its_shard_after_the_link_is_forwarded_to_the_user(
    pipeline: Pipeline,
) -> None:
    anon, user, docs = scenario()
    seen: list[Action] = []
    life = Incarnation(pipeline, seen)
    life.feed(docs, list(range(SHARDS)))
    life.drain()
    late = doc(9, "view_product", START + 40_000, anon=anon, product_id="p9")
    raced = decode_stamped(life.config.watermark)(message(len(docs), late))
    assert isinstance(raced, Stamped)
    # The resolver looked before the link was committed: the event went to a's shard.
    life.logics[shard_of(anon, SHARDS)].on_batch([raced])
    commits_ran()  # the forward is produced once the commit holding it is in Redis
    life.config.emitter.flush()
    assert keyed_records(pipeline.bootstrap, pipeline.events_topic) == [(user.encode(), late)]
    assert ShardStore(pipeline.client, pipeline.keys.of(anon), 0).load(anon) is None
    assert read_stats(pipeline.client, pipeline.keys)["identity.forwarded"] == 1
