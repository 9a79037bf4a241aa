"""The onsite inbox on the real Redis: order, idempotency, trimming, expiry.

Every test runs on the session's Redis and on its three-master Redis Cluster, where
the script that writes an inbox's two keys needs them in one slot."""

from __future__ import annotations

import pytest
import redis
from redis.crc import key_slot

from channels.onsite import OnsiteChannel, read_inbox
from engine.actions import to_dict
from flows.retry import connect
from flows.stores.keys import Keys
from tests.channels.support import FAST_RETRY, make_action

pytestmark = pytest.mark.integration


@pytest.fixture(params=["redis", "cluster"])
def client(request: pytest.FixtureRequest, redis_client: redis.Redis) -> redis.Redis:
    if request.param == "cluster":
        return connect(request.getfixturevalue("valkey_cluster").url)
    return redis_client


@pytest.fixture
def keys(unique: str) -> Keys:
    return Keys(unique)


def test_inbox_reads_newest_first_as_action_objects(client: redis.Redis, keys: Keys) -> None:
    channel = OnsiteChannel(client, keys, retry=FAST_RETRY)
    actions = [make_action(n, user_id="u1", channel="onsite") for n in (2, 1, 3)]
    for action in actions:
        assert channel.send(action).outcome == "delivered"
    inbox = read_inbox(client, keys, "u1")
    assert [m["action_id"] for m in inbox] == ["act-0003", "act-0002", "act-0001"]
    assert inbox[0] == to_dict(actions[2])


def test_the_same_action_twice_is_one_entry(client: redis.Redis, keys: Keys) -> None:
    channel = OnsiteChannel(client, keys, retry=FAST_RETRY)
    action = make_action(1, channel="onsite")
    first, second = channel.send(action), channel.send(action)
    assert (first.outcome, second.outcome) == ("delivered", "delivered")
    assert second.detail == "already in inbox"
    assert len(read_inbox(client, keys, action.user_id)) == 1


def test_inbox_is_trimmed_oldest_first_in_both_keys(client: redis.Redis, keys: Keys) -> None:
    channel = OnsiteChannel(client, keys, max_items=3, retry=FAST_RETRY)
    for n in range(1, 6):
        channel.send(make_action(n, user_id="u1"))
    assert [m["action_id"] for m in read_inbox(client, keys, "u1")] == [
        "act-0005",
        "act-0004",
        "act-0003",
    ]
    assert client.hlen(keys.inbox("u1")) == 3
    # A late repeat of a trimmed action is the oldest: it does not push a newer one out.
    channel.send(make_action(1, user_id="u1"))
    assert len(read_inbox(client, keys, "u1")) == 3
    assert read_inbox(client, keys, "u1")[-1]["action_id"] == "act-0003"


def test_both_keys_expire_after_the_ttl(client: redis.Redis, keys: Keys) -> None:
    channel = OnsiteChannel(client, keys, ttl_ms=60_000, retry=FAST_RETRY)
    channel.send(make_action(1, user_id="u1"))
    for key in (keys.inbox("u1"), keys.inbox_order("u1")):
        assert 0 < client.pttl(key) <= 60_000


def test_users_have_separate_inboxes_and_unknown_users_empty_ones(
    client: redis.Redis, keys: Keys
) -> None:
    channel = OnsiteChannel(client, keys, retry=FAST_RETRY)
    channel.send(make_action(1, user_id="u1"))
    channel.send(make_action(2, user_id="u2"))
    assert [m["action_id"] for m in read_inbox(client, keys, "u2")] == ["act-0002"]
    assert read_inbox(client, keys, "nobody") == []


def test_a_wrong_type_key_is_failed_not_raised(client: redis.Redis, keys: Keys) -> None:
    client.set(keys.inbox("u1"), "not a hash")
    result = OnsiteChannel(client, keys, retry=FAST_RETRY).send(make_action(1))
    assert (result.outcome, result.attempts) == ("failed", 1)
    assert "WRONGTYPE" in result.detail


def test_an_inbox_is_one_slot_and_inboxes_spread(client: redis.Redis, keys: Keys) -> None:
    channel = OnsiteChannel(client, keys, retry=FAST_RETRY)
    users = [f"u{n}" for n in range(40)]
    for n, user in enumerate(users):
        assert channel.send(make_action(n, user_id=user)).outcome == "delivered"
    assert {keys.inbox_user(key) for key in client.scan_iter(match=keys.inboxes)} == set(users)
    assert all(
        key_slot(keys.inbox(user).encode()) == key_slot(keys.inbox_order(user).encode())
        for user in users
    )
    assert len({key_slot(keys.inbox(user).encode()) for user in users}) > 30
