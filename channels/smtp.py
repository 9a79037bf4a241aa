"""The SMTP adapter: email through an SMTP server (an ESP relay, a local MTA, a mail catcher).

Rules:

* The recipient comes from ``recipient(user_id)`` (the deliver job reads
  ``profile.email`` from the user's state). No address, or one without ``@``,
  is ``bounced`` with a detail that says how to fix it; so is an action with
  no email ``content`` (its template has no ``email:`` entry) and content
  that cannot be a header (a line break in the subject).
* ``content.subject`` is the subject; ``content.body`` (else ``text``) the
  plain-text part; ``content.html`` an HTML alternative (or the only part).
* ``Message-ID: <action_id@sender-domain>`` and ``X-Tetik-Action-Id`` carry
  the action id, so a repeat is recognisable downstream. SMTP itself cannot
  deduplicate: a repeated send is a second mail; the deliver job's ledger
  keeps repeats to the crash window it documents.
* Permanent SMTP replies (5xx) to the recipient or the message are
  ``bounced``; transient ones (4xx), disconnects, timeouts and refused
  connections are retried with backoff, then ``failed``. A 5xx about our own
  side (login, sender, HELO) is ``failed`` at once: it is a configuration
  problem, not the customer's, and the action can be re-driven once fixed.
* STARTTLS is required unless ``starttls=False`` is given (the channel
  config's ``starttls: false``, meant for a loopback mail catcher): the
  session is upgraded to TLS, the server's certificate checked against the
  system's CAs (or ``ca_file``) and host name, before the login or any
  envelope. A server that does not offer STARTTLS, or whose certificate does
  not verify, is ``failed`` at once with the reason: nothing, credentials
  least of all, goes over plain text, and retrying cannot fix it (a re-drive
  after the fix can).
* One connection per adapter, reused across sends (STARTTLS and login once
  per connection): the deliver job's pool gives each thread its own adapter,
  so ``concurrency`` bounds the connections. A connection idle for
  ``idle_check_s`` is checked with ``NOOP`` first; one that is dead, or that
  the server drops or closes (421) under a send, is replaced by a fresh one
  at once, so a server that drops idle connections never costs a retry. Any
  other error closes the connection (the next try opens a new one), except a
  refused recipient, after which the session is reset and reused.
"""

from __future__ import annotations

import smtplib
import ssl
import threading
import time
from collections.abc import Callable
from email.message import EmailMessage

from channels.base import Attempt, Delivery, RetryPolicy, delivery, with_retries
from engine.actions import Action

Recipient = Callable[[str], str | None]
IDLE_CHECK_S = 10.0


class SmtpChannel:
    """Sends each action as one email."""

    name = "smtp"

    def __init__(
        self,
        host: str,
        port: int,
        sender: str,
        recipient: Recipient,
        *,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        starttls: bool = True,
        ca_file: str | None = None,
        username: str | None = None,
        password: str | None = None,
        stop: threading.Event | None = None,
        idle_check_s: float = IDLE_CHECK_S,
    ) -> None:
        self.host = host
        self.port = port
        self.sender = sender
        self.recipient = recipient
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.starttls = starttls
        self.ca_file = ca_file
        self.login = (username, password or "") if username else None
        self._stop = stop
        self.idle_check_s = idle_check_s
        self._smtp: smtplib.SMTP | None = None
        self._used_at = 0.0

    def send(self, action: Action) -> Delivery:
        result, tries = with_retries(lambda: self._attempt(action), self.retry, self._stop)
        return delivery(action, self.name, result, tries)

    def _attempt(self, action: Action) -> Attempt:
        try:
            address = self.recipient(action.user_id)
        except Exception as exc:  # the lookup's store is down: worth another try
            return Attempt("retry", f"recipient lookup failed: {type(exc).__name__}: {exc}")
        problem = _unsendable(action, address)
        if problem:
            return Attempt("bounced", problem)
        try:
            message = compose(action, self.sender, str(address))
        except ValueError as exc:
            return Attempt("bounced", f"email content cannot be sent: {exc}")
        return self._transmit(message, str(address))

    def _transmit(self, message: EmailMessage, address: str) -> Attempt:
        try:
            self._send_once(message, address)
        except smtplib.SMTPRecipientsRefused as exc:
            return _judge(exc)  # smtplib reset the session: it stays usable
        except smtplib.SMTPNotSupportedError as exc:
            self._drop()
            return self._unsupported(exc)
        except smtplib.SMTPException as exc:
            self._drop()
            return _judge(exc)
        except ssl.SSLCertVerificationError as exc:
            self._drop()
            return Attempt(
                "fatal",
                f"SMTP {self.host}:{self.port}: TLS certificate not trusted "
                f"({exc.verify_message or exc}); give the CA with `ca_file:`, or fix the "
                "server's certificate",
            )
        except OSError as exc:
            self._drop()
            return Attempt("retry", f"SMTP {self.host}:{self.port}: {type(exc).__name__}: {exc}")
        return Attempt("delivered", f"accepted by {self.host}:{self.port} for {address}")

    def _send_once(self, message: EmailMessage, address: str) -> None:
        """Send on the kept connection; if it turns out dead, once more on a fresh one."""
        reused = self._smtp is not None
        try:
            self._session().send_message(message, from_addr=self.sender, to_addrs=[address])
        except (smtplib.SMTPServerDisconnected, smtplib.SMTPResponseException, OSError) as exc:
            if not (reused and _stale(exc)):
                raise
            self._drop()
            self._session().send_message(message, from_addr=self.sender, to_addrs=[address])
        self._used_at = time.monotonic()

    def _session(self) -> smtplib.SMTP:
        """The kept connection (checked with NOOP after an idle spell), or a new one."""
        if self._smtp is not None and time.monotonic() - self._used_at >= self.idle_check_s:
            try:
                alive = self._smtp.noop()[0] == 250
            except (smtplib.SMTPException, OSError):
                alive = False
            if not alive:
                self._drop()
        if self._smtp is None:
            smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            try:
                self._prepare(smtp)
            except BaseException:
                smtp.close()
                raise
            self._smtp = smtp
        return self._smtp

    def _drop(self) -> None:
        """Forget the connection (QUIT when it still answers)."""
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            smtp.close()

    def _prepare(self, smtp: smtplib.SMTP) -> None:
        if self.starttls:
            smtp.starttls(context=ssl.create_default_context(cafile=self.ca_file))
        if self.login:
            smtp.login(*self.login)

    def _unsupported(self, exc: smtplib.SMTPNotSupportedError) -> Attempt:
        if self.starttls and "STARTTLS" in str(exc).upper():
            return Attempt(
                "fatal",
                f"SMTP {self.host}:{self.port} does not offer STARTTLS, which is required: "
                "nothing was sent in plain text; enable TLS on the server, or set "
                "`starttls: false` for a trusted loopback catcher",
            )
        return Attempt("fatal", f"SMTP server: {exc}")

    def close(self) -> None:
        """QUIT and close the kept connection."""
        self._drop()


def _stale(exc: Exception) -> bool:
    """Whether a reused connection died under us (closed, reset, or a 421 goodbye)."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return False
    if isinstance(exc, smtplib.SMTPResponseException):
        return exc.smtp_code == 421
    return isinstance(exc, smtplib.SMTPServerDisconnected | ConnectionError)


def _unsendable(action: Action, address: str | None) -> str:
    """Why this action can never be mailed as it is ("" when it can)."""
    if not address:
        return (
            f"user {action.user_id!r} has no email address: send a `profile` event "
            "with attributes.email"
        )
    if "@" not in address:
        return f"user {action.user_id!r} has email {address!r}, which is not an address"
    if not action.content:
        return f"template {action.template!r} has no `email:` content; add one to the rules"
    return ""


def compose(action: Action, sender: str, address: str) -> EmailMessage:
    """The email for one action; raises ValueError for content unfit for headers."""
    content = action.content or {}
    message = EmailMessage()
    message["From"] = sender
    message["To"] = address
    message["Subject"] = content.get("subject", "")
    domain = sender.rpartition("@")[2] or "tetik.invalid"
    message["Message-ID"] = f"<{action.action_id}@{domain}>"
    message["X-Tetik-Action-Id"] = action.action_id
    message["X-Tetik-Journey"] = action.journey
    _set_body(message, content)
    return message


def _set_body(message: EmailMessage, content: dict[str, str]) -> None:
    text = content.get("body", content.get("text"))
    html = content.get("html")
    if text is None and html is not None:
        message.set_content(html, subtype="html")
        return
    message.set_content(text or "")
    if html is not None:
        message.add_alternative(html, subtype="html")


def _judge(exc: smtplib.SMTPException) -> Attempt:
    """Sort an SMTP error into bounced / retry / fatal (see the module rules)."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        code, reply = next(iter(exc.recipients.values()), (550, b"refused"))
        return _by_code(code, f"recipient refused: {code} {_text(reply)}")
    if isinstance(exc, smtplib.SMTPResponseException):
        text = f"{exc.smtp_code} {_text(exc.smtp_error)}"
        ours = isinstance(
            exc, smtplib.SMTPAuthenticationError | smtplib.SMTPSenderRefused | smtplib.SMTPHeloError
        )
        if ours and exc.smtp_code >= 500:
            return Attempt("fatal", f"SMTP refused our login/sender: {text}")
        return _by_code(exc.smtp_code, f"SMTP refused the message: {text}")
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return Attempt("fatal", f"SMTP server: {exc}")
    return Attempt("retry", f"SMTP: {type(exc).__name__}: {exc}")


def _by_code(code: int, detail: str) -> Attempt:
    return Attempt("bounced" if code >= 500 else "retry", detail)


def _text(reply: bytes | str) -> str:
    return reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
