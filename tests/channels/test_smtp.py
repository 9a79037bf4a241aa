"""The SMTP adapter against a real SMTP server (aiosmtpd on loopback).

Most tests talk to a plain catcher with ``starttls=False``, as the demo does;
the STARTTLS tests use a server that requires it, with a certificate made by
``openssl`` for the session.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from channels.smtp import SmtpChannel
from tests.channels.support import (
    FAST_RETRY,
    MailCatcher,
    TlsFiles,
    closed_port,
    make_action,
    serve_mail,
)

EMAILS = {"u1": "ayse@example.com", "u2": "bounce@example.com", "u3": "busy@example.com"}


def channel(port: int, emails: dict[str, str] = EMAILS, **options: Any) -> SmtpChannel:
    options = {"starttls": False, **options}
    return SmtpChannel(
        "127.0.0.1", port, "shop@example.com", emails.get, timeout=2.0, retry=FAST_RETRY, **options
    )


class Logins:
    """aiosmtpd authenticator: records each login and whether it came over TLS."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, bool]] = []

    def __call__(
        self, server: SMTP, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        self.seen.append((data.login.decode(), session.ssl is not None))
        return AuthResult(success=data.password == b"s3cret")


@pytest.fixture
def logins() -> Logins:
    return Logins()


@pytest.fixture
def tls_auth_mail(tls_files: TlsFiles, logins: Logins) -> Iterator[tuple[MailCatcher, int]]:
    """A server requiring STARTTLS and a login (only over TLS)."""
    yield from serve_mail(
        tls_context=tls_files.server_context(),
        require_starttls=True,
        authenticator=logins,
        auth_required=True,
    )


@pytest.fixture
def plain_auth_mail(logins: Logins) -> Iterator[tuple[MailCatcher, int]]:
    """A server without TLS that would take a login in plain text."""
    yield from serve_mail(authenticator=logins, auth_require_tls=False)


def test_one_email_per_action_with_the_action_id(mail: tuple[MailCatcher, int]) -> None:
    catcher, port = mail
    action = make_action(1)
    result = channel(port).send(action)
    assert result.outcome == "delivered", result.detail
    [got] = catcher.mails
    assert got.recipients == ["ayse@example.com"]
    assert got.sender == "shop@example.com"
    assert got.message["Message-ID"] == "<act-0001@example.com>"
    assert got.message["X-Tetik-Action-Id"] == "act-0001"
    assert got.message["Subject"] == "Sepetin seni bekliyor 1"
    assert got.text == "p1 hala sepetinde"


def test_html_content_becomes_an_alternative_part(mail: tuple[MailCatcher, int]) -> None:
    catcher, port = mail
    content = {"subject": "Indirim", "body": "duz metin", "html": "<p>html metin</p>"}
    assert channel(port).send(make_action(1, content=content)).outcome == "delivered"
    message = catcher.mails[0].message
    assert message.get_content_type() == "multipart/alternative"
    html = message.get_body(("html",))
    assert html is not None
    assert "<p>html metin</p>" in html.get_content()
    assert catcher.mails[0].text == "duz metin"


def test_no_address_bounces_with_a_clear_detail(mail: tuple[MailCatcher, int]) -> None:
    catcher, port = mail
    result = channel(port).send(make_action(9))  # user u9 has no email
    assert (result.outcome, result.attempts) == ("bounced", 1)
    assert "no email address" in result.detail
    assert "attributes.email" in result.detail
    assert catcher.mails == []


def test_no_email_content_bounces(mail: tuple[MailCatcher, int]) -> None:
    catcher, port = mail
    result = channel(port).send(make_action(1, content=None))
    assert result.outcome == "bounced"
    assert "no `email:` content" in result.detail
    assert catcher.mails == []


def test_a_line_break_in_the_subject_bounces(mail: tuple[MailCatcher, int]) -> None:
    _, port = mail
    result = channel(port).send(make_action(1, content={"subject": "a\nBcc: x@y.z"}))
    assert result.outcome == "bounced"
    assert "linefeed" in result.detail


def test_permanent_refusal_bounces_without_retry(mail: tuple[MailCatcher, int]) -> None:
    catcher, port = mail
    result = channel(port).send(make_action(2))
    assert (result.outcome, result.attempts) == ("bounced", 1)
    assert "550" in result.detail
    assert catcher.rcpt_attempts == 1


def test_transient_refusal_is_retried_then_failed(mail: tuple[MailCatcher, int]) -> None:
    catcher, port = mail
    result = channel(port).send(make_action(3))
    assert (result.outcome, result.attempts) == ("failed", FAST_RETRY.retries + 1)
    assert "451" in result.detail
    assert catcher.rcpt_attempts == FAST_RETRY.retries + 1


def test_no_server_fails_after_retries() -> None:
    result = channel(closed_port()).send(make_action(1))
    assert (result.outcome, result.attempts) == ("failed", FAST_RETRY.retries + 1)
    assert "ConnectionRefusedError" in result.detail


def test_a_failing_recipient_lookup_is_retried_not_raised(mail: tuple[MailCatcher, int]) -> None:
    _, port = mail

    def lookup(_user: str) -> str | None:
        raise ConnectionError("redis down")

    smtp = SmtpChannel("127.0.0.1", port, "shop@example.com", lookup, retry=FAST_RETRY)
    result = smtp.send(make_action(1))
    assert (result.outcome, result.attempts) == ("failed", FAST_RETRY.retries + 1)
    assert "recipient lookup failed" in result.detail


# -- STARTTLS -------------------------------------------------------------------


def test_starttls_is_on_by_default_and_logs_in_over_tls(
    tls_auth_mail: tuple[MailCatcher, int], tls_files: TlsFiles, logins: Logins
) -> None:
    catcher, port = tls_auth_mail
    smtp = SmtpChannel(
        "127.0.0.1",
        port,
        "shop@example.com",
        EMAILS.get,
        ca_file=str(tls_files.cert),
        username="shop",
        password="s3cret",
        retry=FAST_RETRY,
    )
    assert smtp.starttls
    result = smtp.send(make_action(1))
    assert result.outcome == "delivered", result.detail
    assert logins.seen == [("shop", True)]
    assert catcher.mail_from == [True]
    assert [m.recipients for m in catcher.mails] == [["ayse@example.com"]]


def test_a_server_without_starttls_gets_nothing_in_plain_text(
    plain_auth_mail: tuple[MailCatcher, int], logins: Logins
) -> None:
    catcher, port = plain_auth_mail
    smtp = channel(port, starttls=True, username="shop", password="s3cret")
    result = smtp.send(make_action(1))
    assert (result.outcome, result.attempts) == ("failed", 1)
    assert result.detail == (
        f"SMTP 127.0.0.1:{port} does not offer STARTTLS, which is required: nothing was sent "
        "in plain text; enable TLS on the server, or set `starttls: false` for a trusted "
        "loopback catcher"
    )
    assert (logins.seen, catcher.mail_from, catcher.mails) == ([], [], [])


def test_starttls_false_is_the_explicit_way_to_a_plain_catcher(
    plain_auth_mail: tuple[MailCatcher, int], logins: Logins
) -> None:
    catcher, port = plain_auth_mail
    result = channel(port, starttls=False, username="shop", password="s3cret").send(make_action(1))
    assert result.outcome == "delivered", result.detail
    assert (logins.seen, catcher.mail_from) == ([("shop", False)], [False])


def test_an_untrusted_certificate_fails_at_once(tls_mail: tuple[MailCatcher, int]) -> None:
    catcher, port = tls_mail
    result = channel(port, starttls=True).send(make_action(1))  # the system CAs only
    assert (result.outcome, result.attempts) == ("failed", 1)
    assert result.detail.startswith(f"SMTP 127.0.0.1:{port}: TLS certificate not trusted (")
    assert "`ca_file:`" in result.detail
    assert catcher.mail_from == []


# -- one connection per adapter ---------------------------------------------------


def test_one_connection_carries_many_emails_and_close_quits(mail: tuple[MailCatcher, int]) -> None:
    catcher, port = mail
    smtp = channel(port)
    results = [smtp.send(make_action(n, user_id="u1")) for n in range(6)]
    assert {r.outcome for r in results} == {"delivered"}
    assert len(catcher.mails) == 6
    assert len(set(catcher.peers)) == 1  # six MAIL commands, one connection
    smtp.close()
    assert smtp._smtp is None


def test_a_refused_recipient_keeps_the_connection(mail: tuple[MailCatcher, int]) -> None:
    catcher, port = mail
    smtp = channel(port)
    assert smtp.send(make_action(1, user_id="u2")).outcome == "bounced"
    assert smtp.send(make_action(2, user_id="u1")).outcome == "delivered"
    assert len(set(catcher.peers)) == 1
    smtp.close()


@pytest.fixture
def impatient_mail() -> Iterator[tuple[MailCatcher, int]]:
    """A server that drops a connection idle for 0.2 s."""
    yield from serve_mail(timeout=0.2)


def test_a_connection_the_server_dropped_is_replaced_without_a_retry(
    impatient_mail: tuple[MailCatcher, int],
) -> None:
    catcher, port = impatient_mail
    for idle_check_s in (60.0, 0.0):  # found dead under the send; found dead by NOOP
        smtp = channel(port, idle_check_s=idle_check_s)
        assert smtp.send(make_action(1, user_id="u1")).attempts == 1
        time.sleep(0.4)
        again = smtp.send(make_action(2, user_id="u1"))
        assert (again.outcome, again.attempts) == ("delivered", 1)
        smtp.close()
    assert len(catcher.mails) == 4
    assert len(set(catcher.peers)) == 4
