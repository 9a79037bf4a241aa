"""Who uses the console: tokens, sessions and form tokens.

Rules of this interface:

* Users and their tokens come from ``TETIK_CONSOLE_TOKENS`` (``NAME:TOKEN``
  pairs, :mod:`flows.settings`); a token is compared in constant time, and
  the NAME is the author of every push and rollback made with it.
* A request is someone's when it carries ``Authorization: Bearer TOKEN`` or
  the session cookie the login form sets. The cookie is
  ``NAME.EXPIRES.MAC`` (HMAC-SHA256 with a key drawn at start: a restart
  logs everyone out), ``HttpOnly`` and ``SameSite=Strict``, for
  :data:`SESSION_S` seconds. Sessions are kept nowhere: logging out clears
  the browser's cookie, but a copy of it stays valid until it expires or
  the console restarts.
* Every form that changes something carries a form token,
  :meth:`Sessions.form_token` of the session (an HMAC of it), checked by
  :meth:`Sessions.form_ok`; a bearer request needs none (no browser sends
  that header on its own). With the SameSite cookie this keeps other sites
  from pushing rules through a logged-in browser.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable

SESSION_S = 12 * 3600
COOKIE = "tetik_console"


class Sessions:
    """Tokens to names, and the signed sessions of those names."""

    def __init__(
        self, tokens: tuple[tuple[str, str], ...], clock: Callable[[], float] = time.time
    ) -> None:
        self._tokens = tokens
        self._key = secrets.token_bytes(32)
        self._clock = clock

    def who(self, token: str) -> str | None:
        """The name of ``token``, or None (every pair compared: constant time)."""
        found = None
        for name, known in self._tokens:
            if hmac.compare_digest(known.encode(), token.encode()):
                found = name
        return found

    def open(self, name: str) -> str:
        """A session cookie value for ``name``."""
        expires = int(self._clock()) + SESSION_S
        body = f"{name}.{expires}"
        return f"{body}.{self._mac(body)}"

    def user(self, cookie: str) -> str | None:
        """The name of a valid, unexpired session, else None."""
        body, _, mac = cookie.rpartition(".")
        name, _, expires = body.rpartition(".")
        if not name or not expires.isdigit() or not hmac.compare_digest(mac, self._mac(body)):
            return None
        if int(expires) < self._clock() or name not in {n for n, _ in self._tokens}:
            return None
        return name

    def form_token(self, cookie: str) -> str:
        """The token forms of this session carry."""
        return self._mac(f"form:{cookie}")

    def form_ok(self, cookie: str, token: str) -> bool:
        return bool(cookie) and hmac.compare_digest(self.form_token(cookie), token)

    def _mac(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()


def set_cookie(value: str, max_age: int = SESSION_S) -> str:
    """The Set-Cookie header of a session (``max_age`` 0 ends it)."""
    return f"{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}"
