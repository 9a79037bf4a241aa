"""The head of a shard's timer index, as each commit leaves it (TimerHead).

The commit script returns the index's entries due within HORIZON_MS (at most HEAD)
and the score after them; the shard, the index's only writer, fires its timers from
that head and reads the index only when the head cannot tell (after a start, or more
due than it holds).
"""

from __future__ import annotations

from typing import Any

import pytest

from flows.pipeline.decode import Stamped, decode_stamped
from flows.pipeline.shard import ShardLogic, ShardReport
from flows.retry import RedisClient
from flows.stores.states import HEAD, HORIZON_MS, ShardStore, ShardWrite, TimerHead
from tests.flows.pipeline.support import NOW, Pipeline, Spy, event, message

pytestmark = pytest.mark.integration

RULES = """\
version: 1
consent: {email: opt_out}
journeys:
  - id: welcome
    trigger: signup
    steps:
      - wait: 1m
      - send: email
"""


def store_of(client: RedisClient, unique: str) -> ShardStore:
    return ShardStore(client, Pipeline(client, "", unique, RULES, shards=1).keys.shard(0), 0)


def test_a_commit_returns_the_entries_due_within_the_horizon(
    store_client: RedisClient, unique: str
) -> None:
    store = store_of(store_client, unique)
    assert store.commit(ShardWrite(), NOW) == TimerHead((), None)  # nothing pending
    states = [("u1", b"a", NOW + 1_000), ("u2", b"b", NOW + 2_000)]
    states.append(("far", b"c", NOW + HORIZON_MS + 1))
    head = store.commit(ShardWrite(states=states), NOW)
    assert head.first == NOW + 1_000  # read before the entries are parsed
    assert head == TimerHead((("u1", NOW + 1_000), ("u2", NOW + 2_000)), NOW + HORIZON_MS + 1)
    assert head.first == NOW + 1_000
    assert head.due(NOW) == []
    assert head.due(NOW + 1_500) == ["u1"]
    assert head.due(NOW + HORIZON_MS) == ["u1", "u2"]
    assert head.due(NOW + HORIZON_MS + 1) is None  # "far" is due too: read the index
    assert store.due(NOW + HORIZON_MS + 1, 10) == ["u1", "u2", "far"]


def test_a_head_holds_at_most_head_entries(store_client: RedisClient, unique: str) -> None:
    store = store_of(store_client, unique)
    states = [(f"u{n:03d}", b"s", NOW + n) for n in range(HEAD + 5)]
    head = store.commit(ShardWrite(states=states), NOW)
    assert [identity for identity, _ in head.entries] == [f"u{n:03d}" for n in range(HEAD)]
    assert head.after == NOW + HEAD
    assert head.due(NOW + HEAD - 1) == [f"u{n:03d}" for n in range(HEAD)]
    assert head.due(NOW + HEAD) is None


def emitted(reports: Any) -> list[str]:
    found: list[str] = []
    for report in reports:
        assert isinstance(report, ShardReport)
        found.extend(f"{a.user_id}:{a.channel}" for a in report.actions)
    return found


def test_a_due_step_fires_from_the_head_without_reading_the_index(
    store_client: RedisClient, kafka_bootstrap: str, unique: str
) -> None:
    pipeline = Pipeline.create(store_client, kafka_bootstrap, unique, RULES, shards=1)
    spy = Spy(store_client)
    config = pipeline.config(client=spy, committer=None)
    decode = decode_stamped(config.watermark)

    def signup(n: int) -> Stamped:
        item = decode(message(n, event(n, f"u{n}", "signup", NOW - 5 * 60_000)))
        assert isinstance(item, Stamped)
        return item

    logic = ShardLogic(config, 0)
    assert emitted(logic.on_batch([signup(0)])[0]) == []  # the e-mail waits a minute
    config.watermark.polled("0-events", 0, True)
    spy.calls.clear()
    assert emitted(logic.on_notify()[0]) == ["u0:email"]
    assert spy.calls["zrangebyscore"] == 0

    # A new logic (a restart) knows no head: its first timer pass reads the index.
    logic.on_batch([signup(1)])
    restarted = ShardLogic(config, 0)
    spy.calls.clear()
    assert emitted(restarted.on_notify()[0]) == ["u1:email"]
    assert spy.calls["zrangebyscore"] == 1
