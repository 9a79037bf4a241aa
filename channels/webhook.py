"""The webhook adapter: an HTTP POST of the action JSON (SMS, push, WhatsApp gateways).

Rules:

* The body is the SPEC section 4 action object; headers are
  ``Content-Type: application/json`` and ``Idempotency-Key: <action_id>``
  (plus ``X-Tetik-Channel`` and any configured ``headers``), so a receiver
  that honours the key (as Stripe-style APIs do) turns every repeat -- a
  retry here, a redelivery after a crash -- into one delivery.
* ``{channel}`` in the URL's path or query is replaced by the action's channel,
  so one ``default`` entry can serve several channels. It is the only
  placeholder: any other ``{name}``, a stray brace, or ``{channel}`` in the
  scheme or host is refused when the adapter is built (ValueError). At send
  time only a known channel (``engine.events.CHANNELS``) is put in, URL-quoted;
  anything else is ``bounced`` without a request.
* With a ``secret`` every request is signed in the manner of Stripe's:
  ``Tetik-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">``,
  a fresh ``t`` per attempt. Receivers check it with :func:`verify_signature`
  (reject a stale ``t``: it stops replays). The secret and credential headers
  come from the environment (see ``channels.config``), never from the file.
* 2xx is ``delivered``. A connection error, a timeout, a 5xx or a 429 is
  retried with exponential backoff and jitter (tenacity, via
  ``channels.base.with_retries``); a 429's or 503's ``Retry-After`` -- delay
  seconds or an HTTP-date -- is waited instead when longer, never past the
  policy's cap (``backoff_max``); after the last retry it is ``failed``.
  Any other status (4xx, and 3xx, which is not followed) is ``bounced`` at
  once: the receiver refused this request and will refuse it again.
* Only the standard library: one short-lived ``http.client`` connection per
  attempt, so a half-dead keep-alive socket never eats a retry.
"""

from __future__ import annotations

import datetime
import email.utils
import hashlib
import hmac
import http.client
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from urllib.parse import quote, urlsplit

from channels.base import Attempt, Delivery, RetryPolicy, delivery, with_retries
from engine.actions import Action, to_json
from engine.events import CHANNELS

SIGNATURE_HEADER = "Tetik-Signature"
PLACEHOLDER = "{channel}"
DEFAULT_TOLERANCE_S = 300
_RETRY_STATUS = frozenset({429})
_RETRY_AFTER_STATUS = frozenset({429, 503})
_BRACES = re.compile(r"\{([^{}]*)\}")


class SignatureError(ValueError):
    """A webhook request's ``Tetik-Signature`` does not prove it came from tetik."""


def signature_header(secret: str | bytes, body: bytes, at: int) -> str:
    """The ``Tetik-Signature`` value for ``body`` sent at unix second ``at``."""
    return f"t={at},v1={_mac(secret, at, body)}"


def verify_signature(
    secret: str | bytes,
    header: str | None,
    body: bytes,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> None:
    """Check a received request; raise :class:`SignatureError` saying why it fails.

    ``header`` is the ``Tetik-Signature`` value and ``body`` the raw request
    bytes (before any JSON parsing). The signature must be one of the ``v1``
    entries, and ``t`` within ``tolerance_s`` of ``now`` (default: the clock);
    comparisons take constant time.
    """
    if not header:
        raise SignatureError(f"no {SIGNATURE_HEADER} header: the request is not from tetik")
    at, candidates = _parse(header)
    now = time.time() if now is None else now
    if abs(now - at) > tolerance_s:
        raise SignatureError(
            f"{SIGNATURE_HEADER} timestamp is {now - at:.0f}s away from now, more than the "
            f"{tolerance_s:g}s tolerance: a replay, or a clock to fix"
        )
    expected = _mac(secret, at, body)
    if not any(hmac.compare_digest(expected, c) for c in candidates):
        raise SignatureError(
            f"no v1 signature in {SIGNATURE_HEADER} matches the body: a different secret, "
            "or a body changed on the way (verify the raw bytes)"
        )


def _parse(header: str) -> tuple[int, list[str]]:
    at: int | None = None
    candidates: list[str] = []
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t" and value.isdigit():
            at = int(value)
        elif key == "v1" and value:
            candidates.append(value)
    if at is None or not candidates:
        raise SignatureError(
            f"{SIGNATURE_HEADER} {header[:80]!r} is not of the form t=<unix seconds>,v1=<hex>"
        )
    return at, candidates


def _mac(secret: str | bytes, at: int, body: bytes) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, f"{at}.".encode() + body, hashlib.sha256).hexdigest()


def check_url(url: str) -> str:
    """``url`` if it is a usable template (see the module rules), else ValueError."""
    parts = urlsplit(url.replace(PLACEHOLDER, "channel"))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"webhook url {url!r} is not http(s)://host[:port]/path")
    for name in _BRACES.findall(url):
        if "{" + name + "}" != PLACEHOLDER:
            raise ValueError(
                f"webhook url {url!r} has placeholder {{{name}}}: only {PLACEHOLDER} is filled"
            )
    if "{" in _BRACES.sub("", url) or "}" in _BRACES.sub("", url):
        raise ValueError(f"webhook url {url!r} has a stray brace; percent-encode it (%7B, %7D)")
    head = urlsplit(url)
    if PLACEHOLDER in f"{head.scheme}://{head.netloc}":
        raise ValueError(
            f"webhook url {url!r} puts {PLACEHOLDER} in the host: use it in the path or query"
        )
    return url


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
        secret: str | bytes | None = None,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = check_url(url)
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.headers = dict(headers or {})
        self.secret = secret or None
        self._stop = stop
        self._clock = clock

    def send(self, action: Action) -> Delivery:
        url = self._url_for(action.channel)
        if url is None:
            detail = (
                f"channel {action.channel!r} is not one of {', '.join(CHANNELS)}: "
                f"not put into the webhook url {self.url}"
            )
            return delivery(action, self.name, Attempt("bounced", detail))
        body = to_json(action)
        headers = self._headers(action)
        result, tries = with_retries(lambda: self._post(url, body, headers), self.retry, self._stop)
        return delivery(action, self.name, result, tries)

    def _url_for(self, channel: str) -> str | None:
        if PLACEHOLDER not in self.url:
            return self.url
        if channel not in CHANNELS:
            return None
        return self.url.replace(PLACEHOLDER, quote(channel, safe=""))

    def _headers(self, action: Action) -> dict[str, str]:
        return {
            **self.headers,
            "Content-Type": "application/json",
            "Idempotency-Key": action.action_id,
            "X-Tetik-Channel": action.channel,
            "User-Agent": "tetik-deliver",
        }

    def _post(self, url: str, body: bytes, headers: dict[str, str]) -> Attempt:
        if self.secret is not None:
            at = int(self._clock())
            headers = {**headers, SIGNATURE_HEADER: signature_header(self.secret, body, at)}
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
        header = response.getheader("Retry-After")
        asked = retry_after(header, self._clock()) if header else 0.0
        return _judge(url, response.status, response.reason, asked)

    def close(self) -> None:
        """Nothing held between sends (one connection per attempt)."""


def _connection(scheme: str, netloc: str, timeout: float) -> http.client.HTTPConnection:
    if scheme == "https":
        return http.client.HTTPSConnection(netloc, timeout=timeout)
    return http.client.HTTPConnection(netloc, timeout=timeout)


def _judge(url: str, status: int, reason: str, wait: float) -> Attempt:
    """Sort an HTTP status into delivered / retry / bounced."""
    detail = f"POST {url}: HTTP {status} {reason}".rstrip()
    if 200 <= status < 300:
        return Attempt("delivered", detail)
    if status >= 500 or status in _RETRY_STATUS:
        return Attempt("retry", detail, wait if status in _RETRY_AFTER_STATUS else 0.0)
    return Attempt("bounced", detail)


def retry_after(value: str | None, now: float) -> float:
    """Seconds a ``Retry-After`` asks for: delay seconds or an HTTP-date (0 if neither)."""
    text = (value or "").strip()
    try:
        seconds = float(text)
    except ValueError:
        seconds = _until(text, now)
    return seconds if math.isfinite(seconds) and seconds > 0 else 0.0


def _until(date: str, now: float) -> float:
    try:
        when = email.utils.parsedate_to_datetime(date)
    except (TypeError, ValueError, IndexError):
        return 0.0
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a naive one is read as such
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp() - now
