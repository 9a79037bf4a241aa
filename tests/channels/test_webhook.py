"""The webhook adapter against a real HTTP server: retries, backoff, bounces, timeouts."""

from __future__ import annotations

import time

import pytest

from channels.base import Attempt, RetryPolicy, with_retries
from channels.webhook import WebhookChannel
from tests.channels.support import FAST_RETRY, HookServer, make_action


def test_posts_the_action_json_with_idempotency_key(hook: HookServer) -> None:
    action = make_action(1, channel="sms", content={"text": "Sepetin seni bekliyor"})
    result = WebhookChannel(hook.url("/sms"), retry=FAST_RETRY).send(action)
    assert result.outcome == "delivered"
    assert "HTTP 200" in result.detail
    [request] = hook.requests
    assert request.path == "/sms"
    assert request.headers["Idempotency-Key"] == action.action_id
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["X-Tetik-Channel"] == "sms"
    doc = request.json()
    assert doc["action_id"] == action.action_id
    assert doc["content"] == {"text": "Sepetin seni bekliyor"}


def test_503s_are_retried_with_backoff_then_delivered_under_one_key(hook: HookServer) -> None:
    hook.script = [503, 503, 503]
    policy = RetryPolicy(retries=3, base=0.02, cap=1.0)
    result = WebhookChannel(hook.url(), retry=policy).send(make_action(1))
    assert (result.outcome, result.attempts) == ("delivered", 4)
    assert {r.headers["Idempotency-Key"] for r in hook.requests} == {"act-0001"}
    gaps = [b.at - a.at for a, b in zip(hook.requests, hook.requests[1:], strict=False)]
    # Equal jitter: wait n is at least half of base * 2**n.
    floors = [policy.base * 2**n / 2 for n in range(3)]
    assert all(gap >= floor * 0.9 for gap, floor in zip(gaps, floors, strict=True)), gaps
    assert gaps[2] > gaps[0]


def test_retries_run_out_as_failed(hook: HookServer) -> None:
    hook.default = 503
    result = WebhookChannel(hook.url(), retry=FAST_RETRY).send(make_action(1))
    assert (result.outcome, result.attempts) == ("failed", FAST_RETRY.retries + 1)
    assert "HTTP 503" in result.detail
    assert len(hook.requests) == FAST_RETRY.retries + 1


def test_429_is_retried_and_retry_after_is_honoured(hook: HookServer) -> None:
    hook.script = [429]
    hook.retry_after = "0.2"
    result = WebhookChannel(hook.url(), retry=RetryPolicy(2, 0.005, 1.0)).send(make_action(1))
    assert (result.outcome, result.attempts) == ("delivered", 2)
    assert hook.requests[1].at - hook.requests[0].at >= 0.19


@pytest.mark.parametrize("status", [400, 404, 410, 422, 301])
def test_other_4xx_and_3xx_bounce_at_once(hook: HookServer, status: int) -> None:
    hook.default = status
    result = WebhookChannel(hook.url(), retry=FAST_RETRY).send(make_action(1))
    assert (result.outcome, result.attempts) == ("bounced", 1)
    assert f"HTTP {status}" in result.detail
    assert len(hook.requests) == 1


def test_a_hanging_receiver_times_out_and_fails(hook: HookServer) -> None:
    hook.default = "hang"
    hook.hang_s = 0.6
    channel = WebhookChannel(hook.url(), timeout=0.15, retry=RetryPolicy(1, 0.005, 0.01))
    start = time.monotonic()
    result = channel.send(make_action(1))
    assert (result.outcome, result.attempts) == ("failed", 2)
    assert "timed out" in result.detail
    assert time.monotonic() - start < 1.0


def test_channel_placeholder_in_the_url(hook: HookServer) -> None:
    channel = WebhookChannel(hook.url("/send/{channel}"), retry=FAST_RETRY)
    channel.send(make_action(1, channel="push"))
    channel.send(make_action(2, channel="whatsapp"))
    assert [r.path for r in hook.requests] == ["/send/push", "/send/whatsapp"]


def test_a_bad_url_is_refused_up_front() -> None:
    with pytest.raises(ValueError, match="not http"):
        WebhookChannel("ftp://example.com/x")


def test_backoff_delays_grow_within_their_bounds() -> None:
    policy = RetryPolicy(retries=5, base=0.1, cap=0.5)
    assert [policy.delay(n, lambda: 0.0) for n in range(4)] == [0.05, 0.1, 0.2, 0.25]
    assert [policy.delay(n, lambda: 1.0) for n in range(4)] == [0.1, 0.2, 0.4, 0.5]


def test_a_stop_event_cuts_the_backoff_short() -> None:
    import threading

    stop = threading.Event()
    stop.set()
    calls: list[int] = []

    def attempt() -> Attempt:
        calls.append(1)
        return Attempt("retry", "down")

    start = time.monotonic()
    result, tries = with_retries(attempt, RetryPolicy(5, 10.0, 10.0), stop)
    assert (result.verdict, tries, len(calls)) == ("retry", 1, 1)
    assert time.monotonic() - start < 0.5
