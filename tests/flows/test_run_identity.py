"""``tetik run`` killed with SIGKILL in the middle of a login-heavy log: every action once.

Each shopper browses anonymously (a cart on a device id), logs in, and many
buy a millisecond after the login: the anonymous id and its user sit on
different shards as often as not, and the run has two processes, so merges
cross workers and processes. The engine is killed twice (mid-stream and while
catching up); the actions on the topic must be exactly ``tetik replay``'s.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from confluent_kafka import Producer

from flows.stores.keys import Keys
from flows.stores.states import read_stats
from tests.flows.live import RULES, Live, expected_actions, live, tally, wait_for_actions

# A kill scenario of a minute: `make chaos-short` runs it (in .ci/run), not `make test`.
pytestmark = [pytest.mark.integration, pytest.mark.scenario]


@pytest.fixture
def session(redis_url: str, kafka_bootstrap: str, unique: str, tmp_path: Path) -> Iterator[Live]:
    with live(redis_url, kafka_bootstrap, unique, tmp_path) as found:
        yield found


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def logins(start: int, users: int, first: int = 0) -> list[dict[str, Any]]:
    """Anonymous carts, then a login; a third buy 1 ms after it, some browse on.

    No anonymous-only event follows a login here: read from another partition
    during a catch-up it may outrun the login (a documented limit).
    """
    docs: list[dict[str, Any]] = []
    for i in range(first, first + users):
        anon, user, ts, n = f"dev{i}", f"cust{i}", start + (i - first) * 80, 1000 * i
        docs.append({"event_id": f"e{n}", "type": "add_to_cart", "ts": ts, "anon_id": anon,
                     "product_id": f"p{i % 3}", "price": 30.0})  # fmt: skip
        docs.append({"event_id": f"e{n + 1}", "type": "login", "ts": ts + 300,
                     "user_id": user, "anon_id": anon})  # fmt: skip
        if i % 3 == 0:
            docs.append({"event_id": f"e{n + 2}", "type": "purchase", "ts": ts + 301,
                         "user_id": user})  # fmt: skip
        if i % 4 == 1:  # the user browses on after the login
            for k in (1, 2):
                docs.append({"event_id": f"e{n + 2 + k}", "type": "view_product",
                             "ts": ts + 300 + 100 * k, "user_id": user,
                             "product_id": "p1"})  # fmt: skip
    return sorted(docs, key=lambda d: int(d["ts"]))


def produce(bootstrap: str, topic: str, docs: list[dict[str, Any]]) -> None:
    """Each event at its ``ts``, keyed by its identity key (``user_id``, else ``anon_id``)
    as the clickstream generator keys them: a login shares the user's partition, so
    the purchase after it is read after it (ARCHITECTURE, "Identity across shards")."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1})
    for doc in docs:
        delay = doc["ts"] / 1000 - time.time()
        if delay > 0:
            time.sleep(delay)
        key = str(doc.get("user_id") or doc["anon_id"]).encode()
        producer.produce(topic, orjson.dumps(doc), key=key)
        producer.poll(0)
    producer.flush(10)


def test_kill_during_merges_emits_every_action_once(session: Live, redis_url: str) -> None:
    rules = str(session.rules_file())
    first = session.start("--rules", rules, "--processes", "2")
    before = logins(now_ms() + 2_000, 30)
    produce(session.bootstrap, session.events, before)
    time.sleep(0.2)
    first.kill()  # SIGKILL, mid-merges
    first.wait()
    during = logins(now_ms() + 100, 10, first=100)
    produce(session.bootstrap, session.events, during)
    second = session.start("--processes", "2")
    time.sleep(3.0)  # catching up
    second.kill()
    second.wait()
    third = session.start("--processes", "2")
    expected = expected_actions(RULES, sorted([*before, *during], key=lambda d: int(d["ts"])))
    emitted = wait_for_actions(session.bootstrap, session.actions, len(expected), timeout=60)
    assert session.stop(third) == 0, session.log()
    counts = tally(expected, emitted)
    print(f"identity kill-and-restart: {counts}")
    want, got = {a["action_id"] for a in expected}, {a["action_id"] for a in emitted}
    for a in expected:
        if a["action_id"] not in got:
            print("missing", a)
    for a in emitted:
        if a["action_id"] not in want:
            print("unexpected", a)
    assert counts.duplicates == counts.missing == counts.unexpected == 0, counts
    bought = {f"cust{i}" for i in [*range(30), *range(100, 110)] if i % 3 == 0}
    assert not [a for a in emitted if a["user_id"] in bought and a["journey"] == "cart"]
    stats = read_stats(redis.Redis.from_url(redis_url), Keys(session.name))
    assert stats["identity.merged"] == 40
