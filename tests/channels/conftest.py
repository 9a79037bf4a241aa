"""Fixtures for the adapter tests: real HTTP and SMTP servers on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.channels.support import HookServer, MailCatcher, serve_hooks, serve_mail


@pytest.fixture
def hook() -> Iterator[HookServer]:
    """A webhook receiver on a free port; script its answers through its fields."""
    yield from serve_hooks(HookServer())


@pytest.fixture
def mail() -> Iterator[tuple[MailCatcher, int]]:
    """An aiosmtpd server on a free port: (catcher, port)."""
    yield from serve_mail()
