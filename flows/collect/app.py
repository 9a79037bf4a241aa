"""The collector: Segment's HTTP tracking API in front of the events topic (SPEC section 12).

A small raw ASGI app (served by uvicorn, :mod:`flows.jobs.collect`): five
POST endpoints need no router, and every microsecond of a framework shows in
events/s. Rules of this interface:

* ``POST /v1/track``, ``/v1/identify``, ``/v1/page``, ``/v1/screen``,
  ``/v1/batch`` (and ``/v1/import``) and ``/v1/alias`` (an identity link),
  with the short names analytics.js uses (``/v1/t``, ``/v1/i``, ``/v1/p``,
  ``/v1/s``, ``/v1/b``, ``/v1/a``); ``group`` calls (``/v1/group``,
  ``/v1/g``) are answered and dropped. ``GET /healthz`` answers 200 ``ok``.
  Any other path is a 404, any other method a 405; ``OPTIONS`` answers a
  browser's CORS preflight (allowing the headers analytics.js sends,
  ``X-Retry-Count`` of its retries among them), and every answer allows any
  origin (storefront pages post from their own).
* The write key is the basic-auth user name (the password is empty), else
  the body's ``writeKey``; one that is not in ``TETIK_COLLECT_WRITE_KEYS``
  is a 401. Nothing unauthenticated reaches Kafka, not even the dead-letter
  topic.
* A body is at most :data:`MAX_BODY` bytes, after ``Content-Encoding: gzip``
  is undone (rudder-sdk-python compresses by default); a larger one is a 413.
* Answers follow Segment's: 200 ``{"success": true}``; an error is
  ``{"success": false, "code": ..., "message": ...}`` (the SDKs print
  ``code`` and ``message``).
* A request is mapped whole (:func:`flows.collect.segment.events_of`): its
  events go to the events topic keyed by their identity (``user_id``, else
  ``anon_id``, as :func:`flows.kafka.producer.identity_of` keys), and the 200
  is sent once the broker acknowledged every one of them. So a 200 means
  the events are in Kafka; a 503 (Kafka did not take them) makes the SDK
  retry, and a retry that repeats events is harmless: the engine drops a
  repeated ``event_id`` (``messageId``).
* A bad request (a body that is not JSON or not gzip, a call without ids,
  an event the validator refuses) is a 400 with the reason, after its dead
  letter is acknowledged on the events' dead-letter topic: the record
  :func:`flows.pipeline.decode.to_dlq` makes for the engine's own, with the
  body as it came (unzipped) and the source ``http:<path>``, partition and
  offset -1. If the dead letter is not acknowledged either, the answer is a
  503, so the SDK sends the call again rather than drop it.
* Every answer counts in ``tetik_collect_requests_total`` by endpoint (the
  call type of :data:`ROUTES`, ``other`` for the rest) and status; a record
  Kafka did not take in ``tetik_errors_total{system="kafka"}``. Given a
  :class:`~flows.metrics.health.Health`, the event loop beats it every
  second, so ``/healthz`` on the metrics port fails when the loop is stuck.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import orjson
from bytewax.connectors.kafka import KafkaSourceMessage

from engine.errors import InvalidEvent
from engine.events import encode_event
from flows.asgi import BodyTooLarge, ClientGone, Receive, Scope, Send, read_body, respond
from flows.clock import Clock, wall_ms
from flows.collect.segment import events_of
from flows.kafka.acked import AckedProducer, NotDelivered, Record
from flows.metrics import installed
from flows.metrics.health import Health
from flows.metrics.names import COLLECT_REQUESTS, ERRORS
from flows.pipeline.decode import Rejected, to_dlq

MAX_BODY: Final = 512 * 1024  # Segment takes 500 KB a batch
ROUTES: Final = {
    **dict.fromkeys(("/v1/track", "/v1/t"), "track"),
    **dict.fromkeys(("/v1/identify", "/v1/i"), "identify"),
    **dict.fromkeys(("/v1/page", "/v1/p"), "page"),
    **dict.fromkeys(("/v1/screen", "/v1/s"), "screen"),
    **dict.fromkeys(("/v1/batch", "/v1/b", "/v1/import"), "batch"),
    **dict.fromkeys(("/v1/alias", "/v1/a"), "alias"),
    **dict.fromkeys(("/v1/group", "/v1/g"), "ignored"),
}
CORS: Final = [(b"access-control-allow-origin", b"*")]
PREFLIGHT: Final = [
    *CORS,
    (b"access-control-allow-methods", b"POST, OPTIONS"),
    # analytics.js sends basic auth, Content-Type text/plain, X-Retry-Count on a retry
    (
        b"access-control-allow-headers",
        b"authorization, content-type, content-encoding, x-retry-count",
    ),
    (b"access-control-max-age", b"86400"),
]
OK: Final = orjson.dumps({"success": True})
GONE: Final = 499  # the status counted for a client that left mid-body (nginx's)


class Refusal(Exception):
    """A request answered with an error: its status, Segment-style code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass
class Counts:
    """What the collector did since it started (the job prints them at the end)."""

    events: int = 0
    requests: int = 0
    refused: int = 0  # 400s, each dead-lettered
    unauthorized: int = 0
    unavailable: int = 0  # 503s


class Collector:
    """The ASGI app (see the module rules)."""

    def __init__(
        self,
        write_keys: Iterable[str],
        producer: AckedProducer,
        events_topic: str,
        dlq_topic: str,
        clock: Clock = wall_ms,
        health: Health | None = None,
    ) -> None:
        self._keys = tuple(key.encode() for key in write_keys if key)
        self._producer = producer
        self._events_topic = events_topic
        self._dlq_topic = dlq_topic
        self._clock = clock
        self._health = health
        self._beating: asyncio.Task[None] | None = None
        self.counts = Counts()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            status = await self._http(scope, receive, send)
            endpoint = ROUTES.get(scope["path"].rstrip("/"), "other")
            installed().count(COLLECT_REQUESTS, endpoint=endpoint, status=str(status))

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._producer.start()
                if self._health is not None:
                    self._beating = asyncio.create_task(_beat(self._health))
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._beating is not None:
                    self._beating.cancel()
                self._producer.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> int:
        path = scope["path"].rstrip("/")
        method = scope["method"]
        if method == "GET" and path == "/healthz":
            return await _answer(send, 200, b"ok", b"text/plain")
        kind = ROUTES.get(path)
        if kind is None:
            return await _refuse(send, Refusal(404, "not_found", f"no endpoint {path}"))
        if method == "OPTIONS":
            return await _answer(send, 204, b"", b"text/plain", PREFLIGHT)
        if method != "POST":
            return await _refuse(send, Refusal(405, "method_not_allowed", "use POST"))
        try:
            await self._collect(scope, receive, path, kind)
        except Refusal as refusal:
            return await _refuse(send, refusal)
        except ClientGone:  # nothing to answer, nothing taken (a partial body is no call)
            return GONE
        return await _answer(send, 200, OK)

    async def _collect(self, scope: Scope, receive: Receive, path: str, kind: str) -> None:
        self.counts.requests += 1
        headers = dict(scope["headers"])
        raw = await _body(receive)
        body, unzip_error = _unzip(raw, headers.get(b"content-encoding", b""))
        self._authenticate(headers.get(b"authorization"), body)
        try:
            if unzip_error:
                raise InvalidEvent(unzip_error)
            events = [] if kind == "ignored" else events_of(body, kind, self._clock())
        except InvalidEvent as exc:
            await self._dead_letter(body, path, exc.reason)
            raise Refusal(400, "invalid_request", exc.reason) from None
        records = [Record(self._events_topic, encode_event(e), e.key.encode()) for e in events]
        await self._deliver(records)
        self.counts.events += len(records)

    def _authenticate(self, authorization: bytes | None, body: bytes) -> None:
        given = _basic_user(authorization) if authorization else _body_key(body)
        if given is None:
            self.counts.unauthorized += 1
            raise Refusal(
                401, "unauthorized", "no write key: send it as the basic-auth user or writeKey"
            )
        if not any(hmac.compare_digest(given, key) for key in self._keys):
            self.counts.unauthorized += 1
            raise Refusal(401, "unauthorized", "unknown write key (TETIK_COLLECT_WRITE_KEYS)")

    async def _dead_letter(self, body: bytes, path: str, reason: str) -> None:
        source = KafkaSourceMessage(None, body, topic=f"http:{path}", offset=-1, partition=-1)
        letter = to_dlq(Rejected(source, reason))
        await self._deliver([Record(self._dlq_topic, body, None, list(letter.headers))])
        self.counts.refused += 1

    async def _deliver(self, records: list[Record]) -> None:
        try:
            await self._producer.send(records)
        except NotDelivered as exc:
            self.counts.unavailable += 1
            installed().count(ERRORS, system="kafka", kind="producer")
            reason = f"Kafka did not take the events ({exc}); retry"
            raise Refusal(503, "unavailable", reason) from None


async def _beat(health: Health) -> None:
    """The event loop turns: /healthz stays live while it does (flows.metrics.health)."""
    while True:
        health.beat()
        await asyncio.sleep(1)


async def _body(receive: Receive) -> bytes:
    try:
        return await read_body(receive, MAX_BODY)
    except BodyTooLarge:
        raise Refusal(413, "too_large", f"the body is over {MAX_BODY // 1024} KiB") from None


def _unzip(raw: bytes, encoding: bytes) -> tuple[bytes, str]:
    """The body without its gzip (bounded by MAX_BODY), and why not when it cannot be."""
    encoding = encoding.strip().lower()
    if encoding in (b"", b"identity"):
        return raw, ""
    if encoding != b"gzip":
        raise Refusal(415, "unsupported_encoding", f"Content-Encoding {encoding.decode()!r}")
    unzipper = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        body = unzipper.decompress(raw, MAX_BODY + 1)
    except zlib.error as exc:
        return raw, f"the body is not valid gzip ({exc})"
    if len(body) > MAX_BODY:
        raise Refusal(413, "too_large", f"the unzipped body is over {MAX_BODY // 1024} KiB")
    if not unzipper.eof:
        return raw, "the gzip body is cut short"
    return body, ""


def _basic_user(authorization: bytes) -> bytes | None:
    scheme, _, token = authorization.partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        user, _, _password = base64.b64decode(token.strip(), validate=True).partition(b":")
    except (binascii.Error, ValueError):
        return None
    return user or None


def _body_key(body: bytes) -> bytes | None:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    key = doc.get("writeKey") if isinstance(doc, dict) else None
    return key.encode() if isinstance(key, str) and key else None


async def _answer(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes = b"application/json",
    headers: list[tuple[bytes, bytes]] = CORS,
) -> int:
    await respond(send, status, body, content_type, headers)
    return status


async def _refuse(send: Send, refusal: Refusal) -> int:
    doc = {"success": False, "code": refusal.code, "message": refusal.message}
    return await _answer(send, refusal.status, orjson.dumps(doc))
