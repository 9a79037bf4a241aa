"""Real targets for the adapter tests: an HTTP receiver and an SMTP server on loopback.

Nothing here is a mock: the webhook adapter talks HTTP to a
``ThreadingHTTPServer`` and the SMTP adapter talks SMTP to aiosmtpd, both on
127.0.0.1 and a free port, in this process.
"""

from __future__ import annotations

import email
import email.policy
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from channels.base import RetryPolicy
from engine.actions import Action

FAST_RETRY = RetryPolicy(retries=2, base=0.005, cap=0.02)


@dataclass(frozen=True)
class TlsFiles:
    """A self-signed certificate for 127.0.0.1 (its own CA) and its key."""

    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context


def make_tls_files(directory: Path) -> TlsFiles:
    """Make the certificate with the ``openssl`` command (an EC key: fast)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    command = (
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 "
        "-subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1"
    )
    subprocess.run(
        [*command.split(), "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return TlsFiles(cert, key)


def make_action(n: int = 1, **changes: Any) -> Action:
    """A sent email action with content; ``changes`` override any field."""
    fields: dict[str, Any] = {
        "action_id": f"act-{n:04d}",
        "at": 1_700_000_000_000 + n,
        "user_id": f"u{n}",
        "journey": "abandoned_cart",
        "step": "1",
        "channel": "email",
        "template": "cart_reminder",
        "status": "sent",
        "rules_version": "v1",
        "content": {"subject": f"Sepetin seni bekliyor {n}", "body": f"p{n} hala sepetinde"},
    }
    fields.update(changes)
    return Action(**fields)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class HookServer:
    """A webhook receiver that honours ``Idempotency-Key`` and can be told to misbehave.

    ``script`` lists what to answer first, one entry per request: an HTTP
    status, or ``"hang"`` (sleep ``hang_s`` before answering). Then it
    answers ``paths[path]``, else ``default``. ``accepted`` keeps the first
    2xx request per key. ``delay_s`` holds every answer that long, and
    ``peak`` is the most requests ever in flight at once.
    """

    default: int | str = 200
    paths: dict[str, int] = field(default_factory=dict)
    script: list[int | str] = field(default_factory=list)
    hang_s: float = 1.0
    retry_after: str | None = None
    delay_s: float = 0.0
    in_flight: int = 0
    peak: int = 0
    requests: list[Request] = field(default_factory=list)
    accepted: dict[str, Request] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def on(self, path: str) -> list[Request]:
        return [r for r in self.requests if r.path == path]

    def answer(self, request: Request) -> int | str:
        with self.lock:
            self.requests.append(request)
            reply = (
                self.script.pop(0) if self.script else self.paths.get(request.path, self.default)
            )
            if isinstance(reply, int) and 200 <= reply < 300:
                self.accepted.setdefault(request.headers.get("Idempotency-Key", ""), request)
        return reply


def _handler(hook: HookServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            request = Request(self.path, dict(self.headers.items()), body, time.monotonic())
            with hook.lock:
                hook.in_flight += 1
                hook.peak = max(hook.peak, hook.in_flight)
            try:
                reply = hook.answer(request)
                time.sleep(hook.delay_s)
            finally:
                with hook.lock:
                    hook.in_flight -= 1
            if reply == "hang":
                time.sleep(hook.hang_s)
                reply = 200
            self._reply(int(reply))

        def _reply(self, status: int) -> None:
            try:
                self.send_response(status)
                if hook.retry_after is not None and status in (429, 503):
                    self.send_header("Retry-After", hook.retry_after)
                self.send_header("Content-Length", "0")
                self.end_headers()
            except OSError:  # the client gave up (timeout test)
                pass

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def serve_hooks(hook: HookServer) -> Iterator[HookServer]:
    """Run ``hook`` on a free loopback port for the duration of a fixture."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hook))
    server.daemon_threads = True  # a hanging handler must not block shutdown
    hook.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Mail:
    sender: str
    recipients: list[str]
    message: EmailMessage

    @property
    def text(self) -> str:
        part = self.message.get_body(("plain",))
        return "" if part is None else str(part.get_content()).strip()


class MailCatcher:
    """aiosmtpd handler: keeps every accepted mail; refuses scripted recipients.

    A recipient starting with ``bounce`` gets ``550``; ``busy`` gets ``451``.
    ``mail_from`` counts MAIL commands, each with whether the session was TLS;
    ``peers`` the client address of each, so a set of them counts connections.
    """

    def __init__(self) -> None:
        self.mails: list[Mail] = []
        self.rcpt_attempts = 0
        self.mail_from: list[bool] = []
        self.peers: list[object] = []

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self.mail_from.append(session.ssl is not None)
        self.peers.append(session.peer)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self.rcpt_attempts += 1
        if address.startswith("bounce"):
            return "550 5.1.1 no such mailbox"
        if address.startswith("busy"):
            return "451 4.3.0 mailbox busy, try later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        message = email.message_from_bytes(raw, policy=email.policy.default)
        self.mails.append(Mail(str(envelope.mail_from), list(envelope.rcpt_tos), message))
        return "250 Message accepted"


def serve_mail(**smtp: Any) -> Iterator[tuple[MailCatcher, int]]:
    """A real SMTP server (aiosmtpd) on a free loopback port.

    ``smtp`` goes to aiosmtpd's ``SMTP`` (``tls_context``, ``require_starttls``,
    ``authenticator``, ``auth_require_tls``...).
    """
    catcher = MailCatcher()
    controller = Controller(catcher, hostname="127.0.0.1", port=closed_port(), **smtp)
    controller.start()
    try:
        yield catcher, controller.port
    finally:
        controller.stop()
