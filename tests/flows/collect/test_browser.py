"""analytics.js in a real browser against ``tetik collect``: Segment's analytics-next (npm, in
tests/browser/) on a storefront page in headless Chromium (Debian's ``chromium``) posts page,
track and identify calls cross-origin to the collector, and they land on the events topic
mapped as SPEC section 12 says; a call the collector refused with a 503 is sent again
(with analytics.js's X-Retry-Count header, which the collector's CORS preflight must allow).

The driver is Chromium itself (``--headless --dump-dom`` with a virtual time budget): the
page writes its outcome into the DOM, which Chromium prints when the page is done; no
driver library to keep in step with the browser. Missing Chromium or ``npm ci`` is a
failure saying what to install (make test installs both), never a skip."""

from __future__ import annotations

import html
import http.client
import re
import shutil
import subprocess
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlencode

import orjson
import pytest

from tests.flows.collect.test_collect import KEY, Served, events
from tests.flows.collect.test_collect import served as served  # the collector fixture

pytestmark = pytest.mark.integration

BROWSER = Path(__file__).parents[2] / "browser"
BUNDLES = "/analytics-next/bundles/"  # where analytics.js loads itself and its chunks from
UMD = BROWSER / "node_modules" / "@segment" / "analytics-next" / "dist" / "umd"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # root in CI
    "--disable-gpu",
    "--disable-dev-shm-usage",
    # no calls home: on a machine without internet they are refused and slow the start
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--virtual-time-budget=8000",  # ms of page time after load; network waits do not count
)
RESULT = re.compile(r'<pre id="result">(.*?)</pre>', re.S)


class _Storefront(SimpleHTTPRequestHandler):
    """tests/browser/storefront.html, and analytics.js's bundle under :data:`BUNDLES`."""

    def translate_path(self, path: str) -> str:
        if path.startswith(BUNDLES):
            return str(UMD / path.removeprefix(BUNDLES).split("?")[0])
        return str(BROWSER / "storefront.html")

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _OnceUnavailable(BaseHTTPRequestHandler):
    """In front of the collector: the first POST is a 503 (as when Kafka does not take the
    events), every other request (preflights too) goes through; :attr:`retries` holds the
    X-Retry-Count of each POST."""

    collector = 0  # its port
    retries: ClassVar[list[str | None]]

    def do_OPTIONS(self) -> None:
        self._forward()

    def do_POST(self) -> None:
        self.retries.append(self.headers.get("X-Retry-Count"))
        if len(self.retries) == 1:
            self._reply(503, [("Access-Control-Allow-Origin", "*")], b'{"success": false}')
        else:
            self._forward()

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        conn = http.client.HTTPConnection("127.0.0.1", self.collector, timeout=10)
        try:
            conn.request(self.command, self.path, body, dict(self.headers.items()))
            answer = conn.getresponse()
            data = answer.read()
        finally:
            conn.close()
        passed = [(k, v) for k, v in answer.getheaders() if k.lower().startswith("access-control")]
        self._reply(answer.status, [("Content-Type", "application/json"), *passed], data)

    def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serving(handler: Callable[..., BaseHTTPRequestHandler]) -> Iterator[int]:
    """An HTTP server on loopback for the block; its port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def storefront() -> Iterator[str]:
    if shutil.which("chromium") is None:
        pytest.fail("no chromium on PATH: apt-get install --no-install-recommends chromium")
    if not (UMD / "index.js").is_file():
        pytest.fail("no analytics.js in tests/browser/node_modules: run `npm ci` in tests/browser")
    with serving(partial(_Storefront, directory=str(BROWSER))) as port:
        yield f"http://127.0.0.1:{port}/storefront.html"


def browse(url: str, profile: Path) -> dict[str, Any]:
    """Open ``url`` in headless Chromium until the page is done; the page's #result."""
    chromium = shutil.which("chromium") or "chromium"
    command = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    found = RESULT.search(done.stdout)
    assert found, f"chromium exited {done.returncode} without the page: {done.stderr[-2000:]}"
    result = html.unescape(found.group(1))
    assert result.startswith("{"), f"the page says {result!r}"
    parsed: dict[str, Any] = orjson.loads(result)
    return parsed


def test_analytics_js_in_chromium_lands_on_the_events_topic(
    served: Served,
    storefront: str,
    tmp_path: Path,
) -> None:
    user, order = f"u-{uuid.uuid4().hex[:8]}", f"o-{uuid.uuid4().hex[:8]}"
    query = {"api": f"127.0.0.1:{served.port}/v1", "key": KEY, "user": user, "order": order}
    assert str(served.port) not in storefront  # another origin: the calls need CORS
    page = browse(f"{storefront}?{urlencode(query)}", tmp_path / "profile")
    assert page["failed"] == []
    anon = page["anonymousId"]
    got = {event.type: event for event in events(served, anon, 4)}
    assert sorted(got) == ["page_view", "profile", "purchase", "view_product"]
    assert all(event.event_id.startswith("ajs-next-") for event in got.values())  # messageId
    # before identify the shopper is anonymous; from identify on, both ids link them
    ids = {kind: (event.user_id, event.anon_id) for kind, event in got.items()}
    assert ids == {
        "page_view": (None, anon),
        "view_product": (None, anon),
        "profile": (user, anon),
        "purchase": (user, anon),
    }
    viewed, bought = got["view_product"], got["purchase"]
    assert (viewed.product_id, viewed.category, viewed.price) == ("p-101", "shirts", 39.9)
    shown = got["page_view"].props or {}  # the call's, and what analytics.js adds of the page
    assert {key: shown.get(key) for key in ("name", "category", "path", "title")} == {
        "name": "Linen shirt",
        "category": "Shop",
        "path": "/p/p-101",
        "title": "tetik storefront",
    }
    assert shown["url"].startswith(storefront)
    attributes = got["profile"].attributes or {}
    assert (attributes["email"], attributes["first_name"]) == (f"{user}@example.com", "Ada")
    assert (bought.order_id, bought.revenue) == (order, 89.8)
    items = [(item.product_id, item.price, item.quantity) for item in bought.items or ()]
    assert items == [("p-101", 39.9, 1), ("p-202", 50.0, 1)]


def test_the_preflight_allows_what_analytics_js_sends(
    served: Served,
) -> None:
    """analytics.js posts with basic auth, and X-Retry-Count when it sends a call again."""
    asked = "authorization,content-type,x-retry-count"
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
    try:
        conn.request(
            "OPTIONS",
            "/v1/t",
            headers={
                "Origin": "http://127.0.0.1:1",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": asked,
            },
        )
        answer = conn.getresponse()
        answer.read()
    finally:
        conn.close()
    assert answer.status == 204
    assert answer.getheader("access-control-allow-origin") == "*"
    assert "POST" in (answer.getheader("access-control-allow-methods") or "")
    allowed = {
        h.strip() for h in (answer.getheader("access-control-allow-headers") or "").split(",")
    }
    assert set(asked.split(",")) <= allowed


def test_a_call_analytics_js_sends_again_gets_through_the_preflight(
    served: Served,
    storefront: str,
    tmp_path: Path,
) -> None:
    """A 503 (Kafka did not take the call) makes analytics.js send it again with
    X-Retry-Count, a header of its own: the collector's preflight must allow it."""
    user = f"u-{uuid.uuid4().hex[:8]}"

    class Front(_OnceUnavailable):
        collector = served.port
        retries: ClassVar[list[str | None]] = []

    with serving(Front) as port:
        query = {"api": f"127.0.0.1:{port}/v1", "key": KEY, "user": user, "order": "o-1"}
        page = browse(f"{storefront}?{urlencode(query)}", tmp_path / "profile")
    got = events(served, page["anonymousId"], 4)
    assert sorted(event.type for event in got) == [
        "page_view",  # the call refused with a 503, sent again
        "profile",
        "purchase",
        "view_product",
    ]
    assert Counter(Front.retries) == {None: 4, "1": 1}  # 4 calls, 1 sent again
