"""The contract every channel adapter keeps (channels/base.py), run against each one.

Like arroyo's StreamsTestMixin: one suite, and per adapter a harness that
builds it against a real target and reads back what the target received.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from redis.backoff import NoBackoff
from redis.retry import Retry

from channels.base import Channel
from channels.jsonl import JsonlChannel
from channels.kafka import KafkaChannel
from channels.onsite import OnsiteChannel, read_inbox
from channels.smtp import SmtpChannel
from channels.webhook import WebhookChannel
from flows.kafka.topics import ensure_topics
from flows.retry import connect
from flows.stores.keys import Keys
from tests.channels.support import (
    FAST_RETRY,
    HookServer,
    MailCatcher,
    TlsFiles,
    closed_port,
    make_action,
    serve_hooks,
    serve_mail,
)


@dataclass(frozen=True)
class Received:
    """One delivery as the target shows it."""

    action_id: str
    content: dict[str, Any]


@dataclass
class Harness:
    """An adapter on a live target; ``received(n)`` reads back, waiting for ``n``."""

    channel: Channel
    received: Callable[[int], list[Received]]
    idempotent: bool
    down: Callable[[], Channel]


def _jsonl(tmp_path: Path) -> Iterator[Harness]:
    path = tmp_path / "actions.jsonl"

    def received(_n: int) -> list[Received]:
        lines = path.read_bytes().splitlines() if path.exists() else []
        docs = [orjson.loads(line) for line in lines]
        return [Received(doc["action_id"], doc["content"]) for doc in docs]

    broken = str(tmp_path / "no-such-dir" / "actions.jsonl")
    yield Harness(JsonlChannel(str(path)), received, False, lambda: JsonlChannel(broken))


def _read_topic(bootstrap: str, topic: str, expect: int) -> list[Received]:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "contract", "fetch.wait.max.ms": 50}
    )
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    found: list[Received] = []
    deadline = time.monotonic() + 10
    grace = None  # after `expect` records, wait a little longer for extras
    while time.monotonic() < (grace or deadline):
        message = consumer.poll(0.1)
        if message is not None and message.error() is None:
            headers = dict(message.headers() or [])
            doc = orjson.loads(message.value())
            found.append(Received(headers["tetik.action_id"].decode(), doc["content"]))
        if grace is None and len(found) >= expect:
            grace = time.monotonic() + 0.3
    consumer.close()
    return found


def _kafka(kafka_bootstrap: str, unique: str) -> Iterator[Harness]:
    topic = f"out-{unique}"
    ensure_topics(kafka_bootstrap, {topic: 1})
    channel = KafkaChannel(kafka_bootstrap, topic=topic, timeout=5.0)
    dead = f"127.0.0.1:{closed_port()}"

    def received(n: int) -> list[Received]:
        return _read_topic(kafka_bootstrap, topic, n)

    yield Harness(channel, received, False, lambda: KafkaChannel(dead, topic=topic, timeout=0.5))
    channel.close()


def _webhook() -> Iterator[Harness]:
    for hook in serve_hooks(HookServer()):

        def received(_n: int, hook: HookServer = hook) -> list[Received]:
            return [Received(k, r.json()["content"]) for k, r in hook.accepted.items()]

        def down() -> WebhookChannel:
            dead = f"http://127.0.0.1:{closed_port()}/hook"
            return WebhookChannel(dead, timeout=0.5, retry=FAST_RETRY)

        channel = WebhookChannel(hook.url(), timeout=2.0, retry=FAST_RETRY)
        yield Harness(channel, received, True, down)


def _smtp(tls: TlsFiles) -> Iterator[Harness]:
    # The secure default: the server requires STARTTLS, the adapter trusts its CA.
    for catcher, port in serve_mail(tls_context=tls.server_context(), require_starttls=True):

        def received(_n: int, catcher: MailCatcher = catcher) -> list[Received]:
            return [
                Received(
                    m.message["X-Tetik-Action-Id"],
                    {"subject": m.message["Subject"], "body": m.text},
                )
                for m in catcher.mails
            ]

        def smtp(port: int) -> SmtpChannel:
            return SmtpChannel(
                "127.0.0.1",
                port,
                "shop@example.com",
                lambda u: f"{u}@example.com",
                timeout=2.0,
                retry=FAST_RETRY,
                ca_file=str(tls.cert),
            )

        yield Harness(smtp(port), received, False, lambda: smtp(closed_port()))


def _onsite(redis_url: str, unique: str) -> Iterator[Harness]:
    client = connect(redis_url)
    keys = Keys(unique)

    def received(_n: int) -> list[Received]:
        users = {keys.inbox_user(k) for k in client.scan_iter(match=keys.inboxes)}
        messages = [m for user in sorted(users) for m in read_inbox(client, keys, user)]
        return [Received(m["action_id"], m["content"]) for m in messages]

    def down() -> OnsiteChannel:
        # No client-side retries: the adapter's own policy is what is under test.
        dead = redis.Redis(
            port=closed_port(), socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)
        )
        return OnsiteChannel(dead, keys, retry=FAST_RETRY)

    yield Harness(OnsiteChannel(client, keys, retry=FAST_RETRY), received, True, down)
    client.close()


ADAPTERS = ["jsonl", "kafka", "webhook", "smtp", "onsite"]


@pytest.fixture(params=ADAPTERS)
def harness(request: pytest.FixtureRequest, tmp_path: Path, unique: str) -> Iterator[Harness]:
    kind = request.param
    if kind == "jsonl":
        made = _jsonl(tmp_path)
    elif kind == "kafka":
        made = _kafka(request.getfixturevalue("kafka_bootstrap"), unique)
    elif kind == "webhook":
        made = _webhook()
    elif kind == "smtp":
        made = _smtp(request.getfixturevalue("tls_files"))
    else:
        made = _onsite(request.getfixturevalue("redis_url"), unique)
    harness = next(made)
    yield harness
    harness.channel.close()
    for _ in made:  # run the generator's clean-up
        pass


def test_a_sent_action_arrives_once_with_its_id_and_content(harness: Harness) -> None:
    action = make_action(1)
    result = harness.channel.send(action)
    assert result.outcome == "delivered", result.detail
    assert (result.action_id, result.channel) == (action.action_id, action.channel)
    assert result.adapter == harness.channel.name
    assert result.attempts == 1
    got = harness.received(1)
    assert [r.action_id for r in got] == [action.action_id]
    assert action.content is not None
    assert got[0].content["subject"] == action.content["subject"]
    assert got[0].content["body"] == action.content["body"]


def test_sending_the_same_action_twice_is_safe(harness: Harness) -> None:
    action = make_action(2)
    first, second = harness.channel.send(action), harness.channel.send(action)
    assert first.outcome == second.outcome == "delivered"
    got = harness.received(1 if harness.idempotent else 2)
    assert {r.action_id for r in got} == {action.action_id}
    assert len(got) == (1 if harness.idempotent else 2)


def test_distinct_actions_stay_distinct(harness: Harness) -> None:
    actions = [make_action(n) for n in (3, 4, 5)]
    assert all(harness.channel.send(a).outcome == "delivered" for a in actions)
    got = harness.received(3)
    assert sorted(r.action_id for r in got) == [a.action_id for a in actions]


def test_a_dead_target_gives_an_outcome_not_an_exception(harness: Harness) -> None:
    channel = harness.down()
    try:
        result = channel.send(make_action(6))
    finally:
        channel.close()
    assert result.outcome in ("failed", "bounced")
    assert result.detail
    assert result.attempts >= 1
