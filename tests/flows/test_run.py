"""``tetik run`` as a real process on the real servers: parity with replay, crashes, processes.

Events are produced at their own ``ts`` (the shopper's clock is the wall
clock), waits are seconds, and what the engine emits on the actions topic is
compared with what ``tetik replay`` computes from the same log.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
import redis

from engine.actions import to_dict
from engine.events import decode_event
from engine.journeys import Engine
from engine.measurement import rows as report_rows
from engine.measurement import tally as tally_measures
from engine.replay import FOREVER, replay
from engine.rules.loader import load_rules
from engine.state import UserState
from flows.stores.keys import Keys
from flows.stores.states import read_stats
from tests.flows.live import (
    RULES,
    Live,
    comparable,
    event,
    expected_actions,
    live,
    produce,
    read_topic,
    tally,
    wait_for_actions,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def session(redis_url: str, kafka_bootstrap: str, unique: str, tmp_path: Path) -> Iterator[Live]:
    with live(redis_url, kafka_bootstrap, unique, tmp_path) as found:
        yield found


@pytest.fixture(params=["redis", "cluster"])
def any_redis(
    request: pytest.FixtureRequest,
    redis_url: str,
    kafka_bootstrap: str,
    unique: str,
    tmp_path: Path,
) -> Iterator[Live]:
    """A session on the session's Redis, or on its three-master Redis Cluster
    (``TETIK_REDIS_URL=redis+cluster://...``): the same actions are expected of both."""
    url = redis_url
    if request.param == "cluster":
        url = request.getfixturevalue("valkey_cluster").url
    with live(url, kafka_bootstrap, unique, tmp_path) as found:
        yield found


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def shoppers(start: int, users: int, first: int = 0) -> list[dict[str, Any]]:
    """A scripted mix over about 2 s: carts (some bought), repeated views, a duplicate."""
    docs: list[dict[str, Any]] = []
    for i in range(users):
        user, ts, n = f"u{first + i}", start + i * 60, 1000 * (first + i)
        docs.append(event(n, user, "add_to_cart", ts, product_id=f"p{i % 3}", price=30.0))
        if i % 3 == 0:
            docs.append(event(n + 1, user, "purchase", ts + 900))
        if i % 4 == 1:
            docs.append(event(n + 2, user, "view_product", ts + 100, product_id="p1"))
            docs.append(event(n + 3, user, "view_product", ts + 200, product_id="p2"))
    return sorted(docs, key=lambda d: d["ts"])


# An experiment (SPEC section 11): a holdout, a split and a goal, beside RULES' journeys.
EXPERIMENT = """\
  - id: trial
    trigger: add_to_cart
    key: product_id
    holdout: 20%
    goal: {event: purchase, within: 1d}
    steps:
      - split: {a: 50, b: 50}
        a: [{send: email}]
        b: [{wait: 1s}, {send: push}]
"""


def test_live_actions_equal_replay(any_redis: Live) -> None:
    session = any_redis
    rules = RULES + EXPERIMENT
    docs = shoppers(now_ms() + 500, 24)
    proc = session.start("--rules", str(session.rules_file(rules)))
    produce(session.bootstrap, session.events, [*docs, docs[3]])  # the last one is redelivered
    produce(session.bootstrap, session.events, [{"type": "nonsense"}], paced=False)
    expected = expected_actions(rules, docs)
    emitted = wait_for_actions(session.bootstrap, session.actions, len(expected))
    assert session.stop(proc) == 0, session.log()
    assert sorted(map(comparable, emitted)) == sorted(map(comparable, expected))
    variants = {a.get("variant") for a in emitted if a["journey"] == "trial"}
    assert variants == {"a", "b", "holdout"}  # the live engine assigns as replay does
    timed = {"cart", "trial/0.b.1"}  # sent by timers: no causing event, no ingested_at
    caused = [a for a in emitted if {a["journey"], f"{a['journey']}/{a['step']}"}.isdisjoint(timed)]
    assert all("ingested_at" in a for a in caused)
    dlq = read_topic(session.bootstrap, f"{session.name}.events.dlq", idle_s=0.5)
    assert dlq == [{"type": "nonsense"}]
    counts = tally(expected, emitted)
    assert counts.duplicates == counts.missing == counts.unexpected == 0, counts
    assert_live_report_is_replays(session, rules, docs)
    shown = session.cli("state", "u1")  # `tetik state` reads the same Redis (or cluster)
    assert shown.returncode == 0, shown.stderr
    state = orjson.loads(shown.stdout)
    u1 = {d["event_id"] for d in docs if d["user_id"] == "u1"}
    assert (state["user"], state["events_applied"]) == ("u1", len(u1))


def test_kill_and_restart_emits_every_action_once(any_redis: Live) -> None:
    """SIGKILL mid-stream and while catching up, purchases while down: each action once.

    The first kill lands after a stretch of emitted actions newer than the
    last recovery snapshot, so the restart processes it again (the ledger
    must drop them); carts bought while the engine is down get no reminder.
    On one Redis and on a Redis Cluster alike.
    """
    session = any_redis
    rules = str(session.rules_file())
    first = session.start("--rules", rules)
    warmup = [event(1, "w0", "purchase", now_ms())]
    produce(session.bootstrap, session.events, warmup)
    wait_for_actions(session.bootstrap, session.actions, 1, settle=0)
    start = now_ms() + 200
    before = shoppers(start, 30)  # about 3 s of traffic, an action every few events
    produce(session.bootstrap, session.events, before)
    time.sleep(0.3)  # emitted, but the last snapshot (every 1 s) is older
    first.kill()
    first.wait()
    down = now_ms() + 50
    pending = [d["user_id"] for d in before if d["type"] == "add_to_cart" and d["ts"] > down - 1700]
    buyers = [u for u in pending if int(u[1:]) % 3][:3]  # carts not bought yet, reminder ahead
    assert buyers
    during = [  # while down: purchases before the reminders fall due, and new carts
        *(event(9000 + n, user, "purchase", down + n * 20) for n, user in enumerate(buyers)),
        *shoppers(down + 100, 8, first=100),
    ]
    produce(session.bootstrap, session.events, sorted(during, key=_ts))
    time.sleep(1.0)  # reminders of the carts not bought fall due while the engine is down
    second = session.start()
    time.sleep(3.0)  # in the middle of catching up (startup takes about 2 s)
    second.kill()
    second.wait()
    third = session.start()
    expected = expected_actions(RULES, sorted([*warmup, *before, *during], key=_ts))
    emitted = wait_for_actions(session.bootstrap, session.actions, len(expected), timeout=40)
    assert session.stop(third) == 0, session.log()
    counts = tally(expected, emitted)
    print(f"kill-and-restart: {counts}")
    assert counts.duplicates == counts.missing == counts.unexpected == 0, counts
    assert not [a for a in emitted if a["user_id"] in buyers and a["journey"] == "cart"]
    # the shards' measure counts were committed with their states: none lost or doubled
    assert_live_report_is_replays(session, RULES, sorted([*warmup, *before, *during], key=_ts))


def assert_live_report_is_replays(session: Live, rules: str, docs: list[dict[str, Any]]) -> None:
    """``tetik report --live --json`` gives the rows of ``tetik report`` (a drained replay)."""
    engine = Engine(load_rules(rules, "rules.yaml"))
    engine.measures = []
    actions = replay(engine, [orjson.dumps(d) for d in docs], drain=True)
    expected = report_rows(tally_measures(actions, engine.measures))
    assert expected
    shown = session.cli("report", "--live", "--json")
    assert shown.returncode == 0, shown.stderr
    assert orjson.loads(shown.stdout) == orjson.loads(msgspec.json.encode(expected))


def _ts(doc: dict[str, Any]) -> int:
    return int(doc["ts"])


def test_two_processes_emit_what_replay_does(session: Live) -> None:
    docs = shoppers(now_ms() + 500, 20)
    proc = session.start("--rules", str(session.rules_file()), "--processes", "2")
    produce(session.bootstrap, session.events, docs)
    expected = expected_actions(RULES, docs)
    emitted = wait_for_actions(session.bootstrap, session.actions, len(expected), timeout=40)
    assert session.stop(proc) == 0, session.log()
    assert sorted(map(comparable, emitted)) == sorted(map(comparable, expected))


def test_a_second_signal_is_not_needed_to_stop(session: Live, redis_url: str) -> None:
    """SIGTERM stops the engine cleanly and its state is in Redis."""
    proc = session.start("--rules", str(session.rules_file()))
    produce(session.bootstrap, session.events, shoppers(now_ms() + 200, 3))
    wait_for_actions(session.bootstrap, session.actions, 2, settle=0.2)
    assert session.stop(proc, signal.SIGTERM) == 0, session.log()
    client = redis.Redis.from_url(redis_url)
    assert client.exists(Keys(session.name).state("u1"))


HOT_V1 = """\
version: 1
consent: {email: opt_out, push: opt_out, onsite: opt_out}
journeys:
  - id: cart
    trigger: add_to_cart
    key: product_id
    steps:
      - wait: 5s  # still in flight when v2 goes live
      - send: email
  - id: browse
    trigger: view_product
    steps:
      - wait: 6s  # v2 removes this journey before its send is due
      - send: push
  - id: probe
    trigger: login
    steps:
      - send: onsite
"""

HOT_V2 = """\
version: 1
consent: {email: opt_out, push: opt_out, onsite: opt_out}
journeys:
  - id: cart
    trigger: add_to_cart
    key: product_id
    steps:
      - send: push
      - wait: 1s
      - send: email
  - id: probe
    trigger: login
    steps:
      - send: onsite
"""


def switched_replay(phase_a: list[dict[str, Any]], phase_b: list[dict[str, Any]]) -> list[Any]:
    """The core's answer: v1 runs phase A, then the engine switches to v2 for phase B."""
    engine = Engine(load_rules(HOT_V1, "v1.yaml"))
    states: dict[str, UserState] = {}
    actions = []
    for phase in (phase_a, phase_b):
        for doc in phase:
            state = states.setdefault(doc["user_id"], UserState(key=doc["user_id"]))
            actions += engine.on_event(state, decode_event(orjson.dumps(doc)), doc["ts"])
        if phase is phase_a:
            engine = engine.successor(load_rules(HOT_V2, "v2.yaml"))
    for state in states.values():
        actions += engine.advance(state, FOREVER)
    return [to_dict(a) for a in actions]


def test_rules_push_switches_the_running_engine(session: Live, redis_url: str) -> None:
    """Push v2 while events flow: nothing lost or doubled, new entries follow v2."""
    v1_file, v2_file = session.rules_file(HOT_V1, "v1.yaml"), session.rules_file(HOT_V2, "v2.yaml")
    proc = session.start("--rules", str(v1_file))
    start = now_ms() + 200
    phase_a = [event(i, f"a{i}", "add_to_cart", start + i * 50, product_id="p1") for i in range(5)]
    phase_a += [
        event(10 + i, f"v{i}", "view_product", start + 300 + i * 50, product_id="p2")
        for i in range(3)
    ]
    produce(session.bootstrap, session.events, phase_a)
    wait_for_actions(session.bootstrap, session.actions, 0, settle=0.3)
    probes = ProbeStream(session, now_ms() + 200, count=40, every_ms=50)  # 2 s of logins
    probes.start()
    time.sleep(0.5)
    pushed_at = now_ms()
    push = session.cli("rules", "push", str(v2_file))
    assert push.returncode == 0, push.stderr
    phase_b_start = max(now_ms(), pushed_at) + 1100  # the switch must be done within 1 s
    phase_b = [
        event(100 + i, f"b{i}", "add_to_cart", phase_b_start + i * 50, product_id="p1")
        for i in range(5)
    ]
    phase_b += [event(110, "v0", "view_product", phase_b_start + 300, product_id="p1")]
    produce(session.bootstrap, session.events, phase_b)
    probes.join()
    expected = switched_replay(phase_a, phase_b)
    emitted = wait_for_actions(
        session.bootstrap, session.actions, len(expected) + len(probes.docs), timeout=30
    )
    assert session.stop(proc) == 0, session.log()
    journeys = [a for a in emitted if a["journey"] != "probe"]
    assert sorted(map(comparable, journeys)) == sorted(map(comparable, expected))
    probe_actions = sorted((a for a in emitted if a["journey"] == "probe"), key=lambda a: a["at"])
    assert len(probe_actions) == len({a["action_id"] for a in probe_actions}) == len(probes.docs)
    versions = [a["rules_version"] for a in probe_actions]
    v1, v2 = versions[0], versions[-1]
    assert v1 != v2
    assert all(a["rules_version"] == v1 for a in probe_actions if a["at"] < pushed_at)
    first_v2 = next(a["at"] for a in probe_actions if a["rules_version"] == v2)
    print(f"rules push -> first action of the new version: {first_v2 - pushed_at} ms")
    assert all(a["rules_version"] == v2 for a in probe_actions if a["at"] >= pushed_at + 1000)
    stats = read_stats(redis.Redis.from_url(redis_url), Keys(session.name))
    total = len(phase_a) + len(phase_b) + len(probes.docs)
    assert stats["applied"] == total
    assert stats["ended.journey_removed"] == 3  # the three browse enrollments


class ProbeStream(threading.Thread):
    """Logins at a steady pace: each yields one action that names the rules version."""

    def __init__(self, session: Live, start: int, count: int, every_ms: int) -> None:
        super().__init__(daemon=True)
        self.session = session
        self.docs = [
            event(500 + i, f"probe{i}", "login", start + i * every_ms) for i in range(count)
        ]

    def run(self) -> None:
        produce(self.session.bootstrap, self.session.events, self.docs)
