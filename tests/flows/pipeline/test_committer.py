"""The committer thread (flows.pipeline.committer): commits of several shards waiting
together go to Redis in one round trip, each shard's in order, each as its own commit
would have written; on a single Redis and on a three-master cluster."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import pytest

import flows.pipeline.committer as committer_module
from flows.pipeline.committer import Committer
from flows.retry import RedisClient, retrying
from flows.stores.states import ShardStore, ShardWrite, TimerHead, commit_together
from tests.flows.pipeline.support import NOW, Pipeline

pytestmark = pytest.mark.integration

SHARDS = 8


def stores_of(client: RedisClient, unique: str) -> list[ShardStore]:
    keys = Pipeline(client, "", unique, "version: 1\njourneys: []\n", shards=SHARDS).keys
    return [ShardStore(client, keys.shard(i), 0) for i in range(SHARDS)]


def write_of(shard: int, n: int) -> ShardWrite:
    """States u<shard>-<n> and -x, due a second and a minute later; offsets and counters."""
    states = [(f"u{shard}-{n}", f"state {shard} {n}".encode(), NOW + 1_000 * (n + 1))]
    states.append((f"u{shard}-x", b"x", NOW + 60_000))
    write = ShardWrite(states=states)
    write.offsets["0-events"] = 10 * shard + n
    write.counts["applied"] = 1
    return write


def blocked(committer: Committer) -> threading.Event:
    """Hold the committer thread until the event is set (so commits queue behind)."""
    go = threading.Event()
    committer.submit(go.wait)
    return go


def retry(what: str, call: Any) -> Any:
    return retrying(what, call)


def recorded(monkeypatch: pytest.MonkeyPatch, what: Any) -> list[Any]:
    """What ``what(stores, writes)`` says of each group the committer sends (a spy)."""
    groups: list[Any] = []

    def spy(stores: Sequence[ShardStore], writes: Sequence[ShardWrite], now: int) -> Any:
        groups.append(what(stores, writes))
        return commit_together(stores, writes, now)

    monkeypatch.setattr(committer_module, "commit_together", spy)
    return groups


def test_waiting_commits_of_several_shards_share_one_round_trip(
    store_client: RedisClient, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    groups = recorded(monkeypatch, lambda stores, _writes: len(stores))
    stores = stores_of(store_client, unique)
    committer = Committer()
    go = blocked(committer)
    futures = [
        committer.commit(
            store, write_of(i, 0), clock=lambda: NOW, retry=retry, then=lambda head: head
        )
        for i, store in enumerate(stores)
    ]
    go.set()
    heads = [f.result(timeout=10) for f in futures]
    committer.shutdown()
    assert groups == [SHARDS]  # one pipeline for the eight shards
    for i, (store, head) in enumerate(zip(stores, heads, strict=True)):
        assert head == TimerHead(((f"u{i}-0", NOW + 1_000), (f"u{i}-x", NOW + 60_000)), None)
        assert store.read([f"u{i}-0"]) == [f"state {i} 0".encode()]
        assert store.offsets() == {"0-events": 10 * i}


def test_a_shards_second_commit_waits_for_its_first(
    store_client: RedisClient, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    groups = recorded(monkeypatch, lambda _stores, writes: [w.states[0][0] for w in writes])
    stores = stores_of(store_client, unique)
    committer = Committer()
    go = blocked(committer)
    order = [(0, 0), (1, 0), (0, 1), (2, 0), (1, 1)]
    seen: list[str] = []
    futures = [
        committer.commit(
            stores[shard],
            write_of(shard, n),
            clock=lambda: NOW,
            retry=retry,
            then=lambda head, shard=shard, n=n: seen.append(f"u{shard}-{n}"),  # type: ignore[misc]
        )
        for shard, n in order
    ]
    go.set()
    for f in futures:
        f.result(timeout=10)
    committer.shutdown()
    assert groups == [["u0-0", "u1-0"], ["u0-1", "u2-0", "u1-1"]]  # a shard once per group
    assert seen == [f"u{shard}-{n}" for shard, n in order]  # then: in the order submitted
    assert stores[0].offsets() == {"0-events": 1}  # the second commit wrote last
    assert stores[1].offsets() == {"0-events": 11}


def test_a_group_loads_the_script_redis_lost(store_client: RedisClient, unique: str) -> None:
    stores = stores_of(store_client, unique)[:3]
    store_client.script_flush()
    heads = commit_together(stores, [write_of(i, 0) for i in range(3)], NOW)
    assert [h.first for h in heads] == [NOW + 1_000] * 3
    assert [s.read([f"u{i}-0"])[0] for i, s in enumerate(stores)] == [
        f"state {i} 0".encode() for i in range(3)
    ]


def test_a_failed_group_fails_each_of_its_commits(store_client: RedisClient, unique: str) -> None:
    stores = stores_of(store_client, unique)[:2]

    def broken(what: str, call: Any) -> Any:
        raise RuntimeError("Redis said no")

    committer = Committer()
    go = blocked(committer)
    futures = [
        committer.commit(s, write_of(i, 0), clock=lambda: NOW, retry=broken, then=lambda h: h)
        for i, s in enumerate(stores)
    ]
    after = committer.submit(lambda: "still running")
    go.set()
    for f in futures:
        with pytest.raises(RuntimeError, match="Redis said no"):
            f.result(timeout=10)
    assert after.result(timeout=10) == "still running"
    committer.shutdown()


def test_large_commits_do_not_share_a_round_trip(
    store_client: RedisClient, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    groups = recorded(monkeypatch, lambda stores, _writes: len(stores))
    stores = stores_of(store_client, unique)[:3]
    big = committer_module.GROUP_STATES // 2 + 1
    writes = [ShardWrite(states=[(f"u{i}-{n}", b"s", None) for n in range(big)]) for i in range(3)]
    committer = Committer()
    go = blocked(committer)
    futures = [
        committer.commit(store, write, clock=lambda: NOW, retry=retry, then=lambda head: head)
        for store, write in zip(stores, writes, strict=True)
    ]
    go.set()
    for f in futures:
        f.result(timeout=10)
    committer.shutdown()
    assert groups == [1, 1, 1]  # two would hold more states than a group may
