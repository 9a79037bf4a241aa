"""The webhook adapter: an HTTP POST of the action JSON (SMS, push, WhatsApp gateways).

Rules:

* The body is the SPEC section 4 action object; headers are
  ``Content-Type: application/json`` and ``Idempotency-Key: <action_id>``
  (plus ``X-Tetik-Channel`` and any configured ``headers``), so a receiver
  that honours the key (as Stripe-style APIs do) turns every repeat -- a
  retry here, a redelivery after a crash -- into one delivery.
* ``{channel}`` in the URL is replaced by the action's channel, so one
  ``default`` entry can serve several channels.
* 2xx is ``delivered``. A connection error, a timeout, a 5xx or a 429 is
  retried with exponential backoff and jitter (a ``Retry-After`` in seconds
  is honoured up to the policy's cap); after the last retry it is ``failed``.
  Any other status (4xx, and 3xx, which is not followed) is ``bounced`` at
  once: the receiver refused this request and will refuse it again.
* Only the standard library: one short-lived ``http.client`` connection per
  attempt, so a half-dead keep-alive socket never eats a retry.
"""

from __future__ import annotations

import http.client
import math
import threading
from collections.abc import Mapping
from urllib.parse import urlsplit

from channels.base import Attempt, Delivery, RetryPolicy, delivery, with_retries
from engine.actions import Action, to_json

_RETRY_STATUS = frozenset({429})


class WebhookChannel:
    """POSTs each action to an HTTP(S) endpoint."""

    name = "webhook"

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        retry: RetryPolicy | None = None,
        headers: Mapping[str, str] | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"webhook url {url!r} is not http(s)://host[:port]/path")
        self.url = url
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.headers = dict(headers or {})
        self._stop = stop

    def send(self, action: Action) -> Delivery:
        url = self.url.replace("{channel}", action.channel)
        body = to_json(action)
        headers = self._headers(action)
        result, tries = with_retries(lambda: self._post(url, body, headers), self.retry, self._stop)
        return delivery(action, self.name, result, tries)

    def _headers(self, action: Action) -> dict[str, str]:
        return {
            **self.headers,
            "Content-Type": "application/json",
            "Idempotency-Key": action.action_id,
            "X-Tetik-Channel": action.channel,
            "User-Agent": "tetik-deliver",
        }

    def _post(self, url: str, body: bytes, headers: dict[str, str]) -> Attempt:
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection = _connection(parts.scheme, parts.netloc, self.timeout)
        try:
            connection.request("POST", target, body=body, headers=headers)
            response = connection.getresponse()
            response.read()  # drain, so the server sees a complete exchange
        except (OSError, http.client.HTTPException) as exc:
            return Attempt("retry", f"POST {url}: {type(exc).__name__}: {exc}".rstrip(": "))
        finally:
            connection.close()
        return _judge(url, response.status, response.reason, response.getheader("Retry-After"))

    def close(self) -> None:
        """Nothing held between sends (one connection per attempt)."""


def _connection(scheme: str, netloc: str, timeout: float) -> http.client.HTTPConnection:
    if scheme == "https":
        return http.client.HTTPSConnection(netloc, timeout=timeout)
    return http.client.HTTPConnection(netloc, timeout=timeout)


def _judge(url: str, status: int, reason: str, retry_after: str | None) -> Attempt:
    """Sort an HTTP status into delivered / retry / bounced."""
    detail = f"POST {url}: HTTP {status} {reason}".rstrip()
    if 200 <= status < 300:
        return Attempt("delivered", detail)
    if status >= 500 or status in _RETRY_STATUS:
        return Attempt("retry", detail, _seconds(retry_after))
    return Attempt("bounced", detail)


def _seconds(retry_after: str | None) -> float:
    """A ``Retry-After`` in delta-seconds; the HTTP-date form is ignored (backoff rules)."""
    try:
        seconds = float(retry_after or 0)
    except ValueError:
        return 0.0
    return seconds if math.isfinite(seconds) and seconds > 0 else 0.0
