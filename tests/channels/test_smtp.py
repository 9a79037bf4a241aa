"""The SMTP adapter against a real SMTP server (aiosmtpd on loopback)."""

from __future__ import annotations

from channels.smtp import SmtpChannel
from tests.channels.support import FAST_RETRY, MailCatcher, closed_port, make_action

EMAILS = {"u1": "ayse@example.com", "u2": "bounce@example.com", "u3": "busy@example.com"}


def channel(port: int, emails: dict[str, str] = EMAILS) -> SmtpChannel:
    return SmtpChannel(
        "127.0.0.1", port, "shop@example.com", emails.get, timeout=2.0, retry=FAST_RETRY
    )


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
