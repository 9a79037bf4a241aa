"""The chaos scenarios: each one a fault injected while events flow, judged against replay.

Rules of this interface:

* A scenario is a function ``(Context) -> Result``. It starts its own
  servers (:mod:`chaos.servers`), one :class:`chaos.run.Deployment` on them,
  injects its faults while the storefront sends at ``Size.rate``, keeps
  sending ``Size.tail_s`` after the last fault, then drains and compares.
* Faults and their ends (epoch ms, for the recovery times):

  - ``kill``: ``Size.kills`` SIGKILLs of the engine, each after a random
    0.5-5 s up and followed by 0-1 s down (so some land during start-up or
    catch-up); a fault ends when the engine is started again.
  - ``redis-freeze``: valkey SIGSTOPped for ``Size.freeze_s``, then SIGCONT.
  - ``redis-restart``: valkey (append-only file on) SIGKILLed, down 2 s,
    restarted on the same port with its data.
  - ``broker-restart``: Apache Kafka (log on disk) stopped and started again,
    then (full run) SIGKILLed and started again. Skipped without Java.
  - ``poison``: a warm engine gets a burst of good events with a 1 % share
    of poison records (every kind of :data:`chaos.workload.POISON_KINDS`),
    and, on fresh servers, the same good events without poison; the
    good-event throughput of the two (events/s from the burst's release until
    every good event is processed, best of
    ``Size.rounds`` runs each, in turns) is compared. The short run's
    backlogs last a few seconds, too short to resolve 5 % on a shared
    machine: it reports the ratio without judging it (CI must not fail on a
    noisy neighbour; speed is measured, not asserted, in a timed run).
  - ``slow-broker``: tansu behind ``chaos.proxy`` answering 40 ms late, with
    kills: a restarted engine must still read the purchases of its backlog
    before it fires the reminders they cancel.

* A scenario passes when its tally is clean (0 duplicate, missing,
  unexpected or different actions; a shopper's discrepancies that began
  while one of its events had not reached the broker, later than the
  engine's lateness allows, are counted as excused, see
  :func:`chaos.compare.tally`, except in
  ``broker-restart``, whose late deliveries the engine must handle), the
  engine never exited on its own (kills excepted) and, for ``poison``, every
  poison record is dead-lettered with a reason and (full size only) the
  throughput ratio is at least ``Size.min_ratio``. A scenario whose replay
  expects no segment-triggered action (``Result.segment_expected``, the
  journeys of :data:`chaos.workload.SEGMENT_JOURNEYS`) fails: it did not
  check segments.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import orjson

from chaos.compare import dead_letters, recovery, tally
from chaos.run import Deployment
from chaos.servers import Servers, Unavailable, scenario_servers
from chaos.workload import SEGMENT_JOURNEYS, stream
from flows.jobs.progress import Bar
from flows.jobs.run import RunOptions
from flows.retry import connect
from flows.settings import from_env
from flows.stores.keys import Keys
from flows.stores.states import read_stats

__all__ = ["SCENARIOS", "Context", "Result", "Size", "sizes"]

POISON_SHARE = 0.01
WARMUP = 200  # good events the engine processes before a measured burst
SLOW_DELAY_MS = 40
# A broker 40 ms away each way: 100-200 ms between a record's ts (stamped at
# send) and its arrival, more on a loaded machine, which the default 200 ms
# lateness does not cover. An operator with such a broker sets --lateness-ms
# above its delivery delay; so does this scenario.
SLOW_LATENESS = ("--lateness-ms", "1000")


@dataclass(frozen=True)
class Size:
    """How big each scenario is: ``--short`` (CI) or the full run."""

    kills: int = 200
    slow_kills: int = 20
    freeze_s: float = 30.0
    redis_restarts: int = 3
    rate: float = 60.0  # events/s offered while faults are injected
    users: int = 400
    tail_s: float = 8.0
    drain_s: float = 90.0
    backlog: int = 50_000  # good events per poison-scenario burst
    rounds: int = 3  # clean/poison pairs, in turns; the best of each is compared
    min_ratio: float | None = 0.95  # None: the ratio is reported, not judged
    short: bool = False


def sizes(short: bool, kills: int | None = None, freeze_s: float | None = None) -> Size:
    """The full or short size, with ``--kills`` / ``--freeze-s`` when given."""
    size = Size()
    if short:
        size = Size(kills=5, slow_kills=3, freeze_s=8.0, redis_restarts=1, rate=100.0, users=200,
                    tail_s=6.0, drain_s=45.0, backlog=15_000, rounds=2, min_ratio=None,
                    short=True)  # fmt: skip
    if kills is not None:
        size = dataclasses.replace(size, kills=kills)
    if freeze_s is not None:
        size = dataclasses.replace(size, freeze_s=freeze_s)
    return size


class Result(msgspec.Struct, frozen=True, kw_only=True):
    """One scenario's figures and verdict (``pass``, ``FAIL`` or ``skipped``)."""

    scenario: str
    verdict: str
    why: str = ""
    events: int = 0
    expected: int = 0
    segment_expected: int = 0  # of those, actions of segment-triggered journeys
    emitted: int = 0
    duplicate: int = 0
    missing: int = 0
    unexpected: int = 0
    different: int = 0
    excused: int = 0  # discrepancies of shoppers whose events reached the broker too late
    faults: int = 0
    engine_exits: int = 0
    exit_lines: list[str] = msgspec.field(default_factory=list)
    recover_first_s: float | None = None
    recover_caught_up_s: float | None = None
    recover_median_s: float | None = None  # median time to caught up over the faults
    unrecovered: int = 0
    poison_sent: int = 0
    dead_lettered: int = 0
    without_reason: int = 0
    missed_by_kind: dict[str, int] = msgspec.field(default_factory=dict)
    reasons: dict[str, int] = msgspec.field(default_factory=dict)
    clean_per_s: float | None = None
    poison_per_s: float | None = None
    throughput_ratio: float | None = None
    drain_s: float | None = None
    seconds: float = 0.0
    examples: dict[str, list[str]] = msgspec.field(default_factory=dict)
    workdir: str = ""


@dataclass(frozen=True)
class Timing:
    """What the engine is promised about event delivery in one scenario.

    ``lateness_ms``: the engine's ``--lateness-ms``; ``return_ms``: the
    broker's answer delay (the proxy's), taken off an acknowledgement's delay;
    ``outage``: the broker itself goes away, and the engine's own grace
    (``BACK_GRACE_S``) is what is under test, so nothing is excused.
    """

    lateness_ms: int
    return_ms: int = 0
    outage: bool = False


def _lateness(engine_args: tuple[str, ...]) -> int:
    """The ``--lateness-ms`` the scenario gives the engine, else the engine's default."""
    if "--lateness-ms" in engine_args:
        return int(engine_args[engine_args.index("--lateness-ms") + 1])
    return RunOptions().lateness_ms


@dataclass
class Context:
    """What every scenario gets: sizes, seed, a work directory and the log."""

    size: Size
    seed: int
    workdir: Path
    log: Callable[[str], None]
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)


Fault = Callable[[Deployment, Servers, Context], list[int]]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def live_scenario(
    name: str,
    ctx: Context,
    fault: Fault,
    *,
    persistent: bool = False,
    broker: str = "tansu",
    delay_ms: int = 0,
    engine_args: tuple[str, ...] = (),
) -> Result:
    """Run ``fault`` against a deployment fed at ``Size.rate``; judge it against replay."""
    started = time.monotonic()
    workdir = ctx.workdir / name
    try:
        with scenario_servers(persistent=persistent, broker=broker, delay_ms=delay_ms) as found:
            records = stream(ctx.seed, ctx.size.users)
            dep = Deployment(
                found.redis_url,
                found.bootstrap,
                workdir,
                records,
                rate=ctx.size.rate,
                engine_args=engine_args,
            )
            timing = Timing(_lateness(engine_args), delay_ms, broker == "apache")
            return _judge(name, ctx, dep, found, fault, started, timing)
    except Unavailable as exc:
        ctx.log(f"{name}: skipped: {exc}")
        return Result(scenario=name, verdict="skipped", why=str(exc), workdir=str(workdir))


def _judge(
    name: str,
    ctx: Context,
    dep: Deployment,
    found: Servers,
    fault: Fault,
    started: float,
    timing: Timing,
) -> Result:
    bar = Bar(f"chaos {name:<14}")
    dep.on_tick = lambda: bar.update(
        0.8 * dep.progress + (0.15 if dep.expected else 0.0),
        f"events {dep.feed.sent:,} actions {len(dep.watch.actions()):,} "
        f"exits {len(dep.engine.exits)}",
    )
    dep.watch.start()
    dep.engine.start()
    dep.feed.start()
    try:
        ends = fault(dep, found, ctx)
        ctx.log(f"{name}: faults done, feeding {ctx.size.tail_s:.0f} s more")
        dep.wait(ctx.size.tail_s)
        expected = dep.drain(ctx.size.drain_s)
    finally:
        code = dep.close()
    ctx.log(f"{name}: engine stopped with code {code}; the slowest event took "
            f"{dep.feed.worst_ack_ms} ms from its ts to the broker's acknowledgement "
            f"(ts {dep.feed.worst_ack_at})")  # fmt: skip
    late = {} if timing.outage else dep.feed.late_events(timing.lateness_ms, timing.return_ms)
    if late:
        ctx.log(f"{name}: {len(late)} shopper(s) had an event reach the broker more than "
                f"{timing.lateness_ms} ms after its ts")  # fmt: skip
    watched = dep.watch.actions()
    emitted = dep.reread()  # the servers are still up: the topic itself is the truth
    if len(emitted) != len(watched):
        ctx.log(f"{name}: the live watch read {len(watched)} actions, a fresh read {len(emitted)}")
    counts = tally(expected, [e.action for e in emitted], late=late)
    if counts.examples or counts.excused:
        _keep_evidence(dep, expected, [e.action for e in emitted])
    rec = recovery(ends, emitted)
    result = Result(
        scenario=name,
        verdict="pass",
        events=dep.feed.sent,
        expected=counts.expected,
        segment_expected=segment_actions(expected),
        emitted=counts.emitted,
        duplicate=counts.duplicate,
        missing=counts.missing,
        unexpected=counts.unexpected,
        different=counts.different,
        excused=counts.excused,
        faults=len(ends),
        engine_exits=len(dep.engine.exits),
        exit_lines=dep.engine.exits[:5],
        recover_first_s=rec.worst_first_s,
        recover_caught_up_s=rec.worst_caught_up_s,
        recover_median_s=rec.median_caught_up_s,
        unrecovered=rec.unrecovered,
        drain_s=dep.drain_s,
        seconds=round(time.monotonic() - started, 1),
        examples=counts.examples,
        workdir=str(dep.workdir),
    )
    bar.close(
        f"{result.expected:,} expected ({result.segment_expected:,} segment-triggered), "
        f"{result.emitted:,} emitted"
    )
    return verdict(result, ctx.size)


def _keep_evidence(
    dep: Deployment, expected: list[dict[str, Any]], emitted: list[dict[str, Any]]
) -> None:
    """A failed tally leaves what it needs to be understood: the log, both sides."""
    dep.workdir.mkdir(parents=True, exist_ok=True)
    (dep.workdir / "events.jsonl").write_bytes(b"\n".join(dep.feed.valid_lines()) + b"\n")
    for name, actions in (("expected.jsonl", expected), ("emitted.jsonl", emitted)):
        (dep.workdir / name).write_bytes(b"".join(orjson.dumps(a) + b"\n" for a in actions))


def segment_actions(expected: list[dict[str, Any]]) -> int:
    """How many of replay's actions come from segment-triggered journeys."""
    return sum(a["journey"] in SEGMENT_JOURNEYS for a in expected)


def verdict(result: Result, size: Size) -> Result:
    """The result with its verdict and the reasons for a failure."""
    problems = [
        f"{n} {what}"
        for n, what in (
            (result.duplicate, "duplicate"),
            (result.missing, "missing"),
            (result.unexpected, "unexpected"),
            (result.different, "different"),
            (result.engine_exits, "engine exit(s)"),
            (result.poison_sent - result.dead_lettered, "poison not dead-lettered"),
            (result.without_reason, "dead letter(s) without a reason"),
        )
        if n
    ]
    if not result.expected:
        problems.append("replay expected no action: the run proves nothing")
    elif not result.segment_expected:
        problems.append("replay expected no segment-triggered action: segments went unchecked")
    ratio = result.throughput_ratio
    judged = result.scenario == "poison" and size.min_ratio is not None
    if judged and (ratio is None or ratio < (size.min_ratio or 0)):
        problems.append(f"throughput ratio {ratio} below {size.min_ratio}")
    if not problems:
        return result
    return msgspec.structs.replace(result, verdict="FAIL", why="; ".join(problems))


# --- faults ---


def kill_engine(dep: Deployment, _servers: Servers, ctx: Context, count: int) -> list[int]:
    """``count`` SIGKILLs at random moments, each followed by a restart."""
    ends = []
    for n in range(count):
        dep.wait(ctx.rng.uniform(0.5, 5.0))
        dep.engine.kill()
        dep.wait(ctx.rng.uniform(0.0, 1.0))
        dep.engine.start()
        ends.append(_now_ms())
        dep.progress = (n + 1) / count
        ctx.log(f"kill {n + 1}/{count}: engine killed and started again")
    return ends


def freeze_redis(dep: Deployment, found: Servers, ctx: Context) -> list[int]:
    dep.wait(4.0)
    found.redis.pause()
    ctx.log(f"redis-freeze: valkey stopped (SIGSTOP) for {ctx.size.freeze_s:.0f} s")
    dep.wait(ctx.size.freeze_s)
    found.redis.resume()
    dep.progress = 1.0
    ctx.log("redis-freeze: valkey continued (SIGCONT)")
    return [_now_ms()]


def restart_redis(dep: Deployment, found: Servers, ctx: Context) -> list[int]:
    ends = []
    for n in range(ctx.size.redis_restarts):
        dep.wait(4.0)
        found.redis.kill()
        ctx.log(f"redis-restart {n + 1}: valkey SIGKILLed")
        dep.wait(2.0)
        found.redis.restart()
        ends.append(_now_ms())
        dep.progress = (n + 1) / ctx.size.redis_restarts
        ctx.log(f"redis-restart {n + 1}: valkey back on {found.redis.address}")
    return ends


def restart_broker(dep: Deployment, found: Servers, ctx: Context) -> list[int]:
    ends = []
    for n, crash in enumerate((False, True)[: 1 if ctx.size.short else 2]):
        dep.wait(6.0)
        if crash:
            found.broker.kill()
        found.broker.restart()
        ends.append(_now_ms())
        dep.progress = (n + 1) / (1 if ctx.size.short else 2)
        ctx.log(f"broker-restart {n + 1}: broker {'killed' if crash else 'stopped'} and back")
    return ends


# --- scenarios ---


def kill(ctx: Context) -> Result:
    return live_scenario("kill", ctx, lambda d, s, c: kill_engine(d, s, c, c.size.kills))


def redis_freeze(ctx: Context) -> Result:
    return live_scenario("redis-freeze", ctx, freeze_redis)


def redis_restart(ctx: Context) -> Result:
    return live_scenario("redis-restart", ctx, restart_redis, persistent=True)


def broker_restart(ctx: Context) -> Result:
    return live_scenario("broker-restart", ctx, restart_broker, broker="apache")


def slow_broker(ctx: Context) -> Result:
    return live_scenario(
        "slow-broker",
        ctx,
        lambda d, s, c: kill_engine(d, s, c, c.size.slow_kills),
        delay_ms=SLOW_DELAY_MS,
        engine_args=SLOW_LATENESS,
    )


def poison(ctx: Context) -> Result:
    """Clean and poisoned backlogs of the same good events; see the module rules."""
    started = time.monotonic()
    clean: list[Result] = []
    dirty: list[Result] = []
    for n in range(ctx.size.rounds):  # alternate which goes first: no order bias
        pair = [(clean, "clean", 0.0), (dirty, "poison", POISON_SHARE)][:: 1 if n % 2 else -1]
        for into, label, share in pair:
            into.append(backlog_run(ctx, f"poison/{label}-{n + 1}", share))
    best_clean = max((r.clean_per_s or 0.0 for r in clean), default=0.0)
    worst = max(dirty, key=_badness)
    best_dirty = max((r.clean_per_s or 0.0 for r in dirty), default=0.0)
    ratio = round(best_dirty / best_clean, 3) if best_clean and best_dirty else None
    baseline_bad = [r for r in clean if r.verdict == "FAIL"]
    result = msgspec.structs.replace(
        worst,
        scenario="poison",
        clean_per_s=best_clean or None,
        poison_per_s=best_dirty or None,
        throughput_ratio=ratio,
        seconds=round(time.monotonic() - started, 1),
        why="",
        verdict="pass",
    )
    judged = verdict(result, ctx.size)
    if baseline_bad:
        why = f"{judged.why}; " if judged.why else ""
        judged = msgspec.structs.replace(
            judged, verdict="FAIL", why=f"{why}clean baseline: {baseline_bad[0].why}"
        )
    return judged


def _badness(result: Result) -> tuple[int, int]:
    return (result.verdict == "FAIL", result.duplicate + result.missing + result.unexpected)


def backlog_run(ctx: Context, name: str, share: float) -> Result:
    """A warm engine, then ``Size.backlog`` good events (and ``share`` poison) at once."""
    started = time.monotonic()
    workdir = ctx.workdir / name
    with scenario_servers() as found:
        # No anonymous sessions in a burst: its ms stamps tie a login with its device's
        # events by the hundred, an order replay takes from the file and the live engine
        # cannot know across partitions (README "Identity"); the paced scenarios merge.
        records = stream(ctx.seed, ctx.size.users, share, anon_ratio=0.0)
        total = WARMUP + ctx.size.backlog
        dep = Deployment(
            found.redis_url, found.bootstrap, workdir, records, rate=0, limit=total,
            hold_after=WARMUP,
        )  # fmt: skip
        bar = Bar(f"chaos {name:<14}")
        dep.watch.start()
        dep.engine.start()
        dep.feed.start()
        try:
            rate = _throughput(dep, total, bar)
            expected = dep.drain(ctx.size.drain_s)
        finally:
            dep.close()
    emitted = [e.action for e in dep.watch.actions()]
    counts = tally(expected, emitted)
    if counts.examples:
        _keep_evidence(dep, expected, emitted)
    letters = dead_letters(dep.feed.poison(), dep.watch.dead_letters())
    ctx.log(f"{name}: {rate or 0:,.0f} good events/s, {counts}, {letters}")
    bar.close(f"{rate or 0:,.0f} good events/s")
    result = Result(
        scenario=name,
        verdict="pass",
        events=dep.feed.sent,
        expected=counts.expected,
        segment_expected=segment_actions(expected),
        emitted=counts.emitted,
        duplicate=counts.duplicate,
        missing=counts.missing,
        unexpected=counts.unexpected,
        different=counts.different,
        engine_exits=len(dep.engine.exits),
        exit_lines=dep.engine.exits[:5],
        poison_sent=letters.sent,
        dead_lettered=letters.dead_lettered,
        without_reason=letters.without_reason,
        missed_by_kind=letters.missed_by_kind,
        reasons=letters.reasons,
        clean_per_s=rate,
        drain_s=dep.drain_s,
        seconds=round(time.monotonic() - started, 1),
        examples=counts.examples,
        workdir=str(workdir),
    )
    return verdict(result, ctx.size)


def _throughput(dep: Deployment, good: int, bar: Bar) -> float | None:
    """Good events/s of the burst after the warm-up: from its release until the engine
    has processed every good event (None: it never did)."""
    client = connect(dep.redis_url)
    fields = ["applied", "duplicate", "stale"]
    deadline = time.monotonic() + 60 + good / 500
    released: float | None = None
    while time.monotonic() < deadline:
        dep.wait(0.01)
        stats = read_stats(client, Keys(dep.name, from_env().shards))
        done = sum(stats.get(f, 0) for f in fields)
        bar.update(done / good, f"{done:,}/{good:,} good events")
        if released is None and done >= WARMUP:  # the engine is up and warm: go
            dep.feed.go.set()
            released = time.monotonic()
        if released is not None and done >= good:
            return round((good - WARMUP) / max(time.monotonic() - released, 1e-3), 1)
    dep.feed.go.set()
    return None


SCENARIOS: dict[str, Callable[[Context], Result]] = {
    "kill": kill,
    "redis-freeze": redis_freeze,
    "redis-restart": redis_restart,
    "broker-restart": broker_restart,
    "poison": poison,
    "slow-broker": slow_broker,
}
