"""A ``tetik console`` on loopback against the session's Redis and Kafka, with data.

:func:`seeded` pushes examples/send_time_test.yaml as version 1 (by ``alice``),
replays its event log with the real engine and stores what the engine would
have left in Redis: every shopper's state (``{P:s}:state:U``) and the measures'
counters (``{P:s}:measures``); the log also goes to a fresh events topic for
backtests of recent events. :func:`serving` runs the app on uvicorn in a thread.
"""

from __future__ import annotations

import http.client
import re
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import redis
import uvicorn
from confluent_kafka import Producer

from engine.journeys import Engine
from engine.measurement import tally
from engine.replay import replay
from engine.rules.loader import load_rules
from engine.state import UserState, dumps
from flows.jobs.collect import bind
from flows.jobs.console import console_app
from flows.kafka.topics import ensure_topics
from flows.settings import Settings
from flows.stores.rules import RulesStore

EXAMPLES = Path(__file__).parents[3] / "examples"
RULES = EXAMPLES / "send_time_test.yaml"
EVENTS = EXAMPLES / "send_time_test.events.jsonl"
TOKENS = (("alice", "alice-token-0001"), ("bob", "bob-token-0002"))
CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')


@dataclass
class Served:
    url: str
    port: int
    settings: Settings
    store: RulesStore


def seeded(redis_url: str, kafka_bootstrap: str, rules: str | None = None) -> Settings:
    """Settings of a fresh prefix and topic holding the example's version (or ``rules``),
    states, measures and events (see the module docstring)."""
    tag = f"console{uuid.uuid4().hex[:8]}"
    settings = Settings(
        redis_url=redis_url,
        kafka_bootstrap=kafka_bootstrap,
        prefix=tag,
        events_topic=f"{tag}.events",
        events_partitions=2,
        console_tokens=TOKENS,
    )
    client = redis.Redis.from_url(redis_url)
    text = RULES.read_bytes() if rules is None else rules.encode()
    RulesStore(client, tag, secret="").push(text, RULES.name, "alice")
    engine = Engine(load_rules(RULES.read_bytes(), RULES.name), settings.windows)
    engine.measures = []
    states: dict[str, UserState] = {}
    lines = EVENTS.read_bytes().splitlines()
    actions = replay(engine, lines, drain=True, states=states)
    keys = settings.keys
    pipe = client.pipeline(transaction=False)
    for identity, state in states.items():
        pipe.set(keys.state(identity), dumps(state))
    for name, n in tally(actions, engine.measures).items():
        pipe.hincrby(keys.shard(0).measures, name, n)
    pipe.execute()
    client.close()
    ensure_topics(kafka_bootstrap, {settings.events_topic: 2}, timeout=30)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for line in lines:
        producer.produce(settings.events_topic, line)
    assert producer.flush(10) == 0
    del producer
    return settings


@contextmanager
def serving(settings: Settings) -> Iterator[Served]:
    """The console app on uvicorn on a loopback port, for the block."""
    app = console_app(settings)
    config = uvicorn.Config(app, lifespan="on", access_log=False, log_level="warning")
    server = uvicorn.Server(config)
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started
    try:
        yield Served(f"http://127.0.0.1:{port}", port, settings, app.pages.store)
    finally:
        server.should_exit = True
        thread.join(10)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    text: str


class Browser:
    """A cookie-keeping HTTP client (one cookie: the console's session)."""

    def __init__(self, served: Served) -> None:
        self.port = served.port
        self.cookie = ""

    def request(
        self,
        method: str,
        path: str,
        form: dict[str, str] | None = None,
        files: dict[str, tuple[str, bytes]] | None = None,
        **headers: str,
    ) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        sent = {k.replace("_", "-"): v for k, v in headers.items()}
        if self.cookie:
            sent["Cookie"] = self.cookie
        body = None
        if files is not None:
            body, sent["Content-Type"] = multipart(form or {}, files)
        elif form is not None:
            body = urlencode(form).encode()
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            conn.request(method, path, body, sent)
            answer = conn.getresponse()
            headers = {k.lower(): v for k, v in answer.getheaders()}
            reply = Reply(answer.status, headers, answer.read().decode())
        finally:
            conn.close()
        cookie = reply.headers.get("set-cookie", "")
        if cookie:
            self.cookie = cookie.split(";")[0]
        return reply

    def login(self, token: str) -> Reply:
        return self.request("POST", "/login", {"token": token, "next": "/"})

    def csrf(self, path: str = "/versions") -> str:
        found = CSRF.search(self.request("GET", path).text)
        assert found, "no form token on the page"
        return found.group(1)


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body as a browser sends it, and its Content-Type."""
    boundary = f"----tetik{uuid.uuid4().hex}"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        + value.encode()
        + b"\r\n"
        for name, value in fields.items()
    ]
    parts += [
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        + data
        + b"\r\n"
        for name, (filename, data) in files.items()
    ]
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"
