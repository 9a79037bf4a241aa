"""``tetik deliver`` under failure: a dead webhook fails fast, every action dead-lettered.

Real broker and Redis; the webhook's port has nothing listening. Without
the circuit breaker, 494 actions with two retries each took about 4 minutes
one after another; with it, the route opens after a few failures and the
rest are dead-lettered at once with the reason.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid

import pytest
import redis
from confluent_kafka import Message, Producer

from channels.base import Delivery
from channels.config import Resources, Router, parse_config
from engine.actions import to_json
from flows.jobs.deliver import (
    Deliverer,
    Topics,
    _committable,
    _next_offsets,
    _reason,
    _Send,
    run_deliver,
)
from flows.kafka.producer import produce_records
from flows.kafka.topics import ensure_topics
from flows.settings import Settings
from flows.stores.deliveries import DeliveryLedger
from tests.channels.support import HookServer, closed_port, make_action, serve_hooks
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


def test_sends_run_in_parallel_yet_each_users_actions_keep_their_order(redis_url: str) -> None:
    for hook in serve_hooks(HookServer(delay_s=0.02)):
        config = parse_config({"sms": {"adapter": "webhook", "url": hook.url(), "concurrency": 4}})
        router = Router(config, Resources())
        prefix = f"t{uuid.uuid4().hex[:12]}"
        ledger = DeliveryLedger(redis.Redis.from_url(redis_url), prefix)
        job = Deliverer(router, ledger, Producer({}), Topics("a", "d", "e"))
        actions = [make_action(n, user_id=f"u{n % 2}", channel="sms") for n in range(16)]
        sends = [_Send(Message(topic="a", partition=0, offset=n), a) for n, a in enumerate(actions)]
        job._send_all(sends, threading.Event())
        router.close()
        assert hook.peak == 2  # two users: two lanes, though four threads could run
        for user in {a.user_id for a in actions}:
            mine = [r for r in hook.requests if r.json()["user_id"] == user]
            assert [r.json()["action_id"] for r in mine] == [
                a.action_id for a in actions if a.user_id == user
            ]
            gaps = [b.at - a.at for a, b in itertools.pairwise(mine)]
            assert min(gaps) >= 0.019  # each waited for the one before it
        assert all(ledger.seen(a.action_id) == "delivered" for a in actions)
