"""``tetik bench scale``: pending enrollments live in Redis, not in the worker.

Every figure is measured on one ``tetik run`` child (one worker, fresh prefix,
topics and recovery directory, as :func:`bench.memory.engine_rss` runs it) on
one set of servers (embedded Valkey and the broker :mod:`bench.cli` picks, or
those of ``TETIK_REDIS_URL`` / ``TETIK_KAFKA_BOOTSTRAP``). The rules are
:data:`RULES`: one journey that a ``signup`` enters, which sends an email at
once and another after a 30-day wait, so every shopper fed stays pending for
the whole run. Each shopper signs up once (distinct identities); each event's
``ts`` is the wall clock when it is sent, and :func:`feed` keeps at most
``lead`` events ahead of the engine, so the engine is never far behind.

Pending enrollments and the base (one run)
    A warm-up of ``warmup`` signups, then ``VmRSS``; ``pending`` more
    signups, then ``VmRSS`` again: ``bytes_per_enrollment`` is the growth over
    ``pending`` (goal <= 256 bytes; ``VmHWM`` is reported too). The warm-up
    (16,000) is longer than the bounded shopper cache (4,096) plus the feed's
    ``lead`` (10,000), so the engine has reached its working size before the
    30,000 are fed: the figure is what pending enrollments cost, not the
    one-off growth of a process that has just started. That growth is reported
    apart: ``VmRSS`` after the warm-up's first ``first`` signups (2,000) and
    ``cold_bytes_per_enrollment``, the growth from there to the end of
    ``pending`` per pending enrollment (the figure before this warm-up). The same run
    goes on to ``shoppers`` signups in all (1M; quick: 100k): the engine's
    ``VmRSS`` and ``VmHWM`` (goal <= 1 GiB, judged on the peak), the Redis
    ``INFO memory`` before the engine started and after the last outbox entry
    was confirmed (``used_memory`` delta per shopper, goal <= 2 KiB), the
    ``MEMORY USAGE`` of a sample of state keys and of every shard's timer and
    shopper indexes, and events/s while feeding. ``marginal_bytes_per_enrollment``
    is the worker's growth from the end of ``pending`` to the end of the run,
    per shopper fed in between: what each pending enrollment costs once the
    one-off growth (the bounded shopper cache filling, allocator and client
    buffers reaching their working size) is behind. After each stage the pending
    count in Redis (the sum of ``ZCARD`` of every shard's timers) must equal
    the shoppers fed (``pending_ok``).

Restart after kill -9 (its own run)
    ``restart`` signups (100k; quick: 20k), then SIGKILL; ``tetik run`` starts
    again on the same prefix, topics and recovery directory and one probe
    signup is produced at once. ``processing_s`` is the time from the restart
    to the probe's event being applied (the ``applied`` counter moves: events
    re-read after the kill are ``skipped``; or its action is seen, if that is
    polled first), ``action_s`` until its email is in the actions topic (goal:
    processing again within 10 s). ``startup``
    lists the engine's output lines with the second each arrived, which says
    where the start-up time went. The actions topic must then hold each
    action once: one email per shopper fed and the probe's
    (``actions_ok``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

from bench.e2e import Child, System, make_system
from bench.memory import proc_kib
from bench.tables import table
from flows.jobs.progress import Bar
from flows.kafka.producer import Record, send_record
from flows.kafka.topics import ensure_topics
from flows.report import say
from flows.retry import RedisClient, connect
from flows.servers.embedded import Endpoints, servers
from flows.servers.process import die_with_parent_preexec, stop_child
from flows.settings import from_env
from flows.stores.keys import Keys
from flows.stores.states import read_stats, timers_pending

JOURNEY = "welcome"
RULES = f"""version: 1
consent: {{email: opt_out}}
journeys:
  - id: {JOURNEY}
    trigger: signup
    steps:
      - send: email
      - wait: 30d
      - send: email
"""
MIB = 1024 * 1024
INFO_FIELDS = (
    "used_memory",
    "used_memory_dataset",
    "used_memory_overhead",
    "used_memory_rss",
    "used_memory_peak",
    "mem_fragmentation_ratio",
)


@dataclass(frozen=True)
class ScalePlan:
    """How many shoppers each figure is measured on (see the module docstring)."""

    warmup: int = 16_000  # > the shopper cache + lead: the working size is reached
    first: int = 2_000  # VmRSS is read after this many of the warm-up's signups too
    pending: int = 30_000
    shoppers: int = 1_000_000  # all signups of the first run, warm-up and pending included
    restart: int = 100_000
    samples: int = 1_000  # state keys measured with MEMORY USAGE
    lead: int = 10_000  # at most this many events sent and not yet processed
    chunk: int = 2_000  # records per send between progress checks
    timeout_s: float = 1_800.0  # a feed must be processed within this
    restart_timeout_s: float = 120.0


QUICK = ScalePlan(shoppers=100_000, restart=20_000)


# --- the engine child ---


@dataclass
class Output:
    """What a child printed, each line with the seconds since it was started."""

    started: float
    lines: list[tuple[float, str]] = dataclasses.field(default_factory=list)


@contextlib.contextmanager
def started(system: System, workdir: Path) -> Iterator[tuple[subprocess.Popen[bytes], Output]]:
    """The system's child process with its output timed line by line (and appended to
    ``workdir/NAME.log``); stopped with SIGTERM (then SIGKILL) on leaving."""
    output = Output(time.monotonic())
    child = subprocess.Popen(
        system.argv,
        env={**os.environ, **system.env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=die_with_parent_preexec(),
    )
    reader = threading.Thread(
        target=_read_lines, args=(child, output, workdir / f"{system.name}.log"), daemon=True
    )
    reader.start()
    try:
        yield child, output
    finally:
        stop_child(child)
        reader.join(10)


def _read_lines(child: subprocess.Popen[bytes], output: Output, log: Path) -> None:
    assert child.stdout is not None
    with log.open("ab") as sink:
        for raw in child.stdout:
            output.lines.append((time.monotonic() - output.started, raw.decode(errors="replace")))
            sink.write(raw)
            sink.flush()


def _system(endpoints: Endpoints, label: str, workdir: Path) -> System:
    """``tetik run`` with :data:`RULES` on fresh topics and a fresh prefix."""
    run = f"{label}{uuid.uuid4().hex[:6]}"
    system = make_system("tetik", endpoints, run, workdir, rules=RULES)
    system = dataclasses.replace(system, name=f"tetik-{run}")
    ensure_topics(endpoints.kafka_bootstrap, system.layout)
    return system


def _keys(system: System) -> Keys:
    return from_env(system.env).keys


# --- feeding signups ---


class Signups:
    """Signups of distinct shoppers, each stamped with the wall clock as it is made."""

    def __init__(self, run: str) -> None:
        self.run = run
        self.count = 0

    def identity(self, index: int) -> str:
        return f"{self.run}-{index:07d}"

    def take(self, count: int) -> list[Record]:
        records = [self.one(self.identity(i)) for i in range(self.count, self.count + count)]
        self.count += count
        return records

    @staticmethod
    def one(identity: str) -> Record:
        doc = {
            "event_id": f"{identity}-signup",
            "type": "signup",
            "ts": time.time_ns() // 1_000_000,
            "user_id": identity,
        }
        return identity.encode(), orjson.dumps(doc)


class Feeder:
    """Sends signups to a running engine, at most ``plan.lead`` events ahead of it."""

    def __init__(self, engine: Child, bootstrap: str, plan: ScalePlan) -> None:
        self.engine, self.plan = engine, plan
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all"})
        self.signups = Signups(engine.system.name)
        self.failures: list[str] = []

    def feed(self, count: int, label: str) -> dict[str, Any]:
        """Send ``count`` signups; return once the engine has processed them all."""
        engine, plan = self.engine, self.plan
        base, sent = engine.processed(), 0
        deadline = time.monotonic() + plan.timeout_s
        bar, start = Bar(f"scale {label}"), time.monotonic()
        while sent < count:
            n = min(plan.chunk, count - sent)
            self._wait(base + sent + n - plan.lead, deadline)
            for key, value in self.signups.take(n):
                send_record(self.producer, engine.system.events, key, value, self._delivered)
            sent += n
            bar.update(sent / count, f"{sent:,}/{count:,}")
        self.producer.flush(30)
        if self.failures:
            raise RuntimeError(f"{len(self.failures)} signups not delivered: {self.failures[0]}")
        self._wait(base + sent, deadline)
        seconds = time.monotonic() - start
        bar.close(f"{sent:,} signups, {sent / seconds:,.0f}/s")
        return {"fed": sent, "seconds": round(seconds, 2), "events_per_s": sent / seconds}

    def _delivered(self, err: object, _msg: object) -> None:
        if err is not None:
            self.failures.append(str(err))

    def _wait(self, count: int, deadline: float) -> None:
        if not self.engine.wait_until(count, deadline):
            done = self.engine.processed()
            raise RuntimeError(self.engine.stuck(f"processed {done:,} of {count:,} events"))


# --- Redis ---


def pending_count(client: RedisClient, keys: Keys) -> int:
    """Shoppers with a pending step: the sum of every shard's timer index size."""
    return sum(timers_pending(client, keys))


def outbox_count(client: RedisClient, keys: Keys) -> int:
    """Records in the shards' outboxes (written, not yet confirmed as acknowledged)."""
    pipe = client.pipeline(transaction=False)
    for shard in keys.all_shards():
        pipe.hlen(shard.outbox)
    return sum(int(n) for n in pipe.execute())


def memory_info(client: RedisClient) -> dict[str, float]:
    info: dict[str, Any] = client.info("memory")
    return {name: float(info[name]) for name in INFO_FIELDS if name in info}


def _settled(client: RedisClient, keys: Keys, engine: Child, timeout_s: float = 30.0) -> int:
    """Wait until every outbox is empty (acknowledgements confirmed); what is left."""
    deadline = time.monotonic() + timeout_s
    while (left := outbox_count(client, keys)) and time.monotonic() < deadline:
        engine.check()
        time.sleep(0.1)
    return left


def key_usage(client: RedisClient, keys: Keys, identities: list[str]) -> dict[str, Any]:
    """``MEMORY USAGE`` (all elements) of sampled state keys and of every shard's indexes."""
    pipe = client.pipeline(transaction=False)
    for identity in identities:
        pipe.memory_usage(keys.state(identity), samples=0)
        pipe.strlen(keys.state(identity))
    found = pipe.execute()
    usage = [int(n or 0) for n in found[0::2]]
    lengths = [int(n or 0) for n in found[1::2]]
    pipe = client.pipeline(transaction=False)
    for shard in keys.all_shards():
        pipe.memory_usage(shard.timers, samples=0)
        pipe.memory_usage(shard.shoppers, samples=0)
    indexes = [int(n or 0) for n in pipe.execute()]
    return {
        "sampled_states": len(identities),
        "state_usage_mean": sum(usage) / max(1, len(usage)),
        "state_value_mean": sum(lengths) / max(1, len(lengths)),
        "timers_usage": sum(indexes[0::2]),
        "shoppers_usage": sum(indexes[1::2]),
    }


# --- (a) and (b): pending enrollments and the base ---


def measure_base(endpoints: Endpoints, plan: ScalePlan, workdir: Path) -> dict[str, Any]:
    """One run: warm-up, ``pending`` more (bytes per enrollment), then up to ``shoppers``."""
    system = _system(endpoints, "scale", workdir)
    client, keys = connect(endpoints.redis_url), _keys(system)
    before = memory_info(client)
    with started(system, workdir) as (child, _):
        engine = Child(system, child, workdir)
        feeder = Feeder(engine, endpoints.kafka_bootstrap, plan)
        feeder.feed(plan.first, "warm-up")
        first = proc_kib(child.pid, "VmRSS")
        feeder.feed(plan.warmup - plan.first, "warm-up, rest")
        idle = proc_kib(child.pid, "VmRSS")
        pending = _pending(feeder, client, keys, plan, idle)
        pending.update(
            rss_first_mib=first / 1024,
            cold_bytes_per_enrollment=(pending["rss_mib"] * 1024 - first) * 1024 / plan.pending,
        )
        rest = plan.shoppers - plan.warmup - plan.pending
        fed = feeder.feed(rest, f"base to {plan.shoppers:,}")
        base = _base(feeder, client, keys, plan, before)
        grown = (base["rss_mib"] - pending["rss_mib"]) * MIB
        base.update(
            feeding=fed, rss_idle_mib=idle / 1024, marginal_bytes_per_enrollment=grown / rest
        )
    return {"pending": pending, "base": base}


def _pending(
    feeder: Feeder, client: RedisClient, keys: Keys, plan: ScalePlan, idle_kib: int
) -> dict[str, Any]:
    """Feed ``plan.pending`` signups; the worker's growth per pending enrollment."""
    fed = feeder.feed(plan.pending, f"{plan.pending:,} pending")
    pid = feeder.engine.child.pid
    rss, peak = proc_kib(pid, "VmRSS"), proc_kib(pid, "VmHWM")
    shoppers, pending = feeder.signups.count, pending_count(client, keys)
    return {
        "enrollments": plan.pending,
        "rss_idle_mib": idle_kib / 1024,
        "rss_mib": rss / 1024,
        "rss_peak_mib": peak / 1024,
        "bytes_per_enrollment": (rss - idle_kib) * 1024 / plan.pending,
        "shoppers_fed": shoppers,
        "pending_in_redis": pending,
        "pending_ok": pending == shoppers,
        "feeding": fed,
    }


def _base(
    feeder: Feeder, client: RedisClient, keys: Keys, plan: ScalePlan, before: dict[str, float]
) -> dict[str, Any]:
    """After the last signup: the engine's memory, Redis' and the pending count."""
    pid = feeder.engine.child.pid
    rss, peak = proc_kib(pid, "VmRSS"), proc_kib(pid, "VmHWM")
    left = _settled(client, keys, feeder.engine)
    after = memory_info(client)
    shoppers, pending = feeder.signups.count, pending_count(client, keys)
    sample = random.Random(plan.samples).sample(range(shoppers), min(plan.samples, shoppers))
    usage = key_usage(client, keys, [feeder.signups.identity(i) for i in sample])
    delta = after["used_memory"] - before["used_memory"]
    return {
        "shoppers": shoppers,
        "rss_mib": rss / 1024,
        "rss_peak_mib": peak / 1024,
        "redis_before": before,
        "redis_after": after,
        "redis_bytes_per_shopper": delta / shoppers,
        "outbox_left": left,
        "usage": usage,
        "index_bytes_per_shopper": (usage["timers_usage"] + usage["shoppers_usage"]) / shoppers,
        "pending_in_redis": pending,
        "pending_ok": pending == shoppers,
    }


# --- (c): restart after kill -9 ---


def measure_restart(endpoints: Endpoints, plan: ScalePlan, workdir: Path) -> dict[str, Any]:
    """Feed ``plan.restart`` signups, SIGKILL the engine, start it again, time a probe."""
    system = _system(endpoints, "restart", workdir)
    client, keys = connect(endpoints.redis_url), _keys(system)
    with started(system, workdir) as (child, _):
        feeder = Feeder(Child(system, child, workdir), endpoints.kafka_bootstrap, plan)
        fed = feeder.feed(plan.restart, f"{plan.restart:,} before kill -9")
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    pending = pending_count(client, keys)
    applied = read_stats(client, keys).get("applied", 0)
    boot = endpoints.kafka_bootstrap
    actions = _make_consumer(boot, system.output, _end_offset(boot, system.output))
    say(f"bench scale: killed the engine with {pending:,} pending; starting it again")
    probe = Signups.one(f"probe-{system.name}")
    with started(system, workdir) as (child, output), contextlib.closing(actions):
        engine = Child(system, child, workdir)
        _produce(boot, system.events, probe)
        timing = _time_probe(engine, client, keys, applied, probe, actions, plan, output)
    counted = _count_actions(boot, system.output)
    return {
        "shoppers": fed["fed"],
        "pending_at_kill": pending,
        "pending_ok": pending == fed["fed"],
        **timing,
        **counted,
        "actions_ok": counted["actions"] == counted["distinct"] == fed["fed"] + 1,
        "startup": [{"s": round(s, 3), "line": line.rstrip()} for s, line in output.lines],
    }


def _produce(bootstrap: str, topic: str, record: Record) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    send_record(producer, topic, record[0], record[1], lambda *_: None)
    producer.flush(30)


def _time_probe(
    engine: Child,
    client: RedisClient,
    keys: Keys,
    applied: int,
    probe: Record,
    actions: Consumer,
    plan: ScalePlan,
    output: Output,
) -> dict[str, Any]:
    """Seconds from the restart until the probe is applied and until its action is in
    the actions topic (``actions`` reads it from where it ended before the restart)."""
    identity = (probe[0] or b"").decode()
    processing = action = None
    deadline = output.started + plan.restart_timeout_s
    while (processing is None or action is None) and time.monotonic() < deadline:
        engine.check()
        if processing is None and read_stats(client, keys).get("applied", 0) > applied:
            processing = time.monotonic() - output.started
        if action is None and _has_action(actions, identity):
            action = time.monotonic() - output.started
            processing = min(processing or action, action)  # its action proves it applied
    if processing is None or action is None:
        raise RuntimeError(engine.stuck("did not process the probe after its restart"))
    return {"processing_s": round(processing, 3), "action_s": round(action, 3)}


def _make_consumer(bootstrap: str, topic: str, offset: int) -> Consumer:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "bench-scale", "fetch.wait.max.ms": 20}
    )
    consumer.assign([TopicPartition(topic, 0, offset)])
    return consumer


def _has_action(consumer: Consumer, identity: str) -> bool:
    for message in consumer.consume(100, 0.02):
        value = message.value() if message.error() is None else None
        if value and orjson.loads(value).get("user_id") == identity:
            return True
    return False


def _end_offset(bootstrap: str, topic: str) -> int:
    consumer = _make_consumer(bootstrap, topic, 0)
    try:
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=30)
        return int(high)
    finally:
        consumer.close()


def _count_actions(bootstrap: str, topic: str) -> dict[str, int]:
    """Every record of the actions topic (one partition): how many, how many distinct."""
    end = _end_offset(bootstrap, topic)
    consumer = _make_consumer(bootstrap, topic, 0)
    ids: set[str] = set()
    total, position = 0, 0
    try:
        deadline = time.monotonic() + 120
        while position < end and time.monotonic() < deadline:
            for message in consumer.consume(10_000, 0.5):
                value = message.value() if message.error() is None else None
                if value is None:
                    continue
                position = (message.offset() or 0) + 1
                total += 1
                ids.add(orjson.loads(value)["action_id"])
    finally:
        consumer.close()
    return {"actions": total, "distinct": len(ids)}


# --- the whole bench ---


def bench_scale(*, quick: bool = False, plan: ScalePlan | None = None) -> dict[str, Any]:
    """Measure all three figures (quick: fewer shoppers); print the tables, return them."""
    plan = plan or (QUICK if quick else ScalePlan())
    with (
        servers(kafka=True, progress=say) as endpoints,
        tempfile.TemporaryDirectory(prefix="tetik-scale-") as tmp,
    ):
        say(f"bench scale: {plan.pending:,} pending, then {plan.shoppers:,} shoppers")
        result: dict[str, Any] = {"plan": dataclasses.asdict(plan)}
        result.update(measure_base(endpoints, plan, Path(tmp)))
        say(f"bench scale: restart after kill -9 with {plan.restart:,} pending")
        result["restart"] = measure_restart(endpoints, plan, Path(tmp))
    print(scale_tables(result))
    return result


def scale_tables(result: dict[str, Any]) -> str:
    """The figures of a scale run as Markdown (also the report's section)."""
    p, b, r = result["pending"], result["base"], result["restart"]
    rows = [
        ["pending enrollments", f"{p['enrollments']:,}"],
        [
            "worker RSS after 2k, warm-up -> after MiB",
            f"{p['rss_first_mib']:,.1f}, {p['rss_idle_mib']:,.1f} -> {p['rss_mib']:,.1f}",
        ],
        ["worker bytes per pending enrollment", f"{p['bytes_per_enrollment']:,.0f}"],
        [
            "the same, from the 2k mark (one-off growth in)",
            f"{p['cold_bytes_per_enrollment']:,.0f}",
        ],
        ["worker peak RSS (VmHWM) MiB", f"{p['rss_peak_mib']:,.1f}"],
        ["worker bytes per enrollment after those", f"{b['marginal_bytes_per_enrollment']:,.0f}"],
        ["pending in Redis = fed", f"{p['pending_in_redis']:,} = {p['shoppers_fed']:,}"],
        ["shoppers pending (base)", f"{b['shoppers']:,}"],
        ["events/s while feeding the base", f"{b['feeding']['events_per_s']:,.0f}"],
        ["engine RSS / peak MiB", f"{b['rss_mib']:,.0f} / {b['rss_peak_mib']:,.0f}"],
        ["Redis used_memory delta per shopper B", f"{b['redis_bytes_per_shopper']:,.0f}"],
        ["MEMORY USAGE per state key B", f"{b['usage']['state_usage_mean']:,.0f}"],
        ["state value B", f"{b['usage']['state_value_mean']:,.0f}"],
        ["timer + shopper indexes per shopper B", f"{b['index_bytes_per_shopper']:,.0f}"],
        ["pending in Redis = fed", f"{b['pending_in_redis']:,} = {b['shoppers']:,}"],
        ["restart: pending at kill -9", f"{r['pending_at_kill']:,}"],
        ["restart: probe processed after s", f"{r['processing_s']:.2f}"],
        ["restart: probe's action in Kafka after s", f"{r['action_s']:.2f}"],
        ["restart: actions (distinct) = fed + probe", f"{r['actions']:,} ({r['distinct']:,})"],
    ]
    info = [
        [name, f"{b['redis_before'].get(name, 0):,.2f}", f"{b['redis_after'].get(name, 0):,.2f}"]
        for name in INFO_FIELDS
    ]
    startup = [[f"{line['s']:.2f}", _cell(line["line"])] for line in r["startup"]]
    return "\n\n".join(
        [
            table(["figure", "value"], rows),
            table(["INFO memory", "before", "after"], info),
            table(["s after restart", "engine output"], startup[:40]),
        ]
    )


def _cell(line: str) -> str:
    """An engine output line as one table cell: its live counter's carriage returns
    (one line rewritten in place on a terminal) kept only as their last state."""
    parts = [part.strip() for part in line.split("\r") if part.strip()]
    return (parts[-1] if parts else "").replace("|", "/")
