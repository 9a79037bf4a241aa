"""The console's ASGI app: who is asking, which page, and the answer.

Rules of this interface:

* Every path but ``/login`` and ``/healthz`` needs a user
  (:mod:`flows.console.auth`): a bearer token or the session cookie. Without
  one a GET is answered 401 with the login form, anything else 401 with one
  line. ``POST /login`` with a known token sets the session cookie and goes
  to the journeys page; a wrong token is a 401 with the form and a line.
* A POST made with the session cookie must carry the session's form token
  (field ``csrf``): without it, a 403 and nothing changes.
* Pages (:mod:`flows.console.pages`) run in a worker thread (they call Redis
  and Kafka, which block); a page's failure is a 500 with one line saying
  what failed, never a traceback.
"""

from __future__ import annotations

import asyncio
import logging

import redis

from engine.errors import ConfigError
from flows.asgi import BodyTooLarge, ClientGone, Receive, Scope, Send, lifespan
from flows.console.auth import COOKIE, Sessions, set_cookie
from flows.console.http import Answer, Request, read_request, redirect, send_answer
from flows.console.pages import Pages, Visit

LOG = logging.getLogger("tetik.console")
OPEN = {"/login", "/healthz"}


class Console:
    """The ASGI app (see the module rules)."""

    def __init__(self, sessions: Sessions, pages: Pages) -> None:
        self.sessions = sessions
        self.pages = pages

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            request = await read_request(scope, receive)
        except BodyTooLarge:
            await send_answer(send, Answer(413, b"the request is too large (over 8 MiB)\n"))
            return
        except ClientGone:  # nothing to answer
            return
        await send_answer(send, await self.answer(request))

    async def answer(self, request: Request) -> Answer:
        if request.path == "/healthz":
            return Answer(200, b"ok\n", content_type=b"text/plain")
        if request.path == "/login":
            return self._login(request)
        user, cookie = self._user(request)
        if user is None:
            if request.method == "GET":
                return Answer(401, self.pages.render("login.html", error="", next=request.path))
            return Answer(401, b"log in first (or send Authorization: Bearer TOKEN)\n")
        if request.path == "/logout" and request.method == "POST":
            return redirect("/login", [(b"set-cookie", set_cookie("", 0).encode())])
        if (
            request.method == "POST"
            and cookie
            and not self.sessions.form_ok(cookie, request.form().get("csrf", ""))
        ):
            return Answer(403, b"the form's token is missing or stale: reload the page\n")
        visit = Visit(user, self.sessions.form_token(cookie) if cookie else "")
        try:
            return await asyncio.to_thread(self.pages.dispatch, request, visit)
        except (redis.RedisError, ConfigError, OSError) as exc:
            LOG.warning("console: %s %s failed: %s", request.method, request.path, exc)
            line = f"{request.method} {request.path} failed: {exc}".splitlines()[0]
            return Answer(500, self.pages.render("error.html", visit=visit, message=line))
        except Exception as exc:  # a bug: its traceback goes to the log, one line to the page
            LOG.exception("console: %s %s failed", request.method, request.path)
            line = f"{request.method} {request.path} failed ({type(exc).__name__}): see the log"
            return Answer(500, self.pages.render("error.html", visit=visit, message=line))

    def _user(self, request: Request) -> tuple[str | None, str]:
        """The user, and the session cookie when that is how they came."""
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return self.sessions.who(auth[7:].strip()), ""
        cookie = request.cookies.get(COOKIE, "")
        return (self.sessions.user(cookie) if cookie else None), cookie

    def _login(self, request: Request) -> Answer:
        if request.method != "POST":
            return Answer(200, self.pages.render("login.html", error="", next="/"))
        form = request.form()
        user = self.sessions.who(form.get("token", ""))
        if user is None:
            body = self.pages.render("login.html", error="unknown token", next=form.get("next"))
            return Answer(401, body)
        target = form.get("next", "/")
        target = target if target.startswith("/") and not target.startswith("//") else "/"
        cookie = set_cookie(self.sessions.open(user))
        return redirect(target, [(b"set-cookie", cookie.encode())])
