"""The Redis key layout (flows/stores/keys.py) against Redis Cluster's hash slots.

Every key of one shard hashes to one slot, every deployment-wide key to one other
slot, and the keys touched alone (a delivered action, an onsite inbox) carry a tag
of their own so that they spread. Slots are computed as Redis Cluster computes them
(``redis.crc.key_slot``: CRC16 of the hash tag, mod 16384) and then checked on the
session's three-master cluster: one MULTI over every key of a shard, one WATCH
transaction over every deployment-wide key (with the rules channel's PUBLISH).
"""

from __future__ import annotations

import inspect

import pytest
import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from engine.errors import ConfigError
from flows.retry import connect
from flows.servers.valkey_cluster import ValkeyCluster
from flows.stores.keys import Keys, RulesKeys, ShardKeys

pytestmark = pytest.mark.integration

# Every public member of Keys, by what it is. A new key must be added here (the
# test below fails until it is), so that its slot is checked.
DEPLOYMENT_WIDE = {"stats", "layout", "recovery", "watermark", "topics", "rfm_bounds"}
DEPLOYMENT_SPELLED = {"rfm_claim"}  # a method: one key per RFM refresh instant
OWN_TAG = {"delivered", "inbox", "inbox_order", "product"}
NOT_KEYS = {"prefix", "shards", "tag", "shard", "of", "state", "all_shards", "rules"}
NOT_KEYS |= {"inboxes", "inbox_user"}  # a SCAN pattern and its inverse
IDENTITIES = ["U1", "u00042", "a-896631cbd73e", "shopper@example.com", "ü", "{odd}", "x}y"]


def slot(key: str) -> int:
    return int(key_slot(key.encode()))


def public(cls: type) -> set[str]:
    return {name for name, _ in inspect.getmembers(cls) if not name.startswith("_")}


def shard_keys(shard: ShardKeys, identities: list[str] = IDENTITIES) -> list[str]:
    """Every key a shard has: each property but the tag, states, hand-offs and segments."""
    spelled = {"state", "handoff", "segment", "interest", "together"}  # methods: one per name
    names = sorted(public(ShardKeys) - {"prefix", "shard", "tag"} - spelled)
    assert {"timers", "outbox", "offsets", "stats", "shoppers", "acked", "rfm"} <= set(names)
    assert {"links", "waiting"} <= set(names)  # identity (flows.pipeline.identity)
    per_identity = [shard.state(i) for i in identities] + [shard.handoff(i) for i in identities]
    segments = [shard.segment(name) for name in ("loyal", "a-b_c", "x}y", "ü")]
    products = ["p1", "sku-{9}", "ü"]  # the catalog's per-product keys (SPEC section 10)
    catalog = [shard.interest(p) for p in products] + [shard.together(p) for p in products]
    return [getattr(shard, name) for name in names] + per_identity + segments + catalog


def deployment_keys(keys: Keys) -> list[str]:
    """Every deployment-wide key, the rules store's keys and channel included."""
    rules = [getattr(keys.rules, name) for name in sorted(public(RulesKeys) - {"tag"})]
    assert len(rules) == 9
    claims = [keys.rfm_claim(instant) for instant in (0, 1_700_000_000_000)]
    return [getattr(keys, name) for name in sorted(DEPLOYMENT_WIDE)] + rules + claims


def test_every_member_of_the_layout_is_classified() -> None:
    assert public(Keys) == DEPLOYMENT_WIDE | DEPLOYMENT_SPELLED | OWN_TAG | NOT_KEYS


@pytest.mark.parametrize("prefix", ["tetik", "t3a9c", "shop:eu-1", "ünï"])
def test_every_key_of_one_shard_is_in_one_slot(prefix: str) -> None:
    keys = Keys(prefix, shards=16)
    slots = []
    for shard in keys.all_shards():
        found = {slot(key) for key in shard_keys(shard)}
        assert found == {slot(shard.tag)}, (shard.shard, found)
        slots.append(found.pop())
    assert len(set(slots)) == len(slots)  # shards are different slots
    for identity in IDENTITIES:  # a shopper's state is in the slot of its shard
        assert slot(keys.state(identity)) == slot(keys.of(identity).timers)


@pytest.mark.parametrize("prefix", ["tetik", "t3a9c", "shop:eu-1"])
def test_every_deployment_wide_key_is_in_one_slot(prefix: str) -> None:
    keys = Keys(prefix)
    assert {slot(key) for key in deployment_keys(keys)} == {slot(keys.tag)}
    assert slot(keys.tag) not in {slot(shard.tag) for shard in keys.all_shards()}


def test_keys_touched_alone_have_a_tag_each_and_spread() -> None:
    keys = Keys("tetik")
    users = [f"u{n}" for n in range(200)]
    for user in [*users, *IDENTITIES]:
        assert slot(keys.inbox(user)) == slot(keys.inbox_order(user))  # one script
        assert keys.inbox_user(keys.inbox(user)) == user
    assert len({slot(keys.inbox(user)) for user in users}) > 190
    actions = [f"{n:032x}" for n in range(200)]
    assert len({slot(keys.delivered(action)) for action in actions}) > 190
    products = [f"sku-{n}" for n in range(200)]
    assert len({slot(keys.product(product)) for product in products}) > 190


def test_a_prefix_with_braces_is_refused_in_one_line() -> None:
    for prefix in ("{tetik}", "te}tik", "a{b"):
        with pytest.raises(ConfigError, match="choose a prefix without braces") as refused:
            Keys(prefix)
        assert "\n" not in str(refused.value)


@pytest.fixture
def cluster(valkey_cluster: ValkeyCluster) -> RedisCluster:
    client = connect(valkey_cluster.url)
    assert isinstance(client, RedisCluster)
    return client


def test_one_transaction_writes_every_key_of_a_shard_on_the_cluster(
    cluster: RedisCluster, unique: str
) -> None:
    for shard in Keys(unique, shards=4).all_shards():
        written = shard_keys(shard)
        pipe = cluster.pipeline(transaction=True)
        for key in written:
            pipe.set(key, shard.shard)
        pipe.execute()
        assert cluster.mget(written) == [str(shard.shard).encode()] * len(written)
        assert cluster.delete(*written) == len(written)


def test_one_watch_transaction_spans_every_deployment_wide_key_on_the_cluster(
    cluster: RedisCluster, unique: str
) -> None:
    keys = Keys(unique)
    written = [key for key in deployment_keys(keys) if key != keys.rules.changed]
    listener = cluster.pubsub()
    listener.subscribe(keys.rules.changed)
    assert listener.get_message(timeout=2)["type"] == "subscribe"

    def body(pipe: redis.client.Pipeline) -> int:
        before = sum(pipe.get(key) is not None for key in written)  # reads under WATCH
        pipe.multi()
        for key in written:
            pipe.set(key, "1")
        pipe.execute_command("PUBLISH", keys.rules.changed, "1")  # as the rules store does
        return before

    assert cluster.transaction(body, *written, value_from_callable=True) == 0
    assert cluster.mget(written) == [b"1"] * len(written)
    message = listener.get_message(timeout=2)
    assert message is not None
    assert message["data"] == b"1"
    listener.close()
    cluster.delete(*written)
