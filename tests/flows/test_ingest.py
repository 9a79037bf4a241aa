"""The ingest dataflow on Bytewax's testing source/sink, writing to the real Redis."""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Any

import orjson
import pytest
import redis
from bytewax.connectors.kafka import KafkaSinkMessage, KafkaSourceMessage
from bytewax.testing import TestingSink, TestingSource, run_main

from engine.events import decode_event
from engine.state import UserState, cart_count, cart_total, dumps
from engine.windows import WindowConfig, WindowLimits
from flows.ingest import RedisStateSink, StateWrite, UserLogic, build_ingest_flow, now_ms
from flows.store import BatchLoader, StateStore

pytestmark = pytest.mark.integration
NOW = now_ms()


def event(n: int, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"event_id": f"e{n}", "ts": NOW - 60_000 + n, "user_id": "u1"}
    return base | fields


def message(offset: int, doc: dict[str, Any] | bytes) -> KafkaSourceMessage[bytes, bytes]:
    value = doc if isinstance(doc, bytes) else orjson.dumps(doc)
    return KafkaSourceMessage(key=b"k", value=value, topic="events", partition=2, offset=offset)


def shopping() -> list[dict[str, Any]]:
    return [
        event(1, type="view_product", product_id="p1", category="shoes/running", price=50.0),
        event(2, type="add_to_cart", product_id="p1", price=50.0, quantity=2),
        event(3, type="add_to_cart", product_id="p2", price=10.0),
        event(4, type="consent", channel="sms", granted=True),
        event(5, type="profile", attributes={"timezone": "Europe/Istanbul"}),
        event(6, type="add_favorite", product_id="p9"),
        event(7, type="purchase", order_id="o1", items=[{"product_id": "p2", "price": 10.0}]),
        event(8, type="search", query="running shoes", anon_id="a-1", user_id=None),
    ]


def run(store: StateStore, docs: list[Any], dlq: list[KafkaSinkMessage[Any, Any]]) -> None:
    messages = [message(i, doc) for i, doc in enumerate(docs)]
    flow = build_ingest_flow(
        TestingSource(messages), TestingSink(dlq), RedisStateSink(store), BatchLoader(store)
    )
    run_main(flow)


@pytest.fixture
def store(redis_client: redis.Redis, unique: str) -> StateStore:
    return StateStore(redis_client, prefix=unique, ttl_ms=3_600_000)


def test_events_update_each_users_state_in_redis(store: StateStore) -> None:
    run(store, [{k: v for k, v in d.items() if v is not None} for d in shopping()], [])
    state = store.load("u1")
    assert state is not None
    assert set(state.cart) == {"p1"}  # p2 was bought
    assert (cart_count(state), cart_total(state)) == (2, 100.0)
    assert state.consent["sms"].granted is True
    assert state.profile == {"timezone": "Europe/Istanbul"}
    assert list(state.favorites) == ["p9"]
    assert state.windows["purchase"][0].revenue == 10.0
    anon = store.load("a-1")
    assert anon is not None
    assert anon.windows["search"][0].query == "running shoes"
    assert store.stats()["applied"] == 8


def test_state_keys_expire_after_the_longest_window(store: StateStore) -> None:
    run(store, [event(1, type="login")], [])
    ttl = store.client.pttl(store.key("u1"))
    assert 0 < int(ttl) <= 3_600_000  # type: ignore[arg-type]


def test_malformed_message_goes_to_dlq_and_neighbours_are_applied(store: StateStore) -> None:
    docs: list[Any] = [
        event(1, type="add_to_cart", product_id="p1", price=5.0),
        b'{"event_id": "broken", "type": ',
        event(2, type="add_to_cart", product_id="p1", price=-5.0),  # negative price
        event(3, type="add_to_cart", product_id="p2", price=7.0),
    ]
    dlq: list[KafkaSinkMessage[Any, Any]] = []
    run(store, docs, dlq)
    assert [m.value for m in dlq] == [docs[1], orjson.dumps(docs[2])]
    headers = dict(dlq[1].headers)
    assert b"price" in headers["tetik.error.reason"]
    assert headers["tetik.source.topic"] == b"events"
    assert (headers["tetik.source.partition"], headers["tetik.source.offset"]) == (b"2", b"2")
    state = store.load("u1")
    assert state is not None
    assert set(state.cart) == {"p1", "p2"}
    assert store.stats()["invalid"] == 2
    assert store.stats()["applied"] == 2


def test_replaying_the_same_events_changes_nothing(store: StateStore) -> None:
    docs = [event(i, type="view_product", product_id=f"p{i % 3}") for i in range(20)]
    docs.append(event(99, type="add_to_cart", product_id="p1", price=3.0))
    run(store, docs, [])
    first = store.client.get(store.key("u1"))
    run(store, docs, [])
    assert store.client.get(store.key("u1")) == first
    stats = store.stats()
    assert (stats["applied"], stats["duplicate"]) == (21, 21)


def test_duplicates_within_one_run_are_ignored(store: StateStore) -> None:
    doc = event(1, type="add_to_cart", product_id="p1", price=5.0)
    run(store, [doc, doc, doc], [])
    state = store.load("u1")
    assert state is not None
    assert state.cart["p1"].quantity == 1


def test_windows_are_bounded_by_the_configured_count(store: StateStore) -> None:
    windows = WindowConfig(default=WindowLimits(max_count=5))
    messages = [message(i, event(i, type="view_product", product_id="p")) for i in range(12)]
    flow = build_ingest_flow(
        TestingSource(messages),
        TestingSink([]),
        RedisStateSink(store),
        BatchLoader(store),
        windows=windows,
    )
    run_main(flow)
    state = store.load("u1")
    assert state is not None
    assert [r.ts for r in state.windows["view_product"]] == [NOW - 60_000 + i for i in range(7, 12)]


class RecordingLoader:
    """A Loader with no store behind it: records what the logic asks of it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def prefetch(self, identities: Collection[str]) -> None:
        self.calls.append(("prefetch", ",".join(sorted(identities))))

    def load(self, identity: str) -> UserState | None:
        self.calls.append(("load", identity))
        return None

    def release(self, identity: str) -> None:
        self.calls.append(("release", identity))


def test_user_logic_loads_state_on_first_touch_and_discards_when_idle() -> None:
    loader = RecordingLoader()
    logic = UserLogic(loader, WindowConfig(), lambda: NOW, idle_ms=1000, resume=None)
    first = decode_event(orjson.dumps(event(1, type="login")))
    again = decode_event(orjson.dumps(event(2, type="login")))
    (out,), keep = logic.on_batch([first])
    assert isinstance(out, StateWrite)
    assert (out.identity, out.counts, keep) == ("u1", {"applied": 1}, False)
    logic.on_batch([again, first])  # the duplicate of e1 is not applied twice
    assert loader.calls == [("load", "u1")]
    assert logic.notify_at().timestamp() - time.time() == pytest.approx(1.0, abs=0.5)
    assert logic.on_notify() == ([], True)
    assert loader.calls[-1] == ("release", "u1")
    resumed = UserLogic(loader, WindowConfig(), lambda: NOW, 1000, resume=logic.snapshot())
    (out,), _ = resumed.on_batch([again])
    assert out.counts == {"duplicate": 1}
    assert out.data is None  # nothing changed, nothing to write
    assert dumps(resumed._state_for("u1")) == logic.snapshot()  # the snapshot, not a reload


def test_batch_loader_prefetches_once_and_never_serves_a_live_user(store: StateStore) -> None:
    run(store, [event(1, type="login"), event(2, type="login", user_id="u2")], [])
    loader = BatchLoader(store)
    loader.prefetch(["u1", "u2", "nobody"])
    store.client.delete(store.key("u2"))  # the next load must come from the prefetch
    u2 = loader.load("u2")
    assert u2 is not None
    assert u2.events == 1
    assert loader.load("nobody") is None
    store.write([("u2", dumps(u2))], {})
    loader.prefetch(["u2"])  # u2 is live: its logic owns the state, nothing is fetched
    store.client.delete(store.key("u2"))
    assert loader.load("u2") is None  # a fresh GET (key gone), not a copy from the prefetch
    loader.release("u2")
    store.write([("u2", dumps(u2))], {})
    loader.prefetch(["u2"])  # released: fetched again
    store.client.delete(store.key("u2"))
    reloaded = loader.load("u2")
    assert reloaded is not None
    assert reloaded.events == 1
