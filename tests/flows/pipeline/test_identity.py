"""Identity across shards in the live pipeline (SPEC section 7): the same actions as replay.

The anonymous id and its user are chosen on different shards, so every merge
goes through the hand-over of :mod:`flows.pipeline.identity`: a link request
to the anonymous id's shard, a hand-off record, a hold on the user's shard.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from engine.journeys import Engine
from engine.replay import ReplayStats, replay
from engine.rules.loader import load_rules
from flows.jobs.inspect import state_view
from flows.pipeline.identity import read_links
from flows.retry import RedisClient
from flows.stores.keys import shard_of
from flows.stores.states import ShardStore, read_stats
from tests.flows.live import read_topic
from tests.flows.pipeline.support import NOW, Pipeline, doc, message, quiet

pytestmark = pytest.mark.integration

RULES = """\
version: 1
consent: {email: opt_out, push: opt_out}
journeys:
  - id: cart
    trigger: add_to_cart
    key: product_id
    exit: [purchase]
    steps:
      - wait: 1m
      - send: email
  - id: welcome
    trigger: login
    steps:
      - send: push
"""
SHARDS = 4
START = NOW - 10 * 60_000


def apart(prefix_a: str, prefix_u: str) -> tuple[str, str]:
    """An anonymous id and a user id on different shards."""
    for n in range(100):
        anon, user = f"{prefix_a}{n}", f"{prefix_u}{n}"
        if shard_of(anon, SHARDS) != shard_of(user, SHARDS):
            return anon, user
    raise AssertionError("no pair on different shards")


def replayed(docs: list[dict[str, Any]], stats: ReplayStats | None = None) -> list[str]:
    engine = Engine(load_rules(RULES, "rules.yaml"))
    return sorted(a.action_id for a in replay(engine, [orjson.dumps(d) for d in docs],
                                               until=NOW, stats=stats))  # fmt: skip


@pytest.fixture
def pipeline(store_client: RedisClient, kafka_bootstrap: str, unique: str) -> Pipeline:
    return Pipeline.create(store_client, kafka_bootstrap, unique, RULES, shards=SHARDS)


def settled(pipeline: Pipeline, merges: int) -> bool:
    """``merges`` merges done, nobody waiting, no timer pending up to now."""
    stats = read_stats(pipeline.client, pipeline.keys)
    if stats.get("identity.merged", 0) < merges:
        return False
    return quiet(pipeline)


def run(pipeline: Pipeline, docs: list[dict[str, Any]], merges: int) -> list[str]:
    pipeline.run_holding([message(i, d) for i, d in enumerate(docs)],
                         lambda: settled(pipeline, merges))  # fmt: skip
    emitted = [a["action_id"] for a in read_topic(pipeline.bootstrap, pipeline.actions_topic)]
    assert len(emitted) == len(set(emitted))
    return sorted(emitted)


def test_a_cart_left_anonymously_and_bought_after_login_on_another_shard_sends_no_reminder(
    pipeline: Pipeline,
) -> None:
    anon, user = apart("anon", "user")
    docs = [
        doc(1, "add_to_cart", START, anon=anon, product_id="p1", price=30.0),
        doc(2, "login", START + 10_000, user=user, anon=anon),
        doc(3, "purchase", START + 10_001, user=user, order_id="o1"),  # 1 ms after the login
    ]
    emitted = run(pipeline, docs, merges=1)
    assert emitted == replayed(docs)
    assert not [a for a in pipeline.actions() if a.channel == "email"]  # the journey exited
    state = ShardStore(pipeline.client, pipeline.keys.of(user), 0).load(user)
    assert state is not None
    assert state.merged == [anon]
    assert state.holding is None
    assert "p1" not in state.cart  # the purchase emptied the merged cart
    assert ShardStore(pipeline.client, pipeline.keys.of(anon), 0).load(anon) is None
    assert read_links(pipeline.client, pipeline.keys, [anon]) == {anon: user}
    assert pipeline.client.get(pipeline.keys.of(anon).handoff(anon)) is None  # taken and gone
    stats = read_stats(pipeline.client, pipeline.keys)
    assert stats["identity.linked"] == 1
    assert stats["identity.merged"] == 1
    shown = state_view(pipeline.client, pipeline.keys, anon)  # `tetik state ANON`
    assert shown is not None
    assert (shown["user"], shown["merged"], shown["linked_from"]) == (user, [anon], anon)
    assert shown == {**state_view(pipeline.client, pipeline.keys, user), "linked_from": anon}
    assert state_view(pipeline.client, pipeline.keys, "nobody") is None


def test_events_after_the_login_are_merged_in_order_and_anonymous_ones_follow_the_link(
    pipeline: Pipeline,
) -> None:
    anon, user = apart("device", "shopper")
    docs = [
        doc(1, "add_to_cart", START, anon=anon, product_id="p1", price=30.0),
        doc(2, "view_product", START + 5_000, anon=anon, product_id="p1"),
        doc(3, "login", START + 10_000, user=user, anon=anon),
        doc(4, "add_to_cart", START + 12_000, anon=anon, product_id="p2", price=5.0),
        doc(5, "view_product", START + 13_000, user=user, product_id="p2"),
        doc(6, "purchase", START + 20_000, user=user, order_id="o1"),
        doc(7, "add_to_cart", START + 30_000, anon=anon, product_id="p3", price=9.0),
    ]
    emitted = run(pipeline, docs, merges=1)
    stats = ReplayStats()
    assert emitted == replayed(docs, stats)
    assert stats.merged == 1
    emails = [a for a in pipeline.actions() if a.channel == "email"]
    assert [(a.user_id, a.at) for a in emails] == [(user, START + 30_000 + 60_000)]  # p3 only
    state = ShardStore(pipeline.client, pipeline.keys.of(user), 0).load(user)
    assert state is not None
    assert sorted(state.cart) == ["p3"]
    assert state.events == 7  # every event once, on the user
    live = read_stats(pipeline.client, pipeline.keys)
    # One source batch: the resolver saw no link yet. The anonymous events after the
    # login were kept by the anonymous id's shard and travelled in the hand-off; the
    # user's login, view and purchase were held until the merge.
    assert (live["identity.kept"], live["identity.held"], live["applied"]) == (2, 3, 7)


def test_a_second_user_for_a_linked_anonymous_id_is_a_conflict_and_nothing_waits(
    pipeline: Pipeline,
) -> None:
    anon, first = apart("tablet", "alice")
    second = next(f"bob{n}" for n in range(100) if shard_of(f"bob{n}", SHARDS)
                  != shard_of(anon, SHARDS))  # fmt: skip
    docs = [
        doc(1, "add_to_cart", START, anon=anon, product_id="p1", price=30.0),
        doc(2, "login", START + 10_000, user=first, anon=anon),
        doc(3, "login", START + 20_000, user=second, anon=anon),
        doc(4, "add_to_cart", START + 25_000, anon=anon, product_id="p2", price=5.0),
    ]
    emitted = run(pipeline, docs, merges=1)
    stats = ReplayStats()
    assert emitted == replayed(docs, stats)
    assert stats.identity_conflicts == 1
    live = read_stats(pipeline.client, pipeline.keys)
    assert live["identity_conflict"] == 1
    assert read_links(pipeline.client, pipeline.keys, [anon]) == {anon: first}  # not re-linked
    second_state = ShardStore(pipeline.client, pipeline.keys.of(second), 0).load(second)
    assert second_state is not None
    assert second_state.merged == []
    assert second_state.holding is None
    assert second_state.events == 1
    first_state = ShardStore(pipeline.client, pipeline.keys.of(first), 0).load(first)
    assert first_state is not None
    assert sorted(first_state.cart) == ["p1", "p2"]


def test_a_device_event_read_before_the_login_it_follows_waits_for_it(
    pipeline: Pipeline,
) -> None:
    """A storefront keys the device's events by the device id, the login by the user: on
    another partition, behind, the login comes later than a cart the device left after
    it. The cart waits for the watermark (the login is read meanwhile), so it is the
    user's, with the user's action ids, as in replay (README "Identity")."""
    anon, user = apart("dev", "cust")
    login = doc(1, "login", START, user=user, anon=anon)
    cart = doc(2, "add_to_cart", START + 5_000, anon=anon, product_id="p1", price=30.0)
    messages = [message(0, cart, partition=1), message(0, login, partition=0)]  # cart first
    pipeline.run_holding(messages, lambda: settled(pipeline, merges=1), partitions=2)
    emitted = sorted(a["action_id"] for a in read_topic(pipeline.bootstrap, pipeline.actions_topic))
    assert emitted == replayed([login, cart])
    email = next(a for a in pipeline.actions() if a.channel == "email")
    assert email.user_id == user
    stats = read_stats(pipeline.client, pipeline.keys)
    assert stats["identity.deferred"] == 1
