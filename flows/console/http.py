"""The console's HTTP plumbing over raw ASGI: requests, forms, cookies and answers.

Rules of this interface:

* :func:`read_request` reads a whole request body, at most :data:`MAX_BODY`
  bytes (:func:`flows.asgi.read_body`: a larger one raises
  :class:`~flows.asgi.BodyTooLarge`, answered 413); forms are
  ``application/x-www-form-urlencoded`` or, with file uploads,
  ``multipart/form-data`` (parsed by the standard library's MIME parser);
  line ends in a textarea come as CRLF and are given back as LF, a file's
  bytes as they came.
* Answers are HTML (``text/html; charset=utf-8``) or a 303 redirect, each with
  ``Cache-Control: no-store`` and a strict ``Content-Security-Policy``: the
  pages have no script and load nothing from elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from email import policy
from email.parser import BytesParser
from http.cookies import SimpleCookie
from urllib.parse import parse_qs

from flows.asgi import Receive, Scope, Send, read_body, respond

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


@dataclass
class Request:
    """One HTTP request, read whole."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes = b""
    cookies: dict[str, str] = field(default_factory=dict)

    _parsed: tuple[dict[str, str], dict[str, Upload]] | None = field(default=None, repr=False)

    def form(self) -> dict[str, str]:
        """The form's text fields (the first of each), CRLF turned into LF."""
        return self._fields()[0]

    def files(self) -> dict[str, Upload]:
        """The form's uploaded files that are not empty (multipart forms only)."""
        return self._fields()[1]

    def _fields(self) -> tuple[dict[str, str], dict[str, Upload]]:
        if self._parsed is None:
            kind = self.headers.get("content-type", "")
            if kind.lower().startswith("multipart/form-data"):
                self._parsed = _multipart(self.body, kind)
            else:
                fields = parse_qs(self.body.decode("utf-8", "replace"), keep_blank_values=True)
                self._parsed = ({name: _lf(values[0]) for name, values in fields.items()}, {})
        return self._parsed


@dataclass(frozen=True)
class Upload:
    """One uploaded file: the name the browser gave and its bytes."""

    filename: str
    data: bytes


def _multipart(body: bytes, content_type: str) -> tuple[dict[str, str], dict[str, Upload]]:
    """A ``multipart/form-data`` body's text fields and files (the stdlib's MIME parser)."""
    head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", "replace")
    message = BytesParser(policy=policy.HTTP).parsebytes(head + body)
    fields: dict[str, str] = {}
    files: dict[str, Upload] = {}
    if not message.is_multipart():
        return fields, files
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or name in fields or name in files:
            continue
        data = part.get_payload(decode=True)
        data = data if isinstance(data, bytes) else b""
        filename = part.get_filename()
        if filename is None:
            fields[name] = _lf(data.decode("utf-8", "replace"))
        elif data:
            files[name] = Upload(filename, data)
    return fields, files


def _lf(text: str) -> str:
    return text.replace("\r\n", "\n")


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
    """The request of ``scope`` with its body (BodyTooLarge past :data:`MAX_BODY`)."""
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    query = {k: v[0] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()}
    cookie: SimpleCookie = SimpleCookie()
    try:
        cookie.load(headers.get("cookie", ""))
    except Exception:  # a malformed Cookie header: no cookies
        cookie = SimpleCookie()
    body = await read_body(receive, MAX_BODY)
    return Request(
        scope["method"],
        scope["path"].rstrip("/") or "/",
        query,
        headers,
        body,
        {name: morsel.value for name, morsel in cookie.items()},
    )


async def send_answer(send: Send, answer: Answer) -> None:
    await respond(
        send, answer.status, answer.body, answer.content_type, [*SECURITY, *answer.headers]
    )
