"""Fixtures for the adapter tests: real HTTP and SMTP servers on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.channels.support import (
    HookServer,
    MailCatcher,
    TlsFiles,
    make_tls_files,
    serve_hooks,
    serve_mail,
)


@pytest.fixture
def hook() -> Iterator[HookServer]:
    """A webhook receiver on a free port; script its answers through its fields."""
    yield from serve_hooks(HookServer())


@pytest.fixture
def mail() -> Iterator[tuple[MailCatcher, int]]:
    """An aiosmtpd server on a free port: (catcher, port)."""
    yield from serve_mail()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A self-signed certificate for 127.0.0.1, made once per session with openssl."""
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_mail(tls_files: TlsFiles) -> Iterator[tuple[MailCatcher, int]]:
    """An aiosmtpd server that requires STARTTLS before MAIL: (catcher, port)."""
    yield from serve_mail(tls_context=tls_files.server_context(), require_starttls=True)
