"""``tetik run`` killed with SIGKILL while a broadcast goes out: each member once.

A base of shoppers is on the events topic before the engine starts; the rules
broadcast to a segment (``flash``, to the buyers) and to everyone in their own
zone (``flash_local``) at a wall time a few seconds after the start, and three
segment journeys (entering ``buyer`` and ``loyal``, leaving ``browser``) send as
purchases move shoppers between segments. The engine (two processes) is killed
while the broadcast's timer batches are being fired, purchases come in while it
is down, it is killed again while catching up, and the third start finishes:
the actions on the topic must be exactly ``tetik replay``'s for the same log up
to the same clock, and the memberships ``tetik segments --live --export`` reads
from Redis exactly ``tetik segments --at``'s.

Zones: a third of the base says ``Etc/GMT-1`` (UTC+1: the local instant is an
hour before its first event, so nobody there is enrolled), a third
``Etc/GMT+1`` (UTC-1: an hour after the test), the rest nothing (the rules'
UTC): only those get ``flash_local``.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from tests.flows.live import Live, comparable, event, live, produce, tally, wait_for_actions

# A kill scenario of a minute: `make chaos-short` runs it (in .ci/run), not `make test`.
pytestmark = [pytest.mark.integration, pytest.mark.scenario]

BASE = 4_000  # shoppers on the topic before the engine starts
AHEAD_S = 12  # the broadcast's instant, after the first start
SHARDS = "2"  # 1,000 flash and 667 flash_local members a shard: 4 timer batches each
BROADCASTS = ("flash", "flash_local")
WATCHED = ("buyer", "loyal", "browser")


def rules_text(at_ms: int) -> str:
    wall = datetime.fromtimestamp(at_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"""\
version: 1
timezone: UTC
consent: {{email: opt_out, push: opt_out}}
segments:
  buyer: "count(purchase) >= 1"
  loyal: "count(purchase) >= 2"
  browser: "count(view_product) >= 1 and count(purchase) == 0"
journeys:
  - {{id: first_buy, trigger: {{segment: buyer}}, steps: [{{send: email}}]}}
  - {{id: loyal_welcome, trigger: {{segment: loyal}}, steps: [{{send: push}}]}}
  - {{id: converted, trigger: {{segment: browser, on: exit}}, steps: [{{send: email}}]}}
  - id: flash
    trigger: {{schedule: "{wall}", segment: buyer}}
    steps: [{{send: email}}]
  - id: flash_local
    trigger: {{schedule: "{wall}", local: true}}
    steps: [{{send: push}}]
"""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def base(start: int, end: int) -> list[dict[str, Any]]:
    """Every shopper views a product; half buy; two thirds give a zone first."""
    docs: list[dict[str, Any]] = []
    step = (end - start) / BASE
    for i in range(BASE):
        user, ts = f"u{i}", start + int(i * step)
        if i % 3:
            zone = "Etc/GMT-1" if i % 3 == 1 else "Etc/GMT+1"
            docs.append(event(10 * i, user, "profile", ts, attributes={"timezone": zone}))
        docs.append(event(10 * i + 1, user, "view_product", ts + 1, product_id=f"p{i % 7}"))
        if i % 2 == 0:
            docs.append(event(10 * i + 2, user, "purchase", ts + 2, revenue=25.0))
    return docs


def purchases(start: int, users: range, tag: int) -> list[dict[str, Any]]:
    """A purchase each: a second one (loyal), a first one (buyer, leaves browser), or a
    newcomer's, first seen after the broadcast (never enrolled in it)."""
    return [
        event(100_000 * tag + i, f"u{i}", "purchase", start + 4 * k, revenue=40.0)
        for k, i in enumerate(users)
    ]


class Counter:
    """Counts the broadcast's actions on the topic as they arrive."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": "tests-count", "fetch.wait.max.ms": 10}
        )  # sees the first actions within milliseconds, so the kill comes early
        self.count = 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the engine creates its topics as it starts
            found = self._consumer.list_topics(topic, timeout=10).topics.get(topic)
            if found is not None and found.partitions:
                parts = [TopicPartition(topic, p, 0) for p in found.partitions]
                self._consumer.assign(parts)
                return
            time.sleep(0.2)
        raise AssertionError(f"tetik run did not create {topic} in 30 s")

    def until(self, at_least: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.count < at_least and time.monotonic() < deadline:
            for msg in self._consumer.consume(200, 0.02):
                if msg.error() is None and msg.value():
                    self.count += orjson.loads(msg.value())["journey"] in BROADCASTS
        return self.count

    def settle(self, idle_s: float = 0.5) -> int:
        """The count once nothing more has come for ``idle_s`` (after a kill: all of it)."""
        last = time.monotonic()
        while time.monotonic() - last < idle_s:
            for msg in self._consumer.consume(200, 0.02):
                if msg.error() is None and msg.value():
                    self.count += orjson.loads(msg.value())["journey"] in BROADCASTS
                    last = time.monotonic()
        return self.count

    def close(self) -> None:
        self._consumer.close()


@pytest.fixture
def session(
    redis_url: str,
    kafka_bootstrap: str,
    unique: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Live]:
    monkeypatch.setenv("TETIK_SHARDS", SHARDS)  # the engine's and tetik segments --live's
    with live(redis_url, kafka_bootstrap, unique, tmp_path) as found:
        yield found


def replayed(session: Live, log: Path, until: int) -> tuple[list[Any], dict[str, list[str]]]:
    """``tetik replay --until`` (every status) and ``tetik segments --at``, as the CLI says."""
    rules = str(session.workdir / "rules.yaml")
    done = session.cli("replay", "--rules", rules, "--events", str(log), "--until", str(until),
                       "--include-suppressed")  # fmt: skip
    assert done.returncode == 0, done.stderr
    actions = [orjson.loads(line) for line in done.stdout.splitlines()]
    done = session.cli("segments", "--rules", rules, "--events", str(log), "--at", str(until))
    assert done.returncode == 0, done.stderr
    lines = [orjson.loads(line) for line in done.stdout.splitlines()]
    return actions, {r["user_id"]: r["segments"] for r in lines}


def exported(session: Live, name: str) -> dict[str, list[str]]:
    done = session.cli("segments", "--live", "--export", name)
    assert done.returncode == 0, done.stderr
    lines = [orjson.loads(line) for line in done.stdout.splitlines()]
    return {r["user_id"]: r["segments"] for r in lines}


def test_kill_during_a_broadcast_sends_each_member_once(session: Live) -> None:
    started = now_ms()
    at = (started // 1000 + AHEAD_S) * 1000
    before = base(started - 40_000, started - 1_000)
    produce(session.bootstrap, session.events, before, paced=False)
    members = len(range(0, BASE, 2)) + len(range(0, BASE, 3))
    first = session.start("--rules", str(session.rules_file(rules_text(at))), "--processes", "2")
    counter = Counter(session.bootstrap, session.actions)
    try:
        seen = counter.until(1, timeout=AHEAD_S + 30)
        first.kill()  # SIGKILL, the broadcast part-way out
        first.wait()
        killed_at = counter.settle()
        print(f"broadcast: {seen} of {members} out at the first kill ({killed_at} after it)")
        assert 0 < killed_at < members, "the kill came after the broadcast: nothing was tested"
        time.sleep(max(0.0, (at + 2_500 - now_ms()) / 1000))
        sent = now_ms() - 1_500  # after the instant, in order, never ahead of the wall clock
        during = purchases(sent, range(0, 600, 3), tag=1)  # second buys, first buys
        during += purchases(sent + 1_000, range(BASE, BASE + 50), tag=2)  # newcomers
        produce(session.bootstrap, session.events, during, paced=False)
        second = session.start("--processes", "2")
        counter.until(killed_at + 1, timeout=20)  # catching up: kill it again
        second.kill()
        second.wait()
        print(f"broadcast: {counter.settle()} of {members} out at the second kill")
        third = session.start("--processes", "2")
        counter.until(members, timeout=30)
    finally:
        counter.close()
    until = now_ms()
    log = session.workdir / "events.jsonl"
    log.write_bytes(b"".join(orjson.dumps(d) + b"\n" for d in [*before, *during]))
    expected, memberships = replayed(session, log, until)
    emitted = wait_for_actions(session.bootstrap, session.actions, len(expected), timeout=30)
    counts = tally(expected, emitted)
    print(f"broadcast kill-and-restart: {counts}")
    journeys = {j: sum(a["journey"] == j for a in expected) for j in BROADCASTS}
    assert journeys == {"flash": len(range(0, BASE, 2)), "flash_local": len(range(0, BASE, 3))}
    assert {a["journey"] for a in expected} >= {"first_buy", "loyal_welcome", "converted"}
    sent = [(a["user_id"], a["journey"]) for a in emitted if a["journey"] in BROADCASTS]
    assert len(sent) == len(set(sent)) == members  # each member once, nobody twice
    assert counts.duplicates == counts.missing == counts.unexpected == 0, counts
    assert sorted(map(comparable, emitted)) == sorted(map(comparable, expected))
    for name in WATCHED:
        want = {u: s for u, s in memberships.items() if name in s}
        assert want, name
        assert exported(session, name) == want, name
    assert session.stop(third, signal.SIGINT) == 0, session.log()
