"""Bounded parallel sends and the circuit breaker (channels/pool.py, channels/breaker.py)."""

from __future__ import annotations

import time

from channels.base import Delivery, RetryPolicy
from channels.breaker import BreakerPolicy, CircuitBreaker
from channels.config import Resources, Router, parse_config
from channels.pool import ChannelPool
from channels.webhook import WebhookChannel
from tests.channels.support import FAST_RETRY, HookServer, closed_port, make_action


def outcome(kind: str, detail: str = "") -> Delivery:
    return Delivery(action_id="a", channel="sms", adapter="webhook", outcome=kind, detail=detail)  # type: ignore[arg-type]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_consecutive_failures_open_the_circuit_for_the_cooldown() -> None:
    clock = Clock()
    breaker = CircuitBreaker(BreakerPolicy(failures=3, cooldown_s=30), clock)
    for kind in ("failed", "failed", "delivered", "failed", "failed"):
        assert breaker.admit() is None
        breaker.record(outcome(kind, "refused"))
    assert not breaker.is_open  # a delivery in between reset the count
    breaker.record(outcome("failed", "connection refused to sms.example:443"))
    assert breaker.admit() == "connection refused to sms.example:443 (circuit open 30s)"
    clock.now += 29.9
    assert breaker.admit() is not None


def test_after_the_cooldown_one_trial_decides() -> None:
    clock = Clock()
    breaker = CircuitBreaker(BreakerPolicy(failures=1, cooldown_s=5), clock)
    breaker.record(outcome("failed", "down"))
    clock.now += 5
    assert breaker.admit() is None  # the trial
    assert breaker.admit() is not None  # the others still fail fast
    breaker.record(outcome("failed", "still down"))
    clock.now += 4
    assert breaker.admit() == "still down (circuit open 5s)"  # a fresh cool-down
    clock.now += 1
    assert breaker.admit() is None
    breaker.record(outcome("bounced", "HTTP 404"))
    assert breaker.admit() is None
    assert not breaker.is_open


def test_zero_failures_turns_the_breaker_off() -> None:
    breaker = CircuitBreaker(BreakerPolicy(failures=0))
    for _ in range(50):
        breaker.record(outcome("failed", "down"))
    assert breaker.admit() is None


def test_no_more_than_concurrency_sends_are_in_flight(hook: HookServer) -> None:
    hook.delay_s = 0.05
    made: list[WebhookChannel] = []

    def make() -> WebhookChannel:
        made.append(WebhookChannel(hook.url(), retry=FAST_RETRY))
        return made[-1]

    pool = ChannelPool(make, concurrency=4)
    actions = [make_action(n, channel="sms") for n in range(24)]
    start = time.monotonic()
    futures = [pool.submit(lambda a=a: pool.send(a)) for a in actions]  # type: ignore[misc]
    results = [f.result() for f in futures]
    took = time.monotonic() - start
    pool.close()
    assert {r.outcome for r in results} == {"delivered"}
    assert hook.peak == 4  # the bound, reached
    assert len(made) == 4  # one adapter per thread, each used by one thread at a time
    assert took < 24 * 0.05 / 2  # parallel: far less than one after another


def test_the_config_sets_each_routes_concurrency_and_breaker(hook: HookServer) -> None:
    config = parse_config(
        {
            "sms": {"adapter": "webhook", "url": hook.url(), "concurrency": 3},
            "email": {"adapter": "smtp", "sender": "s@example.com", "circuit_failures": 0},
            "default": {"adapter": "jsonl", "circuit_cooldown": "2m"},
        }
    )
    router = Router(config, Resources(recipient=lambda _u: None))
    sms, email, push = (router.pool_for(c) for c in ("sms", "email", "push"))
    assert sms is not None
    assert email is not None
    assert push is not None
    assert (sms.concurrency, email.concurrency, push.concurrency) == (3, 4, 1)
    assert sms.breaker.policy == BreakerPolicy(5, 30.0)
    assert email.breaker.policy.failures == 0
    assert push.breaker.policy.cooldown_s == 120.0
    router.close()


def test_an_open_circuit_fails_the_rest_at_once_without_a_request() -> None:
    url = f"http://127.0.0.1:{closed_port()}/sms"
    slow = RetryPolicy(retries=3, base=0.05, cap=0.1)
    pool = ChannelPool(
        lambda: WebhookChannel(url, retry=slow), 2, CircuitBreaker(BreakerPolicy(4, 30))
    )
    start = time.monotonic()
    futures = [
        pool.submit(lambda n=n: pool.send(make_action(n, channel="sms"))) for n in range(300)
    ]  # type: ignore[misc]
    results = [f.result() for f in futures]
    pool.close()
    assert time.monotonic() - start < 3
    assert {r.outcome for r in results} == {"failed"}
    refused = [r for r in results if r.attempts == 0]
    assert len(refused) >= 290
    assert all("Connection refused" in r.detail for r in results)
    assert refused[0].detail.endswith("(circuit open 30s)")
