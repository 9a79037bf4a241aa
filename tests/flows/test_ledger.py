"""The action ledger: claim, confirm, and settling what a crash left pending."""

from __future__ import annotations

import pytest
import redis
from confluent_kafka import Producer

from engine.actions import Action, to_json
from engine.rules.loader import load_rules
from flows.kafka.topics import ensure_topics
from flows.ledger import (
    DAY_MS,
    MIN_RETENTION_MS,
    ActionEmitter,
    Ledger,
    resolve_pending,
    retention_ms,
)
from tests.flows.live import read_topic

pytestmark = pytest.mark.integration


def action(n: int) -> Action:
    return Action(
        action_id=f"id{n}", at=n, user_id=f"u{n}", journey="j", step="0", channel="email",
        template=None, status="sent", rules_version="v",
    )  # fmt: skip


@pytest.fixture
def ledger(redis_client: redis.Redis, unique: str) -> Ledger:
    return Ledger(redis_client, unique, retention=60_000)


def test_an_action_is_claimed_once(ledger: Ledger) -> None:
    assert ledger.claim([action(1), action(2)]) == [action(1), action(2)]
    assert ledger.claim([action(2), action(3)]) == [action(3)]
    assert ledger.pending() == {"id1", "id2", "id3"}
    ttl = int(ledger.client.pttl(ledger.key("id1")))  # type: ignore[arg-type]
    assert 0 < ttl <= 60_000


def test_confirm_and_release(ledger: Ledger) -> None:
    ledger.claim([action(1), action(2)])
    ledger.confirm(["id1"], {0: 41})
    ledger.release(["id2"])
    assert ledger.pending() == set()
    assert ledger.client.get(ledger.key("id1")) == b"d"
    assert ledger.claim([action(1), action(2)]) == [action(2)]  # released: emitted again
    assert ledger.acked() == {0: 41}


def test_emitted_actions_reach_kafka_once(
    ledger: Ledger, kafka_bootstrap: str, unique: str
) -> None:
    topic = f"{unique}.actions"
    ensure_topics(kafka_bootstrap, {topic: 1})
    emitter = ActionEmitter(ledger, Producer({"bootstrap.servers": kafka_bootstrap}), topic)
    assert emitter.emit([action(1), action(2)]) == 2
    assert emitter.emit([action(2), action(3)]) == 1
    assert [r["action_id"] for r in read_topic(kafka_bootstrap, topic)] == ["id1", "id2", "id3"]
    assert ledger.pending() == set()


def test_pending_claims_are_settled_by_reading_the_topic(
    ledger: Ledger, kafka_bootstrap: str, unique: str
) -> None:
    """A crash after produce (id1 is in Kafka) and one before it (id2 is not)."""
    topic = f"{unique}.actions"
    ensure_topics(kafka_bootstrap, {topic: 1})
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(topic, to_json(action(1)))
    producer.flush()
    ledger.claim([action(1), action(2)])
    assert resolve_pending(ledger, kafka_bootstrap, topic, idle_s=0.5) == 2
    assert ledger.pending() == set()
    assert ledger.claim([action(1), action(2)]) == [action(2)]


def test_retention_outlasts_the_longest_journey() -> None:
    rules = load_rules(
        "version: 1\njourneys:\n  - id: j\n    trigger: login\n    steps:\n"
        '      - wait: 40d\n      - if: "true"\n        then: [{wait: 20d}]\n        else: []\n',
        "r.yaml",
    )
    assert retention_ms(rules) == 61 * DAY_MS
    assert retention_ms(load_rules("version: 1\njourneys: []\n", "r.yaml")) == MIN_RETENTION_MS


def test_a_claim_retried_with_its_token_keeps_its_claims(ledger: Ledger) -> None:
    assert ledger.claim([action(1), action(2)], token="batch-1") == [action(1), action(2)]
    # The reply was lost and the same batch claims again: it still owns them.
    assert ledger.claim([action(1), action(2)], token="batch-1") == [action(1), action(2)]
    assert ledger.claim([action(1), action(2)], token="batch-2") == []
    assert ledger.pending() == {"id1", "id2"}


def test_retention_stays_within_what_redis_accepts(ledger: Ledger) -> None:
    from engine.rules.loader import load_rules
    from flows.ledger import MAX_RETENTION_MS, retention_ms

    rules = load_rules(
        "version: 1\njourneys:\n  - id: long\n    trigger: signup\n    steps:\n"
        "      - wait: 3650d\n      - send: email\n",
        "rules.yaml",
    )
    assert retention_ms(rules) <= MAX_RETENTION_MS
    longest = Ledger(ledger.client, ledger.prefix, MAX_RETENTION_MS)
    assert longest.claim([action(9)]) == [action(9)]  # Redis takes the expiry
    assert 0 < ledger.client.pttl(longest.key("id9")) <= MAX_RETENTION_MS
