"""Segments, broadcasts and RFM in the live pipeline (SPEC 9) against replay.

In process (Bytewax's testing source and sink) on the real Redis (plain and a
Valkey Cluster) and Kafka. The logs are in the recent past, so the live clock
(the watermark, near the wall clock) is ahead of every instant they hold.
"""

from __future__ import annotations

import io
import time
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from bytewax.testing import TestingSink, run_main
from redis.cluster import RedisCluster

from engine.journeys import Engine
from engine.replay import replay
from engine.rfm import RfmInputs
from engine.rules.loader import load_rules
from engine.segments import members_at
from engine.state import UserState
from flows.clock import TestClock, wall_ms
from flows.jobs.segments_live import run_live_segments
from flows.pipeline.books import pack_inputs
from flows.pipeline.dataflow import build_flow
from flows.pipeline.rfm_live import RfmClock, RfmFollower, RfmRuntime, refresh, stored_bounds
from flows.pipeline.rules_runtime import RulesRuntime
from flows.pipeline.segment_sweeps import RulesSweep, SegmentRecheck
from flows.pipeline.sweep import unpack
from flows.retry import RedisClient
from flows.stores.emissions import settle_outboxes
from flows.stores.rules import RulesStore
from flows.stores.states import ShardStore
from tests.flows.live import read_topic
from tests.flows.pipeline.support import NOW, HoldingSource, Pipeline, event, message

pytestmark = pytest.mark.integration

MINUTE = 60_000
START = NOW - NOW % MINUTE - 180 * MINUTE  # the log starts three hours ago, on a minute


def wall(ms: int) -> str:
    """A schedule's wall time (UTC, the rules' zone) for epoch ``ms``."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M")


GLOBAL_AT = START + 60 * MINUTE
LOCAL_AT = START + 150 * MINUTE  # 09:30 wall -> UTC users then, UTC+1 users an hour before

RULES = f"""\
version: 1
timezone: UTC
segment_recheck: 1m
rfm_refresh: 1m
consent: {{email: opt_out}}
segments:
  buyer: "count(purchase) >= 1"
  fresh: "exists(view_product, 5m)"
  big: "sum(purchase, revenue) >= 100"
journeys:
  - {{id: first_buy, trigger: {{segment: buyer}}, steps: [{{send: email}}]}}
  - {{id: went_cold, trigger: {{segment: fresh, on: exit}}, steps: [{{send: email}}]}}
  - id: bf_global
    trigger: {{schedule: "{wall(GLOBAL_AT)}", segment: buyer}}
    steps: [{{send: email}}]
  - id: bf_local
    trigger: {{schedule: "{wall(LOCAL_AT)}", local: true}}
    steps: [{{send: email}}]
  - {{id: vip, trigger: {{event: login, if: "rfm().m >= 4"}}, steps: [{{send: email}}]}}
  - {{id: big_spender, trigger: {{segment: big}}, steps: [{{send: email}}]}}
"""


def log_before() -> list[dict[str, Any]]:
    """Purchases, views and profiles: what happens before the RFM refresh."""
    docs: list[dict[str, Any]] = []
    for i in range(8):
        user, ts = f"u{i}", START + i * MINUTE
        if i % 2:
            docs.append(event(len(docs), user, "profile", ts, attributes={"timezone": "Etc/GMT-1"}))
        docs.append(event(len(docs), user, "view_product", ts + 1000, product_id=f"p{i}"))
        if i < 6:
            docs.append(event(len(docs), user, "purchase", ts + 2000, revenue=10.0 + 20 * i))
    docs.append(event(len(docs), "u0", "purchase", START + 30 * MINUTE, revenue=15.0))
    return docs


def logins(at: int) -> list[dict[str, Any]]:
    return [event(100 + i, f"u{i}", "login", at + i) for i in range(8)]


def settled(
    pipeline: Pipeline, sweeps: tuple[str, ...], at_least_s: float = 1.0, after: int = 0
) -> Any:
    """A predicate: every shard's sweeps are done and no timer is due (after ``after``)."""
    started = time.monotonic()

    def done() -> bool:
        if time.monotonic() - started < at_least_s or wall_ms() <= after:
            return False
        for shard in pipeline.keys.all_shards():
            marks = pipeline.client.hgetall(shard.sweep)
            for name in sweeps:
                raw = marks.get(name.encode())
                if raw is None or not unpack(raw.decode()).done:
                    return False
            if pipeline.client.zcount(shard.timers, "-inf", wall_ms()):
                return False
        return True

    return done


def run_live(
    pipeline: Pipeline,
    runtime: Any,
    docs: list[dict[str, Any]],
    first_offset: int = 0,
    sweeps: Any = None,
    after: int = 0,
    **overrides: Any,
) -> None:
    sweeps = [SegmentRecheck(runtime), RulesSweep(runtime)] if sweeps is None else sweeps
    config = pipeline.config(runtime=runtime, sweeps=sweeps, **overrides)
    names = tuple(s.name for s in sweeps if s.next_run(None, wall_ms()) is not None)
    watermark = config.watermark
    flow = build_flow(
        HoldingSource(
            [message(first_offset + i, d) for i, d in enumerate(docs)],
            settled(pipeline, names, after=after),
            lambda: watermark.polled("0-events", 0, True),
            limit_s=40,
        ),
        TestingSink(pipeline.dead),
        TestingSink(pipeline.reports),
        config,
    )
    run_main(flow)


def lines(docs: list[dict[str, Any]]) -> list[bytes]:
    return [orjson.dumps(d) for d in docs]


def live_members(pipeline: Pipeline, names: list[str]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for shard in pipeline.keys.all_shards():
        store = ShardStore(pipeline.client, shard, 3_600_000)
        for name in names:
            cursor = None
            while cursor != 0:
                cursor, ids = store.members(name, cursor or 0)
                for identity in ids:
                    found.setdefault(identity, set()).add(name)
    return found


def key(a: dict[str, Any] | Any) -> tuple[Any, ...]:
    get = a.get if isinstance(a, dict) else lambda f: getattr(a, f)
    return (get("action_id"), get("at"), get("user_id"), get("journey"), get("status"))


@pytest.fixture
def pipeline(store_client: RedisClient, kafka_bootstrap: str, unique: str) -> Pipeline:
    return Pipeline.create(store_client, kafka_bootstrap, unique, RULES)


def test_live_equals_replay_actions_and_memberships(
    pipeline: Pipeline, request: pytest.FixtureRequest
) -> None:
    if isinstance(pipeline.client, RedisCluster):
        url = request.getfixturevalue("valkey_cluster").url
    else:
        url = request.getfixturevalue("redis_url")
    rules = load_rules(RULES, "rules.yaml")
    engine = Engine(rules, activated_at=START - MINUTE)
    runtime = RfmRuntime(RulesRuntime(engine), RfmFollower(pipeline.client, pipeline.keys, 0))
    before = log_before()
    run_live(pipeline, runtime, before)
    instant = wall_ms() - wall_ms() % MINUTE  # after every purchase, before every login
    bounds = refresh(pipeline.client, pipeline.keys, instant, MINUTE)
    assert bounds is not None
    assert bounds.buyers == 6
    assert refresh(pipeline.client, pipeline.keys, instant, MINUTE) is None  # claimed once
    after = logins(max(instant, wall_ms() - 500))
    run_live(pipeline, runtime, after, first_offset=len(before))

    states: dict[str, UserState] = {}
    expected = replay(Engine(rules), lines(before + after), until=wall_ms(), states=states)
    live = read_topic(pipeline.bootstrap, pipeline.actions_topic)
    assert sorted(map(key, live)) == sorted(key(a) for a in expected if a.status == "sent")
    journeys = {a.journey for a in expected}
    assert journeys == {"first_buy", "went_cold", "bf_global", "bf_local", "vip", "big_spender"}
    assert sum(a.journey == "went_cold" for a in expected) == 8  # each found at a recheck
    assert sum(a.journey == "bf_local" for a in expected) == 8
    watched = ["buyer", "fresh", "big"]
    replayed = {k: set(s.segments) for k, s in states.items() if s.segments}
    assert live_members(pipeline, watched) == replayed
    assert replayed["u5"] == {"buyer", "big"}
    check_cli(pipeline, rules, states, url)


def check_cli(pipeline: Pipeline, rules: Any, states: dict[str, UserState], url: str) -> None:
    """``tetik segments --live``: counts from the sets, an export, every shopper's line."""
    RulesStore(pipeline.client, pipeline.prefix).push(RULES, "rules.yaml", who="test")
    env = {"TETIK_REDIS_URL": url, "TETIK_PREFIX": pipeline.prefix, "TETIK_SHARDS": "4"}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        out = io.BytesIO()
        assert run_live_segments(count=True, export=None, out=out) == 0
        counted = out.getvalue().decode().splitlines()
        out = io.BytesIO()
        assert run_live_segments(count=False, export="buyer", out=out) == 0
        exported = [orjson.loads(line) for line in out.getvalue().splitlines()]
        out = io.BytesIO()
        assert run_live_segments(count=False, export=None, out=out) == 0
        every = [orjson.loads(line) for line in out.getvalue().splitlines()]
    at = wall_ms()
    replayed = {k: set(members_at(rules, s, at)) for k, s in states.items()}
    assert counted == [
        f"buyer: {sum('buyer' in s.segments for s in states.values())}",
        f"fresh: {sum('fresh' in s.segments for s in states.values())}",
        f"big: {sum('big' in s.segments for s in states.values())}",
    ]
    assert [r["user_id"] for r in exported] == sorted(
        k for k, s in states.items() if "buyer" in s.segments
    )
    assert [r["user_id"] for r in every] == sorted(states)
    assert {r["user_id"]: set(r["segments"]) for r in every} == replayed
    assert all(r["rfm"] is not None for r in every if r["user_id"] in {"u0", "u5"})


def test_a_recheck_sweep_finds_a_time_only_exit_for_a_shopper_without_events(
    pipeline: Pipeline,
) -> None:
    rules = load_rules(RULES, "rules.yaml")
    runtime = RulesRuntime(Engine(rules, activated_at=NOW + 3_600_000))  # no broadcast
    docs = [event(0, "quiet", "view_product", NOW - 30 * MINUTE, product_id="p")]
    pipeline.run([message(0, docs[0])], runtime=runtime)  # no sweep: still "fresh"
    assert live_members(pipeline, ["fresh"]) == {"quiet": {"fresh"}}
    run_live(pipeline, runtime, [], first_offset=1, sweeps=[SegmentRecheck(runtime)])
    assert live_members(pipeline, ["fresh"]) == {}
    sent = read_topic(pipeline.bootstrap, pipeline.actions_topic)
    leaves = NOW - 30 * MINUTE + 5 * MINUTE + 1
    assert [(a["journey"], a["at"]) for a in sent] == [
        ("went_cold", leaves - leaves % MINUTE + MINUTE)
    ]


HOT_V1 = """\
version: 1
consent: {email: opt_out}
journeys:
  - {id: hello, trigger: signup, steps: [{send: email}]}
"""
HOT_V2 = (
    HOT_V1
    + """\
  - {id: loyal_hi, trigger: {segment: loyal}, steps: [{send: email}]}
segments:
  loyal: "count(purchase) >= 2"
"""
)


def test_a_new_segment_is_evaluated_over_the_base_without_events(pipeline: Pipeline) -> None:
    docs = []
    for i in range(12):
        docs.append(event(len(docs), f"h{i:02}", "signup", NOW - 20 * MINUTE + i))
        for j in range(i % 3):
            docs.append(event(len(docs), f"h{i:02}", "purchase", NOW - 19 * MINUTE + j))
    v1 = Engine(load_rules(HOT_V1, "v1.yaml"))
    pipeline.run((message(i, d) for i, d in enumerate(docs)), runtime=RulesRuntime(v1))
    v2 = v1.successor(load_rules(HOT_V2, "v2.yaml"), activated_at=wall_ms())
    runtime = RulesRuntime(v2)
    later = [event(500, "h00", "purchase", NOW - 1000), event(501, "h00", "purchase", NOW - 900)]
    run_live(pipeline, runtime, later, first_offset=len(docs), sweeps=[RulesSweep(runtime)])
    loyal = {f"h{i:02}" for i in range(12) if i % 3 == 2} | {"h00"}
    assert live_members(pipeline, ["loyal"]) == {u: {"loyal"} for u in loyal}
    sent = read_topic(pipeline.bootstrap, pipeline.actions_topic)
    # re-baselined silently: only h00, who qualified after the version took over, entered
    assert [a["user_id"] for a in sent if a["journey"] == "loyal_hi"] == ["h00"]


class Die(BaseException):
    """Stands for the process dying (not an Exception: nothing in the shard catches it)."""


class DyingEngine(Engine):
    """An engine that dies at its ``crash_at``-th ``advance`` (a timer firing a broadcast)."""

    crash_at = 0
    calls = 0

    def advance(self, state: UserState, until: int, **kw: Any) -> list[Any]:
        DyingEngine.calls += 1
        if DyingEngine.calls == DyingEngine.crash_at:
            raise Die(state.key)
        return super().advance(state, until, **kw)


BROADCAST = """\
version: 1
timezone: UTC
consent: {{email: opt_out}}
segments:
  buyer: "count(purchase) >= 1"
journeys:
  - id: bf
    trigger: {{schedule: "{at}", segment: buyer}}
    steps: [{{send: email}}]
"""


def test_a_broadcast_killed_halfway_reaches_every_member_once(pipeline: Pipeline) -> None:
    """Armed by the sweep after the version took over, fired at its instant by the timer
    index in batches of 4, the engine dies in the middle; the restart finishes it."""
    at = wall_ms() // 1000 * 1000 + 6000
    when = datetime.fromtimestamp(at / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    text = BROADCAST.format(at=when)
    docs = [
        event(i, f"b{i:02}", "purchase" if i % 4 else "login", NOW - 60_000 + i) for i in range(40)
    ]
    members = {f"b{i:02}" for i in range(40) if i % 4}
    first = Engine(load_rules(HOT_V1, "v1.yaml"))  # no broadcast yet: nobody armed
    pipeline.run((message(i, d) for i, d in enumerate(docs)), runtime=RulesRuntime(first))
    dying = DyingEngine(load_rules(text, "bf.yaml"), activated_at=wall_ms())
    DyingEngine.calls, DyingEngine.crash_at = 0, 60  # 40 in the arm pass, then timers: halfway
    runtime = RulesRuntime(dying)
    with pytest.raises(BaseException):  # noqa: B017, PT011 (Bytewax re-raises it wrapped)
        run_live(pipeline, runtime, [], 40, [RulesSweep(runtime)], after=at, timer_batch=4)
    assert DyingEngine.calls == 60
    assert wall_ms() >= at  # it died firing the broadcast, not before
    settle_outboxes(pipeline.client, pipeline.keys, pipeline.bootstrap, pipeline.actions_topic)
    halfway = read_topic(pipeline.bootstrap, pipeline.actions_topic)
    assert 0 < len(halfway) < len(members)
    again = Engine(load_rules(text, "bf.yaml"), activated_at=dying.activated_at)
    runtime = RulesRuntime(again)
    run_live(pipeline, runtime, [], 40, [RulesSweep(runtime)], after=at, timer_batch=4)
    sent = [
        a for a in read_topic(pipeline.bootstrap, pipeline.actions_topic) if a["journey"] == "bf"
    ]
    assert sorted(a["user_id"] for a in sent) == sorted(members)  # each member once
    assert {a["at"] for a in sent} == {at}  # at its instant, not at a later sweep


def test_the_rfm_clock_refreshes_once_per_instant_and_keeps_the_last_four(
    pipeline: Pipeline,
) -> None:
    rules = load_rules(RULES, "rules.yaml")
    runtime = RulesRuntime(Engine(rules))
    shard = pipeline.keys.shard(0)
    pipeline.client.hset(shard.rfm, "x", pack_inputs(RfmInputs(1_000, 2, 30.0)))
    clock = TestClock(START)
    ticker = RfmClock(runtime, pipeline.client, pipeline.keys, clock=clock)
    for _ in range(6):
        ticker.tick()
        ticker.tick()  # the same instant: nothing more
        clock.advance(MINUTE)
    stored = stored_bounds(pipeline.client, pipeline.keys)
    assert [b.at for b in stored] == [START + k * MINUTE for k in range(2, 6)]
    assert {b.buyers for b in stored} == {1}
    follower = RfmFollower(pipeline.client, pipeline.keys, 0)
    book = RfmRuntime(runtime, follower).current().rfm
    assert book is follower.book
    assert book.at(START + 5 * MINUTE + 1) == stored[-1]
