"""``tetik deliver`` under failure: a dead webhook fails fast, every action dead-lettered.

Real broker and Redis; the webhook's port has nothing listening. Without
the circuit breaker, 494 actions with two retries each took about 4 minutes
one after another; with it, the route opens after a few failures and the
rest are dead-lettered at once with the reason.
"""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Message

from channels.base import Delivery
from channels.config import parse_config
from engine.actions import to_json
from flows.jobs.deliver import _committable, _next_offsets, _reason, run_deliver
from flows.kafka.producer import produce_records
from flows.kafka.topics import ensure_topics
from flows.settings import Settings
from tests.channels.support import closed_port, make_action
from tests.flows.test_deliver import read_topic

pytestmark = pytest.mark.integration

ACTIONS = 494


def test_a_dead_webhook_fails_fast_and_everything_is_dead_lettered(
    redis_url: str, kafka_bootstrap: str, capsys: pytest.CaptureFixture[str]
) -> None:
    unique = f"t{uuid.uuid4().hex[:12]}"
    settings = Settings(
        redis_url,
        kafka_bootstrap,
        events_topic=f"events-{unique}",
        actions_topic=f"actions-{unique}",
        actions_dlq_topic=f"actions.dlq-{unique}",
        prefix=unique,
    )
    ensure_topics(kafka_bootstrap, {settings.actions_topic: 1, settings.actions_dlq_topic: 1})
    actions = [make_action(n, user_id=f"u{n % 97}", channel="sms") for n in range(ACTIONS)]
    produce_records(
        kafka_bootstrap, settings.actions_topic, [(a.user_id.encode(), to_json(a)) for a in actions]
    )
    url = f"http://127.0.0.1:{closed_port()}/sms"
    config = parse_config({"sms": {"adapter": "webhook", "url": url, "backoff": "50ms"}})

    start = time.monotonic()
    tally = run_deliver(
        settings, config=config, group=f"g-{unique}", max_actions=ACTIONS, idle_exit=10
    )
    took = time.monotonic() - start

    assert tally.total("failed") == ACTIONS
    assert took < 10  # one after another, with retries: minutes
    dead = read_topic(kafka_bootstrap, settings.actions_dlq_topic, ACTIONS)
    assert len(dead) == ACTIONS
    reasons = [dict(m.headers() or [])["tetik.error.reason"].decode() for m in dead]
    assert all("Connection refused" in r for r in reasons)
    assert sum("(circuit open 30s)" in r for r in reasons) >= ACTIONS - 40
    lines = [line for line in capsys.readouterr().err.splitlines() if "delivery failed" in line]
    assert lines
    assert len(lines) <= 3  # one per channel per batch, never one per action
    assert f"delivery failed: sms x{ACTIONS}: POST {url}: ConnectionRefusedError" in lines[0]
    assert "(circuit open 30s: " in lines[0]
    assert lines[0].endswith("not tried); dead-lettered")


def test_circuit_refusals_have_their_own_metric_reason() -> None:
    def failed(detail: str, attempts: int) -> Delivery:
        return Delivery(
            action_id="a",
            channel="sms",
            adapter="webhook",
            outcome="failed",
            detail=detail,
            attempts=attempts,
        )

    assert _reason(failed("refused (circuit open 30s)", 0)) == "circuit_open"
    assert _reason(failed("HTTP 503", 3)) == "send_failed"


def test_on_stop_commits_end_at_each_partitions_first_unsent_record() -> None:
    def record(partition: int, offset: int) -> Message:
        return Message(topic="actions", partition=partition, offset=offset, value=b"{}")

    batch = [record(0, 10), record(1, 20), record(0, 11), record(1, 21), record(0, 12)]
    unsent = {id(batch[2])}  # partition 0's second record was not sent when stop came
    kept = _committable(batch, unsent)
    assert [(m.partition(), m.offset()) for m in kept] == [(0, 10), (1, 20), (1, 21)]
    offsets = {(tp.partition, tp.offset) for tp in _next_offsets(kept)}
    assert offsets == {(0, 11), (1, 22)}  # 11 and 12 are read again
