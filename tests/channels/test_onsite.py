"""The onsite inbox on the real Redis: order, idempotency, trimming, expiry."""

from __future__ import annotations

import redis

from channels.onsite import OnsiteChannel, inbox_key, order_key, read_inbox
from engine.actions import to_dict
from tests.channels.support import FAST_RETRY, make_action


def test_inbox_reads_newest_first_as_action_objects(redis_client: redis.Redis, unique: str) -> None:
    channel = OnsiteChannel(redis_client, unique, retry=FAST_RETRY)
    actions = [make_action(n, user_id="u1", channel="onsite") for n in (2, 1, 3)]
    for action in actions:
        assert channel.send(action).outcome == "delivered"
    inbox = read_inbox(redis_client, unique, "u1")
    assert [m["action_id"] for m in inbox] == ["act-0003", "act-0002", "act-0001"]
    assert inbox[0] == to_dict(actions[2])


def test_the_same_action_twice_is_one_entry(redis_client: redis.Redis, unique: str) -> None:
    channel = OnsiteChannel(redis_client, unique, retry=FAST_RETRY)
    action = make_action(1, channel="onsite")
    first, second = channel.send(action), channel.send(action)
    assert (first.outcome, second.outcome) == ("delivered", "delivered")
    assert second.detail == "already in inbox"
    assert len(read_inbox(redis_client, unique, action.user_id)) == 1


def test_inbox_is_trimmed_oldest_first_in_both_keys(redis_client: redis.Redis, unique: str) -> None:
    channel = OnsiteChannel(redis_client, unique, max_items=3, retry=FAST_RETRY)
    for n in range(1, 6):
        channel.send(make_action(n, user_id="u1"))
    assert [m["action_id"] for m in read_inbox(redis_client, unique, "u1")] == [
        "act-0005",
        "act-0004",
        "act-0003",
    ]
    assert redis_client.hlen(inbox_key(unique, "u1")) == 3
    # A late repeat of a trimmed action is the oldest: it does not push a newer one out.
    channel.send(make_action(1, user_id="u1"))
    assert len(read_inbox(redis_client, unique, "u1")) == 3
    assert read_inbox(redis_client, unique, "u1")[-1]["action_id"] == "act-0003"


def test_both_keys_expire_after_the_ttl(redis_client: redis.Redis, unique: str) -> None:
    channel = OnsiteChannel(redis_client, unique, ttl_ms=60_000, retry=FAST_RETRY)
    channel.send(make_action(1, user_id="u1"))
    for key in (inbox_key(unique, "u1"), order_key(unique, "u1")):
        assert 0 < redis_client.pttl(key) <= 60_000


def test_users_have_separate_inboxes_and_unknown_users_empty_ones(
    redis_client: redis.Redis, unique: str
) -> None:
    channel = OnsiteChannel(redis_client, unique, retry=FAST_RETRY)
    channel.send(make_action(1, user_id="u1"))
    channel.send(make_action(2, user_id="u2"))
    assert [m["action_id"] for m in read_inbox(redis_client, unique, "u2")] == ["act-0002"]
    assert read_inbox(redis_client, unique, "nobody") == []


def test_a_wrong_type_key_is_failed_not_raised(redis_client: redis.Redis, unique: str) -> None:
    redis_client.set(inbox_key(unique, "u1"), "not a hash")
    result = OnsiteChannel(redis_client, unique, retry=FAST_RETRY).send(make_action(1))
    assert (result.outcome, result.attempts) == ("failed", 1)
    assert "WRONGTYPE" in result.detail
