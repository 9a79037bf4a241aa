"""The small ASGI layer tetik's HTTP jobs share (``tetik collect``, ``tetik console``).

Rules of this interface:

* :func:`read_body` reads a request's whole body, at most ``limit`` bytes: past it,
  :class:`BodyTooLarge` (answer 413); when the client hangs up before the end,
  :class:`ClientGone` (answer nothing: a partial body is no request).
* :func:`respond` sends one whole response, with its ``content-length``.
* :func:`lifespan` answers the server's start and stop for an app with nothing to
  start (one that has, such as the collector's producer, answers them itself).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BodyTooLarge(Exception):
    """The request's body is over the reader's limit."""


class ClientGone(Exception):
    """The client hung up before the request's body ended."""


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole body (see the module rules)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes,
    headers: list[tuple[bytes, bytes]] | tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    """One whole response."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def lifespan(receive: Receive, send: Send) -> None:
    """Answer the server's start and stop (an app with nothing to start)."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
