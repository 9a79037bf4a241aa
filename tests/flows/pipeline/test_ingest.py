"""The pipeline without journeys (``tetik ingest``): events -> shoppers' states in Redis.

In process (Bytewax's testing source and sink) against the real Redis and Kafka,
on one Redis and on a Redis Cluster.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest
from bytewax.connectors.kafka import KafkaSourceMessage

from engine.journeys import Engine
from engine.replay import replay
from engine.rules.loader import load_rules
from engine.state import cart_count, cart_total
from engine.windows import WindowConfig, WindowLimits
from flows.jobs.ingest import NO_JOURNEYS
from flows.retry import RedisClient
from flows.stores.states import Shoppers
from tests.flows.pipeline.support import NOW, Pipeline

pytestmark = pytest.mark.integration


def event(n: int, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"event_id": f"e{n}", "ts": NOW - 60_000 + n, "user_id": "u1"}
    return {k: v for k, v in (base | fields).items() if v is not None}


def message(offset: int, doc: dict[str, Any] | bytes) -> KafkaSourceMessage[bytes, bytes]:
    value = doc if isinstance(doc, bytes) else orjson.dumps(doc)
    return KafkaSourceMessage(
        key=b"k", value=value, topic="events", partition=2, offset=offset, timestamp=(1, NOW)
    )


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


@pytest.fixture
def pipeline(store_client: RedisClient, kafka_bootstrap: str, unique: str) -> Pipeline:
    return Pipeline.create(store_client, kafka_bootstrap, unique, NO_JOURNEYS)


def shoppers(pipeline: Pipeline) -> Shoppers:
    return Shoppers(pipeline.client, pipeline.keys)


def run(pipeline: Pipeline, docs: list[Any], **overrides: Any) -> None:
    pipeline.run([message(i, doc) for i, doc in enumerate(docs)], **overrides)


def test_events_update_each_shoppers_state_in_redis(pipeline: Pipeline) -> None:
    run(pipeline, shopping())
    state = shoppers(pipeline).load("u1")
    assert state is not None
    assert set(state.cart) == {"p1"}  # p2 was bought
    assert (cart_count(state), cart_total(state)) == (2, 100.0)
    assert state.consent["sms"].granted is True
    assert state.profile == {"timezone": "Europe/Istanbul"}
    assert list(state.favorites) == ["p9"]
    assert state.windows["purchase"][0].revenue == 10.0
    anon = shoppers(pipeline).load("a-1")
    assert anon is not None
    assert anon.windows["search"][0].query == "running shoes"
    assert shoppers(pipeline).stats()["applied"] == 8


def test_state_keys_expire_after_the_longest_window(pipeline: Pipeline) -> None:
    run(pipeline, [event(1, type="login")])
    ttl = int(pipeline.client.pttl(pipeline.keys.state("u1")))  # type: ignore[arg-type]
    assert 0 < ttl <= 3_600_000


def test_malformed_messages_go_to_the_dlq_and_neighbours_are_applied(pipeline: Pipeline) -> None:
    docs: list[Any] = [
        event(1, type="add_to_cart", product_id="p1", price=5.0),
        b'{"event_id": "broken", "type": ',
        event(2, type="add_to_cart", product_id="p1", price=-5.0),  # negative price
        event(3, type="add_to_cart", product_id="p2", price=7.0),
    ]
    run(pipeline, docs)
    assert [m.value for m in pipeline.dead] == [docs[1], orjson.dumps(docs[2])]
    headers = dict(pipeline.dead[1].headers)
    assert b"price" in headers["tetik.error.reason"]
    assert headers["tetik.source.topic"] == b"events"
    assert (headers["tetik.source.partition"], headers["tetik.source.offset"]) == (b"2", b"2")
    state = shoppers(pipeline).load("u1")
    assert state is not None
    assert set(state.cart) == {"p1", "p2"}
    assert shoppers(pipeline).stats()["applied"] == 2


def test_reading_the_same_events_again_changes_nothing(pipeline: Pipeline) -> None:
    docs = [event(i, type="view_product", product_id=f"p{i % 3}") for i in range(20)]
    docs.append(event(99, type="add_to_cart", product_id="p1", price=3.0))
    run(pipeline, docs)
    first = pipeline.client.get(pipeline.keys.state("u1"))
    run(pipeline, docs)  # the same offsets: the state reflects them already
    assert pipeline.client.get(pipeline.keys.state("u1")) == first
    stats = shoppers(pipeline).stats()
    assert (stats["applied"], stats["skipped"]) == (21, 21)


def test_the_same_event_at_another_offset_is_a_duplicate(pipeline: Pipeline) -> None:
    doc = event(1, type="add_to_cart", product_id="p1", price=5.0)
    run(pipeline, [doc, doc, doc])
    state = shoppers(pipeline).load("u1")
    assert state is not None
    assert state.cart["p1"].quantity == 1
    assert shoppers(pipeline).stats()["duplicate"] == 2


def test_windows_are_bounded_by_the_configured_count(pipeline: Pipeline) -> None:
    windows = WindowConfig(default=WindowLimits(max_count=5))
    engine = Engine(load_rules(NO_JOURNEYS, "<ingest>"), windows)
    docs = [event(i, type="view_product", product_id="p") for i in range(12)]
    pipeline.run([message(i, d) for i, d in enumerate(docs)], engine=engine)
    state = shoppers(pipeline).load("u1")
    assert state is not None
    assert [r.ts for r in state.windows["view_product"]] == [NOW - 60_000 + i for i in range(7, 12)]


def test_stale_and_far_future_events_go_to_the_dlq_with_their_reason(
    pipeline: Pipeline,
) -> None:
    """Both are dead-lettered with a reason (not only counted), and replay refuses the
    same lines for the same reasons."""
    day = 86_400_000
    docs: list[Any] = [
        event(1, type="view_product", product_id="p1"),
        event(2, type="view_product", product_id="p2", ts=NOW - 31 * day),  # stale
        event(3, type="purchase", order_id="o1", revenue=5.0, ts=NOW - 31 * day),  # kept 400d
        event(4, type="login", ts=NOW + 2 * day),  # more than a day ahead of Kafka's time
        event(5, type="login", ts=1_000_000_000_000_000),  # the year 33658
        event(6, type="view_product", product_id="p3"),
    ]
    run(pipeline, docs)
    reasons = {
        orjson.loads(m.value)["event_id"]: dict(m.headers)["tetik.error.reason"].decode()
        for m in pipeline.dead
    }
    assert set(reasons) == {"e2", "e4", "e5"}
    assert "31.0 days before the engine's clock" in reasons["e2"]
    assert "view_product events older than 30d are refused as stale" in reasons["e2"]
    assert "48.0 h after the time the event was received" in reasons["e4"]
    assert "after 2100-01-01" in reasons["e5"]
    state = shoppers(pipeline).load("u1")
    assert state is not None
    assert state.last_seen < NOW + day
    assert sorted(state.windows) == ["purchase", "view_product"]
    stats = shoppers(pipeline).stats()
    assert (stats["applied"], stats.get("stale", 0)) == (3, 0)
    refused: list[tuple[int, str]] = []
    engine = Engine(load_rules(NO_JOURNEYS))
    replay(engine, [orjson.dumps(d) for d in docs], received=NOW, on_error=_add_to(refused))
    assert [(docs[n - 1]["event_id"], reason) for n, reason in refused] == list(reasons.items())


def _add_to(found: list[tuple[int, str]]) -> Callable[[int, str], None]:
    return lambda number, reason: found.append((number, reason))
