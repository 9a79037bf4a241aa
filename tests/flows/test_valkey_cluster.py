"""A real Valkey Cluster of three masters: it starts, connect() speaks to it, and what tetik
needs works on keys of one hash tag while a cross-slot multi-key command fails clearly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest
import redis
from redis.cluster import RedisCluster
from redis.exceptions import CrossSlotTransactionError, RedisClusterException

from flows.retry import RedisUnavailable, RedisUrlError, cluster_url, connect, parse_cluster_url
from flows.servers.valkey_cluster import ValkeyCluster, valkey_cluster
from flows.stores.keys import Keys

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster_client(valkey_cluster: ValkeyCluster) -> RedisCluster:
    client = connect(valkey_cluster.url)
    assert isinstance(client, RedisCluster)
    return client


def test_three_masters_own_all_slots_and_report_ok(valkey_cluster: ValkeyCluster) -> None:
    assert len(valkey_cluster.nodes) == 3
    owned: list[tuple[int, int]] = []
    for host, port in valkey_cluster.nodes:
        node = redis.Redis(host=host, port=port, decode_responses=True)
        info = node.cluster("INFO")
        assert info["cluster_state"] == "ok"
        assert info["cluster_size"] == "3"
        assert info["cluster_slots_ok"] == "16384"
        myself = next(n for n in node.cluster("NODES").values() if "myself" in n["flags"])
        assert "master" in myself["flags"]
        owned += [(int(a), int(b)) for a, b in myself["slots"]]
        node.close()
    starts = [a for a, _ in sorted(owned)]
    ends = [b for _, b in sorted(owned)]
    assert starts == [0, *(end + 1 for end in ends[:-1])]  # no gap, no overlap
    assert ends[-1] == 16383


def test_connect_gives_a_cluster_client_for_a_cluster_url(
    valkey_cluster: ValkeyCluster, unique: str
) -> None:
    client = connect(valkey_cluster.url)
    assert isinstance(client, RedisCluster)
    assert {(n.host, n.port) for n in client.get_primaries()} == set(valkey_cluster.nodes)
    client.set(f"{{{unique}}}:k", "v")
    assert client.get(f"{{{unique}}}:k") == b"v"
    # any one startup node is enough: the client learns the others from it
    host, port = valkey_cluster.nodes[2]
    assert len(connect(cluster_url([(host, port)])).get_nodes()) == 3


def test_a_plain_url_still_gives_a_single_server_client(redis_url: str) -> None:
    assert type(connect(redis_url)) is redis.Redis


def test_cluster_urls_are_read_or_refused_in_one_line() -> None:
    url = "redis+cluster://me:p%40ss@10.0.0.1:7000,10.0.0.2,[::1]:7002/0"
    assert parse_cluster_url(url) == (
        "me",
        "p@ss",
        [("10.0.0.1", 7000), ("10.0.0.2", 6379), ("::1", 7002)],
    )
    for bad in ("redis+cluster://", "redis+cluster://h:x", "redis+cluster://h:1/3"):
        with pytest.raises(RedisUrlError) as caught:
            parse_cluster_url(bad)
        assert "\n" not in str(caught.value)


def test_a_cluster_that_does_not_answer_is_one_line() -> None:
    with pytest.raises(RedisUnavailable, match=r"Redis Cluster at 127\.0\.0\.1:1 did not ans"):
        connect("redis+cluster://127.0.0.1:1")


def test_a_script_over_keys_of_one_hash_tag_runs_atomically(
    cluster_client: RedisCluster, unique: str
) -> None:
    tag = f"{{{unique}:3}}"
    keys = [f"{tag}:a", f"{tag}:b", f"{tag}:c"]
    # Moves one unit from the first key to each of the others; atomic, so the sum holds.
    move = cluster_client.register_script(
        "local n = tonumber(redis.call('GET', KEYS[1]) or '0')"
        " for i = 2, #KEYS do redis.call('INCR', KEYS[i]); n = n - 1 end"
        " redis.call('SET', KEYS[1], n) return n"
    )
    cluster_client.set(keys[0], 3000)
    seen: list[int] = []

    def mover() -> None:
        for _ in range(500):
            move(keys=keys)

    def watcher() -> None:
        for _ in range(300):
            seen.append(sum(int(v or 0) for v in cluster_client.mget(keys)))

    threads = [threading.Thread(target=mover), threading.Thread(target=watcher)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(seen) == {3000}  # MGET of one slot never sees half a script
    assert [int(v) for v in cluster_client.mget(keys)] == [2000, 500, 500]


def test_a_transaction_over_hash_tagged_keys_works(
    cluster_client: RedisCluster, unique: str
) -> None:
    shard = Keys(unique).shard(3)
    pipe = cluster_client.pipeline(transaction=True)
    pipe.hset(shard.state("U1"), mapping={"step": "1", "at": "5"})
    pipe.zadd(shard.timers, {"U1": 5})
    pipe.hincrby(shard.stats, "applied", 1)
    assert pipe.execute() == [2, 1, 1]
    assert cluster_client.hgetall(shard.state("U1")) == {b"step": b"1", b"at": b"5"}
    assert cluster_client.zrangebyscore(shard.timers, 0, 10) == [b"U1"]

    def read_then_write(pipe: redis.client.Pipeline) -> int:
        count = int(pipe.hget(shard.stats, "applied") or 0)
        pipe.multi()
        pipe.hset(shard.stats, "applied", count + 10)
        return count

    seen = cluster_client.transaction(
        read_then_write, shard.stats, shard.timers, value_from_callable=True
    )
    assert seen == 1
    assert cluster_client.hget(shard.stats, "applied") == b"11"


def test_a_cross_slot_multi_key_command_fails_clearly(
    cluster_client: RedisCluster, unique: str
) -> None:
    keys = [f"{{{unique}:{s}}}:k" for s in range(8)]
    assert len({cluster_client.keyslot(k) for k in keys}) > 1
    with pytest.raises(RedisClusterException, match="all keys must map to the same key slot"):
        cluster_client.mget(keys)
    script = cluster_client.register_script("return #KEYS")
    with pytest.raises(RedisClusterException, match="EVALSHA - all keys must map to the same"):
        script(keys=keys)
    pipe = cluster_client.pipeline(transaction=True)
    for key in keys:
        pipe.incr(key)
    with pytest.raises(CrossSlotTransactionError, match="must map to the same slot"):
        pipe.execute()
    assert cluster_client.mget_nonatomic(keys) == [None] * len(keys)  # nothing was written


def test_shard_tags_spread_over_all_three_masters(
    valkey_cluster: ValkeyCluster, cluster_client: RedisCluster
) -> None:
    owners: dict[tuple[str, int], int] = {}
    for shard in range(32):
        node = cluster_client.get_node_from_key(Keys().shard(shard).timers)
        owners[(node.host, node.port)] = owners.get((node.host, node.port), 0) + 1
    assert set(owners) == set(valkey_cluster.nodes)
    assert min(owners.values()) >= 5  # roughly even, not all but one on a master


def test_a_cluster_starts_fast_and_leaves_nothing_behind() -> None:
    started = time.monotonic()
    with valkey_cluster(masters=3) as cluster:
        took = time.monotonic() - started
        client = connect(cluster.url)
        client.set("{x}:k", 1)
        client.close()
        pids, workdir = cluster.pids, cluster.workdir
    assert took < 10.0, f"cluster start took {took:.1f} s"  # about 2 s, mostly valkey-cli
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not workdir.exists()


def test_the_nodes_die_with_a_killed_parent() -> None:
    script = (
        "import json, sys, time\n"
        "from flows.servers.valkey_cluster import valkey_cluster\n"
        "with valkey_cluster() as c:\n"
        "    print(json.dumps([c.pids, str(c.workdir)]), flush=True)\n"
        "    time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    pids, workdir = json.loads(parent.stdout.readline())
    for pid in pids:
        os.kill(pid, 0)  # running
    parent.kill()  # SIGKILL: no atexit, no finally
    parent.wait()
    parent.stdout.close()
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    shutil.rmtree(workdir, ignore_errors=True)
    assert not [pid for pid in pids if _alive(pid)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
