"""Bounded runs (flows.pipeline.bounded): the input's end settles every identity link.

The watermark waits for a partition that never reports, so it never passes a
link's time (nor any timer): only the end of the input can decide the links,
and the run must end with the states and actions replay makes of the same log.
Each log spans less than the cart journey's wait, so replay fires no timer
either: every action is caused by an event.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from engine.journeys import Engine
from engine.replay import ReplayStats, replay
from engine.rules.loader import load_rules
from engine.state import to_view
from flows.pipeline.bounded import BoundedRunUnsettled, check_settled, unsettled
from flows.pipeline.identity import read_links
from flows.pipeline.watermark import Watermark
from flows.retry import RedisClient
from flows.stores.keys import shard_of
from flows.stores.states import ShardStore, read_stats
from tests.flows.live import read_topic
from tests.flows.pipeline.support import NOW, Pipeline, message
from tests.flows.pipeline.test_identity import RULES, SHARDS, apart, doc

pytestmark = pytest.mark.integration

AHEAD = NOW - 10 * 60_000  # the logs' start


def never_passing() -> Watermark:
    """A watermark held at 0 by a partition that is never heard from."""
    return Watermark(["0-events", "1-silent"])


@pytest.fixture
def pipeline(store_client: RedisClient, kafka_bootstrap: str, unique: str) -> Pipeline:
    return Pipeline.create(store_client, kafka_bootstrap, unique, RULES, shards=SHARDS)


def replayed(docs: list[dict[str, Any]]) -> tuple[list[str], dict[str, Any], ReplayStats]:
    """Replay's action ids, states (as views) and stats for ``docs``."""
    engine = Engine(load_rules(RULES, "rules.yaml"))
    states: dict[str, Any] = {}
    stats = ReplayStats()
    actions = replay(engine, [orjson.dumps(d) for d in docs], stats=stats, states=states)
    views = {key: to_view(state) for key, state in states.items()}
    return sorted(a.action_id for a in actions), views, stats


def bounded(pipeline: Pipeline, docs: list[dict[str, Any]], complete: bool = True) -> list[str]:
    """A bounded run over ``docs`` whose end is (or is not) the input's end."""
    pipeline.run(
        [message(i, d) for i, d in enumerate(docs)],
        input_complete=lambda: complete,
        watermark=never_passing(),
    )
    emitted = [a["action_id"] for a in read_topic(pipeline.bootstrap, pipeline.actions_topic)]
    assert len(emitted) == len(set(emitted))
    return sorted(emitted)


def view(pipeline: Pipeline, identity: str) -> Any:
    state = ShardStore(pipeline.client, pipeline.keys.of(identity), 0).load(identity)
    return None if state is None else to_view(state)


def test_a_login_at_the_end_of_a_bounded_input_is_merged_as_replay_merges_it(
    pipeline: Pipeline,
) -> None:
    anon, user = apart("device", "shopper")
    docs = [
        doc(1, "add_to_cart", AHEAD, anon=anon, product_id="p1", price=30.0),
        doc(2, "view_product", AHEAD + 5_000, anon=anon, product_id="p1"),
        doc(3, "login", AHEAD + 10_000, user=user, anon=anon),
        doc(4, "add_to_cart", AHEAD + 12_000, anon=anon, product_id="p2", price=5.0),
        doc(5, "purchase", AHEAD + 12_500, user=user, order_id="o1"),
        doc(6, "view_product", AHEAD + 13_000, user=user, product_id="p2"),
    ]
    emitted = bounded(pipeline, docs)
    actions, states, stats = replayed(docs)
    assert stats.merged == 1
    assert emitted == actions
    assert [a.channel for a in pipeline.actions()] == ["push"]  # welcome; the cart was bought
    assert view(pipeline, user) == states[user]
    assert view(pipeline, anon) is None
    assert read_links(pipeline.client, pipeline.keys, [anon]) == {anon: user}
    assert unsettled(pipeline.client, pipeline.keys) == {}
    live = read_stats(pipeline.client, pipeline.keys)
    assert (live["identity.linked"], live["identity.merged"], live["applied"]) == (1, 1, 6)
    check_settled(pipeline.client, pipeline.keys, "tetik ingest --no-tail")  # nothing raised


def test_a_user_with_two_devices_linked_at_the_end_merges_both_in_turn(
    pipeline: Pipeline,
) -> None:
    first, user = apart("phone", "carol")
    second = next(f"laptop{n}" for n in range(100)
                  if shard_of(f"laptop{n}", SHARDS) not in {shard_of(user, SHARDS),
                                                             shard_of(first, SHARDS)})  # fmt: skip
    docs = [
        doc(1, "add_to_cart", AHEAD, anon=first, product_id="p1", price=30.0),
        doc(2, "add_favorite", AHEAD + 1_000, anon=second, product_id="p9"),
        doc(3, "login", AHEAD + 10_000, user=user, anon=first),
        doc(4, "view_product", AHEAD + 11_000, user=user, product_id="p1"),
        doc(5, "login", AHEAD + 20_000, user=user, anon=second),  # held while first merges
        doc(6, "add_to_cart", AHEAD + 21_000, anon=second, product_id="p3", price=9.0),
        doc(7, "purchase", AHEAD + 22_000, user=user, order_id="o1"),
    ]
    emitted = bounded(pipeline, docs)
    actions, states, stats = replayed(docs)
    assert stats.merged == 2
    assert emitted == actions
    assert view(pipeline, user) == states[user]
    assert sorted(states[user]["merged"]) == sorted([first, second])
    assert unsettled(pipeline.client, pipeline.keys) == {}
    assert read_stats(pipeline.client, pipeline.keys)["identity.merged"] == 2


def test_a_stopped_bounded_run_decides_nothing_early_and_the_job_says_who_waits(
    pipeline: Pipeline,
) -> None:
    anon, user = apart("kiosk", "dave")
    docs = [
        doc(1, "add_to_cart", AHEAD, anon=anon, product_id="p1", price=30.0),
        doc(2, "login", AHEAD + 10_000, user=user, anon=anon),
        doc(3, "purchase", AHEAD + 11_000, user=user, order_id="o1"),
    ]
    bounded(pipeline, docs, complete=False)  # a stop: the next start goes on from here
    assert unsettled(pipeline.client, pipeline.keys) == {user: anon}
    assert view(pipeline, anon) is not None  # still its own: the link is pending
    assert read_links(pipeline.client, pipeline.keys, [anon]) == {anon: None}
    with pytest.raises(BoundedRunUnsettled) as raised:
        check_settled(pipeline.client, pipeline.keys, "tetik ingest --no-tail")
    line = str(raised.value)
    assert "\n" not in line
    assert repr(user) in line
    assert repr(anon) in line
    assert "1 user(s)" in line

    bounded(pipeline, docs)  # run again to the input's end: the offsets skip every event
    _, states, _ = replayed(docs)
    assert unsettled(pipeline.client, pipeline.keys) == {}
    assert view(pipeline, user) == states[user]
    assert view(pipeline, anon) is None
