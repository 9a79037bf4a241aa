"""The webhook adapter against a real HTTP server: retries, backoff, bounces, timeouts."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import re
import time
from email.utils import formatdate

import pytest

from channels.base import Attempt, RetryPolicy, with_retries
from channels.webhook import (
    SIGNATURE_HEADER,
    SignatureError,
    WebhookChannel,
    retry_after,
    signature_header,
    verify_signature,
)
from tests.channels.support import FAST_RETRY, HookServer, Request, make_action


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


# -- signatures -----------------------------------------------------------------

SECRET = "whsec_test"


def signed_request(hook: HookServer, **options: object) -> Request:
    channel = WebhookChannel(hook.url(), secret=SECRET, retry=FAST_RETRY, **options)  # type: ignore[arg-type]
    assert channel.send(make_action(1, channel="sms")).outcome == "delivered"
    return hook.requests[-1]


def test_requests_are_signed_and_the_helper_verifies_them(hook: HookServer) -> None:
    request = signed_request(hook)
    header = request.headers[SIGNATURE_HEADER]
    assert re.fullmatch(r"t=\d+,v1=[0-9a-f]{64}", header)
    at = int(header.split(",")[0][2:])
    assert abs(at - time.time()) < 5
    expected = hmac.new(SECRET.encode(), f"{at}.".encode() + request.body, hashlib.sha256)
    assert header.endswith(expected.hexdigest())  # the documented recipe, by hand
    verify_signature(SECRET, header, request.body)
    verify_signature(SECRET.encode(), header, request.body, tolerance_s=10)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"secret": "whsec_other"}, "no v1 signature in Tetik-Signature matches the body"),
        ({"body": b'{"action_id":"forged"}'}, "no v1 signature in Tetik-Signature matches"),
        ({"now": 400}, "more than the 300s tolerance: a replay"),  # seconds from now
        ({"now": -500}, "more than the 300s tolerance"),
        ({"header": None}, "no Tetik-Signature header"),
        ({"header": "v1=abc"}, "is not of the form t=<unix seconds>,v1=<hex>"),
        ({"header": "t=12,v0=abc"}, "is not of the form"),
    ],
)
def test_verify_signature_refuses_with_a_reason(
    hook: HookServer, change: dict[str, object], needle: str
) -> None:
    request = signed_request(hook)
    given: dict[str, object] = {
        "secret": SECRET,
        "header": request.headers[SIGNATURE_HEADER],
        "body": request.body,
        **change,
    }
    if "now" in change:  # taken when the test runs, not when it was collected
        given["now"] = time.time() + float(change["now"])  # type: ignore[arg-type]
    with pytest.raises(SignatureError, match=re.escape(needle)):
        verify_signature(**given)  # type: ignore[arg-type]


def test_one_matching_v1_among_several_is_enough() -> None:
    body, at = b'{"a":1}', 1_700_000_000
    header = signature_header(SECRET, body, at)
    rotated = f"t={at},v1={'0' * 64},{header.split(',')[1]}"
    verify_signature(SECRET, rotated, body, now=at + 1)


def test_each_retry_is_signed_afresh(hook: HookServer) -> None:
    hook.script = [503, 503]
    ticks = iter([1_700_000_000.0, 1_700_000_007.0, 1_700_000_020.0])
    channel = WebhookChannel(hook.url(), secret=SECRET, retry=FAST_RETRY, clock=lambda: next(ticks))
    assert channel.send(make_action(1)).outcome == "delivered"
    stamps = [r.headers[SIGNATURE_HEADER].split(",")[0] for r in hook.requests]
    assert stamps == ["t=1700000000", "t=1700000007", "t=1700000020"]
    for request, at in zip(hook.requests, (0, 7, 20), strict=True):
        verify_signature(SECRET, request.headers[SIGNATURE_HEADER], request.body, now=1.7e9 + at)


def test_without_a_secret_there_is_no_signature(hook: HookServer) -> None:
    WebhookChannel(hook.url(), retry=FAST_RETRY).send(make_action(1))
    assert SIGNATURE_HEADER not in hook.requests[0].headers


# -- the url template -----------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("http://h/send/{user_id}", "has placeholder {user_id}: only {channel} is filled"),
        ("http://h/send/{}", "has placeholder {}"),
        ("http://h/send/{channel", "has a stray brace"),
        ("http://h/send/channel}", "has a stray brace"),
        ("http://{channel}.example.com/send", "puts {channel} in the host"),
        ("{channel}://h/x", "is not http(s)://host"),
    ],
)
def test_url_placeholders_other_than_channel_are_refused(url: str, needle: str) -> None:
    with pytest.raises(ValueError, match=re.escape(needle)):
        WebhookChannel(url)


def test_an_unknown_channel_is_never_put_in_the_url(hook: HookServer) -> None:
    channel = WebhookChannel(hook.url("/send/{channel}?c={channel}"), retry=FAST_RETRY)
    for name in ("../admin", "sms?x=1", "sms#", "SMS"):
        result = channel.send(make_action(1, channel=name))
        assert (result.outcome, result.attempts) == ("bounced", 1)
        assert result.detail.startswith(f"channel {name!r} is not one of email, sms, push")
    assert hook.requests == []
    assert channel.send(make_action(2, channel="sms")).outcome == "delivered"
    assert [r.path for r in hook.requests] == ["/send/sms?c=sms"]


# -- Retry-After ---------------------------------------------------------------


def test_retry_after_as_an_http_date_on_503_is_honoured(hook: HookServer) -> None:
    at = int(time.time()) + 1000
    hook.script = [503]
    hook.retry_after = formatdate(at, usegmt=True)
    clock = lambda: at - 0.3  # noqa: E731  # the date is 0.3 s away by the adapter's clock
    channel = WebhookChannel(hook.url(), retry=RetryPolicy(2, 0.005, 1.0), clock=clock)
    result = channel.send(make_action(1))
    assert (result.outcome, result.attempts) == ("delivered", 2)
    assert 0.29 <= hook.requests[1].at - hook.requests[0].at < 0.9


def test_retry_after_is_bounded_by_the_backoff_cap(hook: HookServer) -> None:
    hook.script = [429, 503]
    hook.retry_after = "3600"
    result = WebhookChannel(hook.url(), retry=RetryPolicy(2, 0.005, 0.1)).send(make_action(1))
    assert (result.outcome, result.attempts) == ("delivered", 3)
    gaps = [b.at - a.at for a, b in itertools.pairwise(hook.requests)]
    assert all(0.09 <= gap < 0.6 for gap in gaps)  # the cap, not an hour


@pytest.mark.parametrize(
    ("header", "expected"),
    [("2", 2.0), ("0.5", 0.5), ("-3", 0.0), ("soon", 0.0), ("", 0.0), (None, 0.0)],
)
def test_retry_after_values(header: str | None, expected: float) -> None:
    assert retry_after(header, time.time()) == expected


def test_retry_after_dates() -> None:
    now = 1_800_000_000.0
    assert retry_after(formatdate(now + 7, usegmt=True), now) == 7.0
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now) == 0.0  # in the past
