"""Helpers for tests of the live engine: run ``tetik run`` as a real process, feed and read Kafka.

Everything here talks to the session's real Redis and Kafka; each test gets
its own topics and Redis prefix (``Live.env``), so tests never see each
other's data.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

from engine.actions import Action, to_dict
from engine.journeys import Engine
from engine.replay import replay
from engine.rules.loader import load_rules

RULES = """\
version: 1
consent: {email: opt_out, push: opt_out, sms: opt_in}
templates:
  cart:
    email: {subject: "Your cart: {{ entry.product_id }}"}
    push: {title: "Still in your cart"}
journeys:
  - id: cart
    trigger: add_to_cart
    key: product_id
    exit: [purchase]
    steps:
      - wait: 2s
      - send: email
        template: cart
      - wait: 1s
      - send: push
        template: cart
  - id: browse
    trigger: {event: view_product, if: "count(view_product, 1h) >= 2"}
    reentry: never
    steps:
      - send: push
  - id: thanks
    trigger: purchase
    steps:
      - send: email
"""


@dataclass
class Live:
    """One test's topics, prefix and working directory on the session's servers."""

    redis_url: str
    bootstrap: str
    name: str
    workdir: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def events(self) -> str:
        return f"{self.name}.events"

    @property
    def actions(self) -> str:
        return f"{self.name}.actions"

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "TETIK_REDIS_URL": self.redis_url,
            "TETIK_KAFKA_BOOTSTRAP": self.bootstrap,
            "TETIK_PREFIX": self.name,
            "TETIK_EVENTS_TOPIC": self.events,
            "TETIK_DLQ_TOPIC": f"{self.name}.events.dlq",
            "TETIK_ACTIONS_TOPIC": self.actions,
        }

    def rules_file(self, text: str = RULES, name: str = "rules.yaml") -> Path:
        path = self.workdir / name
        path.write_text(text)
        return path

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a one-shot ``tetik`` command against this test's servers."""
        command = [sys.executable, "-m", "cli.main", *args]
        return subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=60)

    def start(self, *args: str, log: str = "run.log") -> subprocess.Popen[bytes]:
        """Start ``tetik run`` (recovery in the test's directory) in the background."""
        command = [
            sys.executable, "-m", "cli.main", "run",
            "--recovery-dir", str(self.workdir / "recovery"),
            "--snapshot-interval", "0.5", *args,
        ]  # fmt: skip
        out = (self.workdir / log).open("ab")
        proc = subprocess.Popen(command, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def log(self, name: str = "run.log") -> str:
        return (self.workdir / name).read_text(errors="replace")

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGINT) -> int:
        proc.send_signal(sig)
        return proc.wait(timeout=30)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@contextmanager
def live(redis_url: str, bootstrap: str, name: str, workdir: Path) -> Iterator[Live]:
    session = Live(redis_url, bootstrap, name, workdir)
    try:
        yield session
    finally:
        session.close()


def event(n: int, user: str, kind: str, ts: int, **fields: Any) -> dict[str, Any]:
    return {"event_id": f"e{n}", "type": kind, "ts": ts, "user_id": user, **fields}


def produce(bootstrap: str, topic: str, docs: Sequence[dict[str, Any]], paced: bool = True) -> None:
    """Send each event to ``topic`` (key = user), waiting until its ``ts`` when ``paced``."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1})
    for doc in docs:
        if paced:
            delay = doc["ts"] / 1000 - time.time()
            if delay > 0:
                time.sleep(delay)
        producer.produce(topic, orjson.dumps(doc), key=str(doc.get("user_id", "")).encode())
        producer.poll(0)
    producer.flush(10)


def read_topic(bootstrap: str, topic: str, idle_s: float = 1.0, limit_s: float = 30) -> list[Any]:
    """Every JSON record of ``topic``, read until ``idle_s`` without one."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "tests-read"})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
        return _drain(consumer, idle_s, limit_s)
    finally:
        consumer.close()


def _drain(consumer: Consumer, idle_s: float, limit_s: float) -> list[Any]:
    records: list[Any] = []
    start = last = time.monotonic()
    while time.monotonic() - last < idle_s and time.monotonic() - start < limit_s:
        for msg in consumer.consume(500, 0.1):
            if msg.error() is None and msg.value():
                records.append(orjson.loads(msg.value()))
                last = time.monotonic()
    return records


def wait_for_actions(
    bootstrap: str, topic: str, count: int, timeout: float = 30, settle: float = 1.5
) -> list[Any]:
    """The actions topic once it holds ``count`` records (plus ``settle`` s for extras)."""
    deadline = time.monotonic() + timeout
    records: list[Any] = []
    while time.monotonic() < deadline:
        records = read_topic(bootstrap, topic, idle_s=0.3, limit_s=5)
        if len(records) >= count:
            break
        time.sleep(0.3)
    time.sleep(settle)
    return read_topic(bootstrap, topic, idle_s=0.5)


def expected_actions(rules_text: str, docs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """What ``tetik replay --drain --include-suppressed`` says the rules call for."""
    engine = Engine(load_rules(rules_text, "rules.yaml"))
    actions: list[Action] = replay(engine, [orjson.dumps(d) for d in docs], drain=True)
    return [to_dict(a) for a in actions]


def comparable(record: dict[str, Any]) -> tuple[Any, ...]:
    """An action without the live-only ``ingested_at``."""
    return tuple(sorted((k, orjson.dumps(v)) for k, v in record.items() if k != "ingested_at"))


@dataclass(frozen=True)
class Tally:
    """Expected against emitted: the kill-and-restart test's figures."""

    expected: int
    emitted: int
    duplicates: int
    missing: int
    unexpected: int


def tally(expected: list[dict[str, Any]], emitted: list[dict[str, Any]]) -> Tally:
    want = {a["action_id"] for a in expected}
    got = [a["action_id"] for a in emitted]
    return Tally(
        expected=len(want),
        emitted=len(got),
        duplicates=len(got) - len(set(got)),
        missing=len(want - set(got)),
        unexpected=len(set(got) - want),
    )
