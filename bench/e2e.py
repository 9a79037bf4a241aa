"""``tetik bench e2e``: the live engine against two baselines, on the same input.

Three systems run in turn on the same servers (embedded Valkey and a Kafka
broker, or those of ``TETIK_REDIS_URL`` / ``TETIK_KAFKA_BOOTSTRAP``), each as a
child process with its own fresh topics, each fed the same seeded clickstream:

* ``passthrough``: Bytewax Kafka -> decode -> Kafka, one record per event
  (:mod:`bench.passthrough`), the framework's floor;
* ``tetik``: ``tetik run`` with the abandoned-cart journey of
  :mod:`bench.journey`, one worker;
* ``handwritten``: a confluent-kafka loop with one Redis round trip per event
  implementing the same journey (:mod:`bench.handwritten`), without identity
  stitching: on this clickstream (anonymous sessions, logins) tetik does more
  work per event; the result says so (``work``) and so does the report.

For each system: a warm-up (for ``tetik``, then ``Plan.live_s`` without load,
so that a step measures a source whose consumers have been open
:data:`flows.pipeline.source.LIVE_AFTER_S` and follow the live traffic with
the short settle; before that, a freshly started engine settles 300 ms at a
partition's end, which held a step's timers up to that long: the timer
lateness p99 at half load measured ~300 ms after issue 13 for this reason;
nothing is sent meanwhile, so every system still gets the same events), then
offered load in steps (``x2`` each) until
the system saturates (it processes under 90% of what was sent during the
step, or ends the step more than half a second behind), then one more step at
half the highest sustained rate. Per step: the rate actually sent, the rate
processed, the backlog at the step's end, the end-to-end latency of
event-caused outputs (:mod:`bench.watch`), timer lateness, and the CPU of the
system, the broker, Redis and the load generator.

Timer lateness is that of the step's own enrollments: the outputs a timer
fired (``at``, no ``ingested_at``) that were due from ``WAIT_MS`` after the
step's first send to ``WAIT_MS`` after its last (:data:`bench.journey.WAIT_MS`,
the journey's wait), each its output record's Kafka timestamp minus ``at``. A
step ends only once the system has drained and those are due (plus
:data:`TIMER_GRACE_S`, and until each of the step's enrollments has its timer's
output or :data:`TIMER_LIMIT_S` has passed: an enrollment a purchase ended fires
nothing), so late ones are counted, not cut off. ``tetik run``'s
watermark holds timers back by its ``--lateness-ms`` (20 by default):
``Plan.lateness_ms`` passes another value (None: run's default).

The broker (:func:`choose_broker`): ``--broker tansu|apache`` if given, else
``TETIK_EMBEDDED_KAFKA`` if set, else a real Apache Kafka
(:mod:`flows.servers.apache_kafka`) where Java 17 and Maven (or its cached
jars) are present, else the embedded tansu. The result names the broker it
measured (``broker``: name, version, bootstrap and why it was chosen), as does
the terminal output.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from bench.journey import RULES, WAIT_MS
from bench.load import LoadProcess, StepDone
from bench.percentiles import summary
from bench.tables import broker_label
from bench.watch import OutputWatch
from clickstream.generator import GeneratorConfig
from engine.errors import ConfigError
from flows.jobs.progress import Bar
from flows.kafka.topics import ensure_topics
from flows.pipeline.source import LIVE_AFTER_S
from flows.report import say
from flows.servers.apache_kafka import (
    EMBEDDED_KAFKA_ENV,
    ensure_jars,
    find_java,
    kafka_version,
)
from flows.servers.embedded import KAFKA_BOOTSTRAP_ENV, Endpoints, find_kafka_binary, servers
from flows.servers.process import (
    ServerStartError,
    binary_version,
    die_with_parent_preexec,
    stop_child,
)
from flows.settings import from_env
from flows.stores.keys import Keys
from flows.stores.states import read_stats

SYSTEMS = ("passthrough", "tetik", "handwritten")
BROKERS = ("tansu", "apache")  # --broker: the embedded tansu, or a real Apache Kafka
SERVER_NAMES = {"tansu": "tansu", "apache": "apache-kafka"}  # as EmbeddedServer.name
RUN = uuid.uuid4().hex[:6]  # topic and key names of this bench run
# Sessions are numbered across every run of this process: two bench_e2e calls in one
# process (tests) must not share topics or Redis keys.
_SESSIONS = itertools.count(1)
SATURATED_SHARE = 0.9  # processed / sent below this: the step is past saturation
SATURATED_LAG_S = 0.5  # or a backlog of more than this many seconds of input at the end
TIMER_GRACE_S = 0.5  # a step's timers are read at least this long after the last is due
TIMER_LIMIT_S = 3.0  # and at most this long, while some enrollment's timer has not fired


@dataclass(frozen=True)
class Plan:
    """How hard and how long to push each system."""

    step_s: float = 5.0
    first_rate: int = 1_000
    max_rate: int = 64_000
    factor: float = 2.0
    warm_rate: int = 200
    warm_s: float = 3.0
    drain_s: float = 120.0
    users: int = 50_000
    seed: int = 11
    # A fresh system and topics for every step (see Runner); quick runs keep one.
    restart_each_step: bool = True
    # tetik run --lateness-ms (how long its watermark holds timers back); None: its default.
    lateness_ms: int | None = None
    # tetik waits this long after its warm-up, sending nothing (see the module docstring).
    live_s: float = LIVE_AFTER_S


QUICK = Plan(
    step_s=1.5,
    first_rate=2_000,
    max_rate=8_000,
    factor=4.0,
    warm_s=1.0,
    drain_s=20.0,
    users=10_000,
    restart_each_step=False,
)


@dataclass
class System:
    """One system under test: how to start it, where it writes, how far it got."""

    name: str
    argv: list[str]
    env: dict[str, str]
    events: str
    output: str
    layout: dict[str, int]  # the topics the bench creates for it, with partition counts
    processed: Callable[[], int] = field(default=lambda: 0)


def _topics(name: str, run: str) -> tuple[str, str]:
    return f"bench-{run}-{name}-events", f"bench-{run}-{name}-out"


# Every system reads 4 event partitions and writes 1 output partition: the output
# watch tails partition 0 (bench.watch), and the three are measured alike.
EVENTS_PARTITIONS = 4
OUTPUT_PARTITIONS = 1


def make_system(
    name: str,
    endpoints: Endpoints,
    run: str,
    workdir: Path,
    *,
    rules: str = RULES,
    run_args: tuple[str, ...] = (),
) -> System:
    """The command line and progress counter of ``name`` for this run.

    For ``tetik``: ``rules`` is the rules text it runs (default: the journey of
    :mod:`bench.journey`) and ``run_args`` are more ``tetik run`` options.
    """
    events, output = _topics(name, run)
    prefix = f"bench-{run}-{name}"
    client = redis.Redis.from_url(endpoints.redis_url)
    boot, python = endpoints.kafka_bootstrap, sys.executable
    if name == "passthrough":
        argv = [python, "-m", "bench.passthrough", "--bootstrap", boot]
        argv += ["--events", events, "--out", output]
        return System(name, argv, {}, events, output, _layout(events, output))
    if name == "handwritten":
        argv = [python, "-m", "bench.handwritten", "--bootstrap", boot]
        argv += ["--redis", endpoints.redis_url, "--events", events, "--actions", output]
        argv += ["--prefix", prefix]
        counter = f"{prefix}:hw:processed"
        layout = _layout(events, output)
        return System(name, argv, {}, events, output, layout, lambda: int(client.get(counter) or 0))
    path = workdir / f"rules-{run}.yaml"
    path.write_text(rules)
    argv = [python, "-m", "cli.main", "run", "--rules", str(path), "--workers", "1"]
    argv += ["--recovery-dir", str(workdir / f"recovery-{run}"), *run_args]
    env = {
        "TETIK_REDIS_URL": endpoints.redis_url,
        "TETIK_KAFKA_BOOTSTRAP": boot,
        "TETIK_PREFIX": prefix,
        "TETIK_EVENTS_TOPIC": events,
        "TETIK_ACTIONS_TOPIC": output,
        "TETIK_DLQ_TOPIC": f"{events}.dlq",
        "TETIK_ACTIONS_DLQ_TOPIC": f"{output}.dlq",
        # The bench's layout, told to tetik as to any deployment, so tetik run's own
        # topic set-up agrees with the topics made here.
        "TETIK_EVENTS_PARTITIONS": str(EVENTS_PARTITIONS),
        "TETIK_ACTIONS_PARTITIONS": str(OUTPUT_PARTITIONS),
    }
    layout = from_env(env).topic_layout()
    return System(name, argv, env, events, output, layout, lambda: _tetik_processed(client, prefix))


def _layout(events: str, output: str) -> dict[str, int]:
    return {events: EVENTS_PARTITIONS, output: OUTPUT_PARTITIONS}


def _tetik_processed(client: redis.Redis, prefix: str) -> int:
    stats = read_stats(client, Keys(prefix, from_env().shards))
    return sum(stats.get(k, 0) for k in ("applied", "duplicate", "stale", "invalid", "skipped"))


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process (all its threads), None if unreadable."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU % of one core for each named process over an interval."""

    def __init__(self, pids: dict[str, int]) -> None:
        self._pids = pids
        self._start = self._read()
        self._t0 = time.monotonic()

    def _read(self) -> dict[str, float | None]:
        return {name: cpu_seconds(pid) for name, pid in self._pids.items()}

    def percent(self) -> dict[str, float | None]:
        end, seconds = self._read(), time.monotonic() - self._t0
        out: dict[str, float | None] = {}
        for name, before in self._start.items():
            after = end[name]
            ok = before is not None and after is not None and seconds > 0
            out[name] = round(100 * (after - before) / seconds, 1) if ok else None  # type: ignore[operator]
        return out


@contextmanager
def running(system: System, workdir: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The system's child process, stopped with SIGTERM (then SIGKILL) on leaving."""
    log = (workdir / f"{system.name}.log").open("wb")
    child = subprocess.Popen(
        system.argv,
        env={**os.environ, **system.env},
        stdout=log,
        stderr=log,
        preexec_fn=die_with_parent_preexec(),
    )
    try:
        yield child
    finally:
        stop_child(child)
        log.close()


class Runner:
    """Drives one system through the plan; collects one dict per step.

    Every step starts the system afresh on fresh topics and Redis keys (unless
    ``plan.restart_each_step`` is off, as in quick runs): tansu's
    in-memory storage gets slower as a partition's batch count grows, so
    carrying one log through all steps would charge the broker's slowdown to
    whichever step came last. The load process lives across steps, so every
    system still receives the same stream of events.
    """

    def __init__(self, name: str, plan: Plan, endpoints: Endpoints, workdir: Path) -> None:
        self.name, self.plan, self.endpoints, self.workdir = name, plan, endpoints, workdir
        cfg = GeneratorConfig(users=plan.users, events=10**9, seed=plan.seed, invalid_ratio=0.002)
        self.load = LoadProcess(endpoints.kafka_bootstrap, cfg)
        self.sessions = 0
        self._reused: tuple[Probe, OutputWatch, dict[str, int]] | None = None

    def run(self) -> dict[str, Any]:
        with contextlib.ExitStack() as stack:
            stack.callback(self.load.close)
            steps: list[dict[str, Any]] = []
            rate = float(self.plan.first_rate)
            while rate <= self.plan.max_rate:
                steps.append(self.step(stack, rate, f"step {len(steps) + 1}"))
                if steps[-1]["saturated"]:
                    break
                rate *= self.plan.factor
            best = max(step["sustained_per_s"] for step in steps)
            half = self.step(stack, max(self.plan.warm_rate, best / 2), "half load")
            # Not saturated: the plan's top rate was sustained, so "best" is a lower bound.
            saturated = bool(steps[-1]["saturated"])
            return {
                "steps": steps,
                "max_sustained_per_s": best,
                "saturated": saturated,
                "half_load": half,
            }

    def step(self, stack: contextlib.ExitStack, rate: float, label: str) -> dict[str, Any]:
        """One measured step, on a freshly started system unless the plan reuses one."""
        if self.plan.restart_each_step:
            with contextlib.ExitStack() as own:
                return measure(*self._session(own, label), rate, self.plan, label)
        if self._reused is None:
            self._reused = self._session(stack, label)
        return measure(*self._reused, rate, self.plan, label)

    def _session(
        self, stack: contextlib.ExitStack, label: str
    ) -> tuple[Probe, OutputWatch, dict[str, int]]:
        """Start the system on fresh topics and keys, and warm it up."""
        self.sessions += 1
        run = f"{RUN}{next(_SESSIONS)}"
        late = self.plan.lateness_ms
        extra = () if late is None else ("--lateness-ms", str(late))
        system = make_system(self.name, self.endpoints, run, self.workdir, run_args=extra)
        ensure_topics(self.endpoints.kafka_bootstrap, system.layout)
        self.load.topic(system.events)
        watch = OutputWatch(self.endpoints.kafka_bootstrap, system.output)
        if system.name == "passthrough":
            system.processed = lambda: watch.records
        watch.start()
        stack.callback(watch.stop)
        child = stack.enter_context(running(system, self.workdir))
        probe = Probe(system, child, self.load, self.workdir)
        probe.send(self.plan.warm_rate, self.plan.warm_s, f"{label} warm-up")
        if not probe.drain(90.0):
            raise RuntimeError(probe.stuck("did not process its warm-up"))
        if system.name == "tetik":  # past the start's long settle, sending nothing more
            idle_until = time.monotonic() + self.plan.live_s
            while time.monotonic() < idle_until:
                probe.check()
                time.sleep(min(0.25, max(0.0, idle_until - time.monotonic())))
        pids = {**self.endpoints.pids, "system": child.pid, "load": self.load.pid}
        return probe, watch, pids


class Child:
    """A running system under test: how far it got, and a clear error if it died."""

    def __init__(self, system: System, child: subprocess.Popen[bytes], workdir: Path) -> None:
        self.system, self.child, self.workdir = system, child, workdir

    def processed(self) -> int:
        return self.system.processed()

    def wait_until(self, count: int, deadline: float) -> bool:
        """Wait until ``count`` events are processed (False at the monotonic ``deadline``)."""
        while self.processed() < count:
            self.check()
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def check(self) -> None:
        if self.child.poll() is not None:
            raise RuntimeError(self.stuck(f"exited with {self.child.returncode}"))

    def stuck(self, what: str) -> str:
        log = (self.workdir / f"{self.system.name}.log").read_text(errors="replace")
        return f"{self.system.name} {what}; the end of its log:\n{log[-2000:]}"


class Probe(Child):
    """Sends steps of load to one running system and follows how far it got."""

    def __init__(
        self, system: System, child: subprocess.Popen[bytes], load: LoadProcess, workdir: Path
    ) -> None:
        super().__init__(system, child, workdir)
        self.load = load
        self.sent = 0

    def send(self, rate: float, seconds: float, label: str) -> StepDone:
        """Send ``rate * seconds`` records at ``rate``, with a progress bar."""
        bar = Bar(f"e2e {self.system.name:<11} {label:<20} {rate:>8,.0f} ev/s")
        self.load.prepare(int(rate * seconds))
        self.load.go(rate)
        started = time.monotonic()
        while (done := self.load.poll(0.25)) is None:
            self.check()
            bar.update((time.monotonic() - started) / seconds)
        self.sent += done.sent
        bar.close(f"backlog {max(0, self.sent - self.processed()):,}")
        return done

    def drain(self, timeout: float) -> bool:
        """Wait until everything sent is processed (False at the timeout)."""
        if not self.wait_until(self.sent, time.monotonic() + timeout):
            return False
        time.sleep(0.3)  # let the last outputs reach the watcher
        return True


def measure(
    probe: Probe, watch: OutputWatch, pids: dict[str, int], rate: float, plan: Plan, label: str
) -> dict[str, Any]:
    """One measured step: rates, backlog, latency, timer lateness and CPU."""
    before = probe.processed()
    meter = CpuMeter(pids)
    done = probe.send(rate, plan.step_s, label)
    cpu = meter.percent()
    seconds = max(0.001, (done.ended_ms - done.started_ms) / 1000)
    sustained = (probe.processed() - before) / seconds
    lag = probe.sent - probe.processed()
    drain_start = time.monotonic()
    drained = probe.drain(plan.drain_s)
    drain_s = time.monotonic() - drain_start
    _await_timers(probe, watch, done)
    caused, _ = watch.between(done.started_ms, done.ended_ms)
    _, fired = watch.between(done.started_ms + WAIT_MS, done.ended_ms + WAIT_MS)
    return {
        "offered_per_s": rate,
        "sent": done.sent,
        "seconds": round(seconds, 3),
        "sent_per_s": done.sent / seconds,
        "sustained_per_s": sustained,
        "lag_events": lag,
        "lag_s": lag / rate,
        "drain_s": round(drain_s, 2) if drained else None,
        "saturated": sustained < SATURATED_SHARE * done.sent / seconds
        or lag / rate > SATURATED_LAG_S,
        "latency_ms": summary(caused),
        "timer_lateness_ms": summary(fired),
        "producer_ack_ms": {"p50": done.ack_p50_ms, "p99": done.ack_p99_ms},
        "cpu_pct": cpu,
    }


def _await_timers(probe: Probe, watch: OutputWatch, done: StepDone) -> None:
    """Wait until the step's last timer is due plus :data:`TIMER_GRACE_S`, then while
    fewer timers have fired than the step caused enrollments, up to :data:`TIMER_LIMIT_S`
    after the last is due (not for the passthrough, which has no timers)."""
    if probe.system.name == "passthrough":
        return
    last_due_ms = done.ended_ms + WAIT_MS

    def waited_s() -> float:
        return (time.time_ns() // 1_000_000 - last_due_ms) / 1000

    def all_fired() -> bool:
        caused, _ = watch.between(done.started_ms, done.ended_ms)
        _, fired = watch.between(done.started_ms + WAIT_MS, last_due_ms)
        return len(fired) >= len(caused)

    while waited_s() < TIMER_GRACE_S or (waited_s() < TIMER_LIMIT_S and not all_fired()):
        probe.check()
        time.sleep(min(max(TIMER_GRACE_S - waited_s(), 0.05), 0.25))


def compare(systems: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """tetik / baseline ratios: throughput, and p99 at half load and at a common rate.

    A throughput ratio is None unless both systems were driven past saturation.
    """
    tetik = systems["tetik"]
    ratios: dict[str, Any] = {}
    for base in ("passthrough", "handwritten"):
        other = systems[base]
        both = tetik["saturated"] and other["saturated"]  # else a maximum is only a bound
        ratios[f"throughput_tetik_vs_{base}"] = (
            tetik["max_sustained_per_s"] / other["max_sustained_per_s"] if both else None
        )
        ratios[f"p99_half_load_tetik_vs_{base}"] = _ratio(
            tetik["half_load"]["latency_ms"]["p99"], other["half_load"]["latency_ms"]["p99"]
        )
    ratios["p99_half_load_tetik_vs_passthrough_same_load"] = _same_load_ratio(
        tetik, systems["passthrough"]
    )
    common = _common_rate(systems)
    ratios["common_rate_per_s"] = common
    if common is not None:
        p99 = {name: _p99_at(result, common) for name, result in systems.items()}
        for base in ("passthrough", "handwritten"):
            ratios[f"p99_common_rate_tetik_vs_{base}"] = _ratio(p99["tetik"], p99[base])
    return ratios


def _same_load_ratio(tetik: dict[str, Any], base: dict[str, Any]) -> float | None:
    """tetik's p99 at its half load over the baseline's p99 at the step nearest that rate."""
    half = tetik["half_load"]
    rate = half.get("offered_per_s")
    steps = [s for s in [*base["steps"], base["half_load"]] if s and not s.get("saturated")]
    if rate is None or not steps:
        return None
    nearest = min(steps, key=lambda s: abs(s["offered_per_s"] - rate))
    return _ratio(half["latency_ms"]["p99"], nearest["latency_ms"]["p99"])


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _common_rate(systems: dict[str, dict[str, Any]]) -> float | None:
    """The highest offered rate that every system sustained."""
    sets = [
        {s["offered_per_s"] for s in result["steps"] if not s["saturated"]}
        for result in systems.values()
    ]
    common = set.intersection(*sets) if sets else set()
    return max(common) if common else None


def _p99_at(result: dict[str, Any], rate: float) -> float | None:
    for step in result["steps"]:
        if step["offered_per_s"] == rate:
            value: float | None = step["latency_ms"]["p99"]
            return value
    return None


def choose_broker(requested: str | None = None) -> tuple[str, str]:
    """The embedded broker to measure on ("tansu" or "apache") and why it was chosen:
    ``requested`` (``--broker``), else ``TETIK_EMBEDDED_KAFKA``, else Apache Kafka where
    it can run here, else tansu. An unknown name, or ``requested`` together with
    ``TETIK_KAFKA_BOOTSTRAP`` (which would win), is a ConfigError."""
    if requested and os.environ.get(KAFKA_BOOTSTRAP_ENV):
        raise ConfigError(
            f"--broker {requested} and {KAFKA_BOOTSTRAP_ENV} both name a broker: drop one"
        )
    if requested:
        return _known_broker(requested, "--broker"), "--broker"
    configured = os.environ.get(EMBEDDED_KAFKA_ENV, "").strip()
    if configured:
        return _known_broker(configured, EMBEDDED_KAFKA_ENV), EMBEDDED_KAFKA_ENV
    missing = apache_missing()
    if missing is None:
        return "apache", "Java 17 and Maven are present"
    return "tansu", f"no Apache Kafka: {missing}"


def _known_broker(name: str, source: str) -> str:
    kind = name.strip().lower()
    if kind not in BROKERS:
        raise ConfigError(f"unknown broker {name!r} ({source}): use one of {', '.join(BROKERS)}")
    return kind


def apache_missing() -> str | None:
    """What Apache Kafka lacks to run here (Java 17; Maven unless the jars are cached),
    or None when it can run."""
    if find_java() is None:
        return "no Java 17 or newer (JAVA_HOME, PATH)"
    if shutil.which("mvn") is None:
        try:
            ensure_jars()  # returns at once when cached; without Maven it cannot fetch
        except ServerStartError:
            return f"no Maven to fetch the Apache Kafka {kafka_version()} jars"
    return None


def broker_version(kind: str) -> str:
    """The version of the embedded broker ``kind`` that a start would run ("" if unknown)."""
    if kind == "apache":
        return kafka_version()
    binary = find_kafka_binary()
    if binary is None:
        return ""
    return binary_version(binary)


def measured_broker(endpoints: Endpoints, why: str) -> dict[str, str]:
    """The broker of ``endpoints``: name and version of the one started, or "external"
    (unknown version) for ``TETIK_KAFKA_BOOTSTRAP``; its bootstrap; why it was chosen."""
    server = endpoints.servers.get("kafka")
    if server is None:
        name, version, why = "external", "", KAFKA_BOOTSTRAP_ENV
    else:
        name, version = server.name, server.version
    return {"name": name, "version": version, "bootstrap": endpoints.kafka_bootstrap, "why": why}


def bench_e2e(
    *,
    quick: bool = False,
    plan: Plan | None = None,
    systems: tuple[str, ...] = SYSTEMS,
    broker: str | None = None,
) -> dict[str, Any]:
    """Run every system through the plan on one set of servers; return the figures.

    ``broker`` ("tansu" or "apache") is the embedded broker to start; by default
    :func:`choose_broker` picks it. ``TETIK_KAFKA_BOOTSTRAP`` overrides it (an external
    broker, named "external" in the result).
    """
    plan = plan or (QUICK if quick else Plan())
    kind, why = choose_broker(broker)
    results: dict[str, dict[str, Any]] = {}
    with (
        servers(progress=say, kafka_server=kind) as endpoints,
        tempfile.TemporaryDirectory(prefix="tetik-e2e-") as tmp,
    ):
        measured = measured_broker(endpoints, why)
        label = broker_label(measured)
        say(f"e2e: measuring on {label} at {measured['bootstrap']} ({measured['why']})")
        workdir = Path(tmp)
        for name in systems:
            results[name] = Runner(name, plan, endpoints, workdir).run()
            best = results[name]["max_sustained_per_s"]
            say(f"e2e {name}: max sustained {best:,.0f} events/s on {label}")
    ratios = compare(results) if set(results) == set(SYSTEMS) else {}
    return {
        "plan": plan.__dict__,
        "broker": measured,
        "systems": results,
        "ratios": ratios,
        "work": work_note(GeneratorConfig().anon_ratio),
    }


def work_note(anon_ratio: float) -> str:
    """What the systems do differently on the clickstream (said by the report)."""
    return (
        f"{anon_ratio:.0%} of the clickstream's sessions start logged out and some log in: "
        "tetik stitches identities (SPEC section 7: a link request, a hand-off and a merge per "
        "login of a device), the hand-written baseline does not (it keys shoppers by the "
        "record's identity), so tetik does more work per event; the baseline matches tetik's "
        "actions only on a log without anonymous sessions (tests/bench/test_handwritten.py)"
    )
