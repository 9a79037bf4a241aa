"""``tetik collect`` served by uvicorn on loopback against the session's Kafka: raw HTTP
calls, the real Segment and RudderStack Python SDKs, dead letters, refusals and a broker
that never answers. One collector for the module; each test tells its records apart by
its own user ids."""

from __future__ import annotations

import asyncio
import base64
import gzip
import http.client
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from cli.main import main
from engine.events import Event, decode_event
from flows.collect.app import Collector
from flows.jobs.collect import bind, collector, server
from flows.kafka.acked import AckedProducer
from flows.kafka.producer import identity_of
from flows.kafka.topics import ensure_topics
from flows.metrics import installed
from flows.metrics.names import COLLECT_REQUESTS
from flows.servers.process import free_port
from flows.settings import Settings

KEY = "shop-key"
pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Served:
    url: str
    port: int
    settings: Settings
    app: Collector


@dataclass(frozen=True)
class Got:
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]


@pytest.fixture(scope="module")
def served(kafka_bootstrap: str) -> Iterator[Served]:
    tag = f"collect{uuid.uuid4().hex[:8]}"
    settings = Settings(
        kafka_bootstrap=kafka_bootstrap,
        events_topic=f"{tag}.events",
        dlq_topic=f"{tag}.dlq",
        actions_topic=f"{tag}.actions",
        actions_dlq_topic=f"{tag}.actions.dlq",
        collect_write_keys=("other-key", KEY),
    )
    ensure_topics(kafka_bootstrap, settings.topic_layout(), timeout=30)
    app = collector(settings)
    uvicorn_server = server(app)
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    thread = threading.Thread(target=uvicorn_server.run, kwargs={"sockets": [sock]})
    thread.start()
    deadline = time.monotonic() + 10
    while not uvicorn_server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert uvicorn_server.started
    yield Served(f"http://127.0.0.1:{port}", port, settings, app)
    uvicorn_server.should_exit = True
    thread.join(10)


def post(
    served: Served,
    path: str,
    body: Any,
    key: str | None = KEY,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    sent = {"Content-Type": "application/json", **(headers or {})}
    if key is not None:
        sent["Authorization"] = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
    try:
        conn.request("POST", path, body=data, headers=sent)
        response = conn.getresponse()
        return response.status, orjson.loads(response.read())
    finally:
        conn.close()


def read(bootstrap: str, topic: str, wanted: Any, expect: int, wait_s: float = 20) -> list[Got]:
    """The records of ``topic`` whose value contains ``wanted`` (bytes), at least ``expect``."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "collect-test"})
    found: list[Got] = []
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
        deadline = time.monotonic() + wait_s
        while len(found) < expect and time.monotonic() < deadline:
            for msg in consumer.consume(500, 0.2):
                value = msg.value() or b""
                if msg.error() is None and wanted in value:
                    headers = {name: bytes(v or b"") for name, v in msg.headers() or []}
                    found.append(Got(msg.key(), value, headers))
    finally:
        consumer.close()
    return found


def events(served: Served, user: str, expect: int) -> list[Event]:
    got = read(served.settings.kafka_bootstrap, served.settings.events_topic, user.encode(), expect)
    for record in got:  # keyed as tetik produce keys: user_id, else anon_id
        assert record.key == identity_of(record.value)
    return sorted((decode_event(record.value) for record in got), key=lambda e: e.event_id)


def test_calls_land_on_the_events_topic_keyed_by_identity(served: Served) -> None:
    counted = installed().read(COLLECT_REQUESTS, endpoint="track", status="200")
    user, anon = f"u-{uuid.uuid4().hex[:8]}", f"a-{uuid.uuid4().hex[:8]}"
    track = {
        "event": "Product Added",
        "anonymousId": anon,
        "messageId": f"{user}-1",
        "properties": {"product_id": "p1", "price": 20, "quantity": 2},
    }
    assert post(served, "/v1/track", track) == (200, {"success": True})
    identify = {
        "userId": user,
        "anonymousId": anon,
        "messageId": f"{user}-2",
        "traits": {"email": "a@b.c"},
    }
    assert post(served, "/v1/identify", identify)[0] == 200
    batch = {
        "batch": [
            {"type": "page", "anonymousId": anon, "messageId": f"{user}-3", "name": "Cart"},
            {"type": "track", "event": "Order Completed", "userId": user, "messageId": f"{user}-4",
             "properties": {"order_id": "o1", "revenue": 40, "products": [{"product_id": "p1"}]}},
        ],
        "writeKey": KEY,
    }  # fmt: skip
    assert post(served, "/v1/b", batch, key=None) == (200, {"success": True})  # key in the body
    got = events(served, anon, 3) + events(served, f"{user}-4", 1)
    assert [(e.type, e.user_id, e.anon_id) for e in got] == [
        ("add_to_cart", None, anon),
        ("profile", user, anon),  # both ids: the engine links them (SPEC section 7)
        ("page_view", None, anon),
        ("purchase", user, None),
    ]
    assert (got[0].product_id, got[0].quantity, got[3].revenue) == ("p1", 2, 40.0)
    assert installed().read(COLLECT_REQUESTS, endpoint="track", status="200") == counted + 1


def test_an_alias_call_lands_as_the_link_of_its_previous_id(served: Served) -> None:
    user, old = f"u-{uuid.uuid4().hex[:8]}", f"a-{uuid.uuid4().hex[:8]}"
    alias = {"userId": user, "previousId": old, "messageId": f"{user}-alias"}
    assert post(served, "/v1/a", alias) == (200, {"success": True})
    got = events(served, user, 1)
    assert [(e.type, e.user_id, e.anon_id) for e in got] == [("alias", user, old)]
    assert post(served, "/v1/group", {"userId": user, "groupId": "g"}) == (200, {"success": True})


def test_a_bad_call_is_a_400_and_a_dead_letter_with_its_reason(served: Served) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    body = orjson.dumps({"event": "Product Viewed", "userId": user, "properties": {}})
    status, answer = post(served, "/v1/track", body)
    reason = "track 'Product Viewed': `view_product` events require `product_id`"
    assert (status, answer) == (
        400,
        {"success": False, "code": "invalid_request", "message": reason},
    )
    [letter] = read(served.settings.kafka_bootstrap, served.settings.dlq_topic, user.encode(), 1)
    assert letter.value == body  # the call as it came, to fix and send again
    assert letter.headers["tetik.error.reason"] == reason.encode()
    assert letter.headers["tetik.error.class"] == b"InvalidEvent"
    assert letter.headers["tetik.source.topic"] == b"http:/v1/track"
    assert events(served, user, 0) == []


def test_a_batch_with_one_bad_call_is_refused_whole(served: Served) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    batch = {
        "batch": [
            {"type": "track", "event": "Signed In", "userId": user, "messageId": f"{user}-1"},
            {"type": "track", "event": "Product Viewed", "userId": user},
        ]
    }
    status, answer = post(served, "/v1/batch", batch)
    assert status == 400
    assert answer["message"].startswith("batch[1]: track 'Product Viewed'")
    assert (
        len(read(served.settings.kafka_bootstrap, served.settings.dlq_topic, user.encode(), 1)) == 1
    )
    assert events(served, user, 0) == []  # the good call did not go either


def test_gzip_bodies_and_refusals_without_a_dead_letter(served: Served) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    call = {"event": "Signed Up", "userId": user, "messageId": f"{user}-1"}
    zipped = gzip.compress(orjson.dumps(call))
    assert post(served, "/v1/t", zipped, headers={"Content-Encoding": "gzip"})[0] == 200
    assert [e.type for e in events(served, user, 1)] == ["signup"]
    assert post(served, "/v1/track", call, key="stolen")[1]["code"] == "unauthorized"
    assert post(served, "/v1/track", call, key=None)[0] == 401
    assert post(served, "/v1/nothing", call)[0] == 404
    assert post(served, "/v1/track", b"x" * (600 * 1024))[0] == 413
    assert (
        read(served.settings.kafka_bootstrap, served.settings.dlq_topic, user.encode(), 1, 1) == []
    )


def test_a_browsers_cors_preflight(served: Served) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
    try:
        conn.request("OPTIONS", "/v1/t", headers={"Origin": "https://shop.example"})
        response = conn.getresponse()
        response.read()
    finally:
        conn.close()
    assert response.status == 204
    assert response.getheader("access-control-allow-origin") == "*"
    assert "POST" in (response.getheader("access-control-allow-methods") or "")


def test_the_segment_sdk(served: Served) -> None:
    from segment.analytics import Client

    errors: list[Any] = []

    def on_error(error: Any, _batch: Any) -> None:
        errors.append(error)

    client = Client(KEY, host=served.url, on_error=on_error, upload_interval=0.05)
    user = f"u-{uuid.uuid4().hex[:8]}"
    client.track(user, "Product Viewed", {"product_id": "p9", "price": 12.5})
    client.identify(user, {"firstName": "Ada"}, anonymous_id=f"anon-{user}")
    client.page(user, "Docs", "Install", {"url": "https://shop.example/i"})
    client.flush()
    client.shutdown()
    assert errors == []
    got = sorted(events(served, user, 3), key=lambda e: e.type)
    assert [e.type for e in got] == ["page_view", "profile", "view_product"]
    assert got[0].props == {"url": "https://shop.example/i", "name": "Install", "category": "Docs"}
    assert (got[1].attributes, got[1].anon_id) == ({"first_name": "Ada"}, f"anon-{user}")
    assert (got[2].product_id, got[2].price) == ("p9", 12.5)


def test_the_rudderstack_sdk_which_gzips(served: Served) -> None:
    from rudderstack.analytics import Client

    errors: list[Any] = []

    def on_error(error: Any, _batch: Any) -> None:
        errors.append(error)

    client = Client(KEY, host=served.url, on_error=on_error, upload_interval=0.05)
    user = f"u-{uuid.uuid4().hex[:8]}"
    client.track(user, "Order Completed", {"order_id": "o7", "total": 99.0})
    client.identify(user, {"email": "ada@example.com"})
    client.page(user, name="Home")
    client.flush()
    client.shutdown()
    assert errors == []
    got = sorted(events(served, user, 3), key=lambda e: e.type)
    assert [e.type for e in got] == ["page_view", "profile", "purchase"]
    assert (got[2].order_id, got[2].revenue) == ("o7", 99.0)


def test_a_broker_that_never_acknowledges_is_a_503() -> None:
    producer = AckedProducer({"bootstrap.servers": "127.0.0.1:1", "message.timeout.ms": 300})
    app = Collector([KEY], producer, "events", "events.dlq")
    call = orjson.dumps({"event": "Signed In", "userId": "u1"})
    auth = b"Basic " + base64.b64encode(f"{KEY}:".encode())
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/track",
        "headers": [(b"authorization", auth)],
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": call, "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    producer.start()
    try:
        asyncio.run(app(scope, receive, send))
    finally:
        producer.close(0)
    assert sent[0]["status"] == 503
    assert orjson.loads(sent[1]["body"])["code"] == "unavailable"


def test_a_client_that_hangs_up_mid_body_is_neither_answered_nor_dead_lettered() -> None:
    producer = AckedProducer({"bootstrap.servers": "127.0.0.1:1", "log_level": 0})  # unused
    app = Collector([KEY], producer, "events", "events.dlq")
    auth = b"Basic " + base64.b64encode(f"{KEY}:".encode())
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/batch",
        "headers": [(b"authorization", auth)],
    }
    messages = iter(
        [
            {"type": "http.request", "body": b'{"batch": [{"type": "tr', "more_body": True},
            {"type": "http.disconnect"},
        ]
    )
    sent: list[Any] = []

    async def receive() -> Any:
        return next(messages)

    async def send(message: Any) -> None:
        sent.append(message)

    before = installed().read(COLLECT_REQUESTS, endpoint="batch", status="499")
    asyncio.run(app(scope, receive, send))
    assert sent == []
    assert (app.counts.refused, app.counts.events) == (0, 0)
    assert installed().read(COLLECT_REQUESTS, endpoint="batch", status="499") == before + 1


def test_collect_refuses_to_start_without_write_keys(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("TETIK_COLLECT_WRITE_KEYS", raising=False)
    assert main(["collect", "--port", "0"]) == 2
    assert "set TETIK_COLLECT_WRITE_KEYS" in capsys.readouterr().err


def test_collect_says_when_its_port_is_taken(
    served: Served, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TETIK_COLLECT_WRITE_KEYS", KEY)
    assert main(["collect", "--host", "127.0.0.1", "--port", str(served.port)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert f"cannot listen on 127.0.0.1:{served.port}" in line


def test_the_command_serves_metrics_and_stops_cleanly_on_sigterm(
    served: Served, redis_url: str
) -> None:
    port, metrics_port = free_port(), free_port()
    topics = served.settings
    env = {
        **os.environ,
        "TETIK_KAFKA_BOOTSTRAP": topics.kafka_bootstrap,
        "TETIK_REDIS_URL": redis_url,  # given, so no embedded one is started
        "TETIK_EVENTS_TOPIC": topics.events_topic,
        "TETIK_DLQ_TOPIC": topics.dlq_topic,
        "TETIK_ACTIONS_TOPIC": topics.actions_topic,
        "TETIK_ACTIONS_DLQ_TOPIC": topics.actions_dlq_topic,
        "TETIK_COLLECT_WRITE_KEYS": KEY,
    }
    command = ["collect", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--metrics-port", str(metrics_port)]
    child = subprocess.Popen(
        [sys.executable, "-m", "cli.main", *command], env=env, stderr=subprocess.PIPE
    )
    try:
        here = Served(f"http://127.0.0.1:{port}", port, served.settings, served.app)
        assert _get(port, "/healthz", wait_s=20) == (200, b"ok")
        user = f"u-{uuid.uuid4().hex[:8]}"
        call = {"event": "Signed In", "userId": user, "messageId": f"{user}-1"}
        assert post(here, "/v1/track", call)[0] == 200
        assert _get(metrics_port, "/readyz", wait_s=10)[0] == 200
        status, text = _get(metrics_port, "/metrics")
        assert status == 200
        assert b'tetik_collect_requests_total{endpoint="track",status="200"} 1.0' in text
    finally:
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=30)
    assert child.returncode == 0, err.decode()
    assert "collect: 1 events taken from 1 requests" in err.decode()


def _get(port: int, path: str, wait_s: float = 0) -> tuple[int, bytes]:
    deadline = time.monotonic() + wait_s
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            answer = response.status, response.read().strip()
            if answer[0] == 200 or time.monotonic() > deadline:
                return answer
        except OSError:
            if time.monotonic() > deadline:
                raise
        finally:
            conn.close()
        time.sleep(0.1)
