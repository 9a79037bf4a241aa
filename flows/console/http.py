"""The console's HTTP plumbing over raw ASGI: requests, forms, cookies and answers.

Rules of this interface:

* :func:`read_request` reads a whole request body, at most :data:`MAX_BODY`
  bytes (a larger one raises :class:`TooLarge`, answered 413); forms are
  ``application/x-www-form-urlencoded`` (what an HTML form posts; line ends
  in a textarea come as CRLF and are given back as LF).
* Answers are HTML (``text/html; charset=utf-8``) or a 303 redirect, each with
  ``Cache-Control: no-store`` and a strict ``Content-Security-Policy``: the
  pages have no script and load nothing from elsewhere.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MAX_BODY = 8 * 1024 * 1024  # a rules file, or a pasted stretch of events
SECURITY = [
    (b"cache-control", b"no-store"),
    (
        b"content-security-policy",
        b"default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
        b"form-action 'self'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]


class TooLarge(Exception):
    """The body is over :data:`MAX_BODY`."""


@dataclass
class Request:
    """One HTTP request, read whole."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes = b""
    cookies: dict[str, str] = field(default_factory=dict)

    def form(self) -> dict[str, str]:
        """The urlencoded form's fields (the first of each), CRLF turned into LF."""
        fields = parse_qs(self.body.decode("utf-8", "replace"), keep_blank_values=True)
        return {name: values[0].replace("\r\n", "\n") for name, values in fields.items()}


@dataclass
class Answer:
    """What to send back."""

    status: int
    body: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    content_type: bytes = b"text/html; charset=utf-8"


def redirect(location: str, headers: list[tuple[bytes, bytes]] | None = None) -> Answer:
    return Answer(303, b"", [(b"location", location.encode()), *(headers or [])])


async def read_request(scope: Scope, receive: Receive) -> Request:
    """The request of ``scope`` with its body (TooLarge past :data:`MAX_BODY`)."""
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    query = {k: v[0] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()}
    cookie: SimpleCookie = SimpleCookie()
    try:
        cookie.load(headers.get("cookie", ""))
    except Exception:  # a malformed Cookie header: no cookies
        cookie = SimpleCookie()
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise TooLarge
        chunks.append(chunk)
        more = message.get("more_body", False)
    return Request(
        scope["method"],
        scope["path"].rstrip("/") or "/",
        query,
        headers,
        b"".join(chunks),
        {name: morsel.value for name, morsel in cookie.items()},
    )


async def send_answer(send: Send, answer: Answer) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": answer.status,
            "headers": [
                (b"content-type", answer.content_type),
                (b"content-length", str(len(answer.body)).encode()),
                *SECURITY,
                *answer.headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": answer.body})
