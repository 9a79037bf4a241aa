"""``tetik run``: the live engine on Kafka and Redis, with recovery and several processes.

Rules of this job:

* Before the dataflow starts, the job creates missing topics (one layout,
  :meth:`flows.settings.Settings.topic_layout`), pushes ``--rules`` when
  given (a file identical to the active version changes nothing), records or
  checks the shard count, and settles what a crash left in the shards'
  outboxes (:func:`flows.stores.emissions.settle_outboxes`): that is what
  makes a restart after SIGKILL emit each action exactly once.
* The dataflow is :func:`flows.pipeline.dataflow.build_flow`: shoppers'
  states and timers live in Redis; Bytewax recovery (``--recovery-dir``,
  default ``$TETIK_RECOVERY_DIR``, else ``./.tetik/recovery``; a fresh
  temporary directory when the servers are embedded, since they start empty)
  keeps only the input's offsets and clocks, snapshotted every
  ``--snapshot-interval`` seconds (default 1).
* ``--workers N`` runs N Bytewax workers (threads) per process and
  ``--processes P`` starts P cooperating processes on loopback; the child
  processes get the settings and options as one serialised object and die
  with the parent. ``--process-id I --addresses A,B,...`` runs one process of
  a cluster that spans hosts (each host runs its own ``tetik run``); process
  0 prepares (and makes the recovery partitions), the others wait for it.
  Every process of a cluster must see the same recovery directory (shared
  storage across hosts): Bytewax finds each partition's snapshots there, and
  only process 0 ever creates partitions, so two processes never race to
  initialise them (concurrent ``init_db_dir`` fails with "database is locked").
* SIGINT/SIGTERM stop cleanly at the next batch; a second one aborts.
* Without tail (a bounded run) the input's end settles every identity link
  (:mod:`flows.pipeline.bounded`); the job then fails with one line if a
  user still waits for a hand-off.
* ``--metrics-port N`` (default ``$TETIK_METRICS_PORT``; unset: none) serves
  ``/metrics``, ``/healthz`` and ``/readyz`` (:mod:`flows.metrics`) from the
  process that runs the dataflow. With ``--processes P`` the parent runs no
  dataflow and serves nothing: child ``I`` serves port ``N + I`` (one scrape
  target per process, each with its own registry: no shared files as
  ``prometheus_client``'s multiprocess mode needs, and a dead child's target
  shows as down). Process 0 alone reports the timers pending, so a sum over
  processes counts each shard once.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import msgspec
from bytewax.dataflow import Dataflow
from bytewax.errors import BytewaxRuntimeError
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from engine.errors import ConfigError, TetikError
from flows import logs
from flows.jobs.progress import Monitor
from flows.kafka.topics import ensure_topics, topic_id, wait_for_brokers
from flows.metrics import installed
from flows.metrics.engine import ReportsSink, TimersPending
from flows.metrics.health import Health, kafka_check, redis_check
from flows.metrics.http import serve_job
from flows.metrics.kafka import SourceWatch, producer_errors
from flows.pipeline.bounded import check_settled
from flows.pipeline.breaker import Breaker, Halt
from flows.pipeline.dataflow import build_flow
from flows.pipeline.deadletters import DeadLetterSink
from flows.pipeline.rfm_live import RfmClock, RfmFollower, RfmRuntime
from flows.pipeline.rules_runtime import RulesRuntime
from flows.pipeline.segment_sweeps import RulesSweep, SegmentRecheck
from flows.pipeline.shard import ShardConfig
from flows.pipeline.source import (
    SourcePolicy,
    StoppableKafkaSource,
    remember_topic_id,
    stop_on_signals,
)
from flows.pipeline.watermark import SharedProgress, Watermark
from flows.report import say
from flows.retry import RedisClient, connect, retrying
from flows.servers.embedded import servers
from flows.servers.process import die_with_parent_preexec, free_port
from flows.settings import Settings, from_env
from flows.stores.deployment import Marker, RedisDataLost, claim_recovery_dir, current_marker
from flows.stores.emissions import Emitter, rebuild_emitted, settle_outboxes
from flows.stores.rules import RulesStore, default_who
from flows.stores.states import fix_layout, read_stats

READY_WAIT_S = 600.0  # how long a cluster's other processes wait for process 0 to prepare
# /healthz fails once the source has not polled for this long: past Redis's longest
# retry wait (5 s) many times over, so an outage alone makes it unready, not dead.
LIVE_STALE_S = 60.0


@dataclass(frozen=True)
class RunOptions:
    """How ``tetik run`` runs (see the module rules)."""

    workers: int = 1
    processes: int = 1
    recovery_dir: str = ""
    snapshot_s: float = 1.0
    tail: bool = True
    lateness_ms: int = 20
    batch_size: int = 1000
    recover_redis: bool = False
    process_id: int = 0
    addresses: tuple[str, ...] = ()  # a cluster's processes, host:port each
    metrics_port: int = 0  # 0: no /metrics (see the module rules)

    @property
    def total_workers(self) -> int:
        return self.workers * max(self.processes, len(self.addresses) or 1)


class Launch(msgspec.Struct, frozen=True):
    """Everything a child process needs, as one serialised object."""

    settings: Settings
    options: RunOptions
    directory: str


def prepare(settings: Settings, rules_file: str | None, who: str) -> None:
    """Topics, rules, the layout and the outboxes, before any worker starts."""
    wait_for_redis(settings)
    ensure_topics(
        settings.kafka_bootstrap, settings.topic_layout(), timeout=settings.kafka_timeout_s
    )
    client = connect(settings.redis_url)
    fix_layout(client, settings.keys)
    rules = RulesStore(client, settings.prefix)
    if rules_file is not None:
        version, created = rules.push_or_keep(Path(rules_file).read_bytes(), rules_file, who)
        state = "pushed" if created else "unchanged"
        say(f"rules version {version.version} ({version.hash}, {state}) active")
    if rules.active() is None:
        raise ConfigError("no rules are active: pass --rules FILE or run `tetik rules push FILE`")
    settled = settle_outboxes(
        client, settings.keys, settings.kafka_bootstrap, settings.actions_topic
    )
    if settled:
        say(f"settled {settled} record(s) left in the outboxes by the last run")


def wait_for_redis(settings: Settings) -> None:
    """Wait (bounded, ``TETIK_REDIS_TIMEOUT_S``) until Redis answers; one line per wait."""
    client = connect(settings.redis_url)
    retrying("starting", client.ping, deadline_s=settings.redis_timeout_s)


def live_flow(
    settings: Settings,
    options: RunOptions,
    halt: Halt,
    marker: Marker | None = None,
    runtime: RulesRuntime | None = None,
    health: Health | None = None,
) -> Dataflow:
    """The live dataflow on the real topics and Redis of ``settings``.

    ``halt.stop`` ends the sources (signals, the dead-letter breaker);
    ``marker`` is checked whenever Redis answers again after a fault.
    ``runtime`` is the rules to run (default: the active version of the rules
    store, followed as it changes; ``tetik ingest`` passes rules without journeys).
    What it does is counted in the process's metrics (:func:`flows.metrics.installed`);
    every poll of its source beats ``health``.
    """
    client = connect(settings.redis_url)
    metrics = installed()
    if runtime is None:
        runtime = RulesRuntime.from_store(RulesStore(client, settings.prefix), settings.windows)
    live = _segments_live(runtime, client, settings)
    several = options.total_workers > options.workers
    watermark = Watermark(
        _partition_names(settings),
        lateness_ms=options.lateness_ms,
        hold_unapplied=not several,
        idle_timeout_ms=settings.idle_timeout_ms,
        shared=SharedProgress(client, settings.keys.watermark) if several else None,
    )
    source = StoppableKafkaSource(
        [settings.kafka_bootstrap],
        [settings.events_topic],
        tail=options.tail,
        batch_size=options.batch_size,
        add_config=settings.engine_consumer_config(),
        stop=halt.stop,
        fail=halt.request,
        clock=watermark,
        policy=_source_policy(settings, client),
        watch=SourceWatch(metrics, health.beat if health is not None else lambda: None),
    )
    producer = Producer(
        {
            **settings.producer_config(exactly_once=True),
            "error_cb": producer_errors(metrics),
            "logger": logs.KAFKA,  # librdkafka's lines; its errors reach error_cb
        }
    )
    config = ShardConfig(
        runtime=live,
        watermark=watermark,
        emitter=Emitter(producer, settings.actions_topic),
        client=client,
        keys=settings.keys,
        ttl_ms=settings.state_ttl_ms,
        actions_topic=settings.actions_topic,
        dlq_topic=settings.dlq_topic,
        events_topic=settings.events_topic,
        cache_users=max(16, settings.cache_shoppers // settings.shards),
        on_back=_checking(marker, halt),
        sweeps=[SegmentRecheck(live), RulesSweep(live)],
        input_complete=None if options.tail else _not_stopped(halt),
    )
    dead_letters = DeadLetterSink(
        settings.producer_config(exactly_once=True),
        settings.dlq_topic,
        client,
        settings.keys,
        metrics=metrics,
    )
    return build_flow(
        source,  # type: ignore[arg-type]  # raise_on_errors=True: only messages come out
        dead_letters,
        ReportsSink(metrics),
        config,
        breaker=Breaker(halt, settings.breaker),
    )


def _segments_live(runtime: RulesRuntime, client: RedisClient, settings: Settings) -> RfmRuntime:
    """Segments and RFM live (SPEC 9): the rules runtime whose engines read the stored
    RFM boundaries, and this process's share of the refreshes (flows.pipeline.rfm_live)."""
    RfmClock(runtime, client, settings.keys, report=say).start()
    return RfmRuntime(runtime, RfmFollower(client, settings.keys))


def _not_stopped(halt: Halt) -> Callable[[], bool]:
    """A bounded run's input is complete at its end unless a signal or the breaker stopped it."""
    return lambda: not halt.stop.is_set()


def _checking(marker: Marker | None, halt: Halt) -> Callable[[], None] | None:
    """After a Redis fault: stop (without writing) if Redis came back empty."""
    if marker is None:
        return None

    def check() -> None:
        try:
            marker.check()
        except RedisDataLost as exc:
            halt.request(str(exc))
            raise

    return check


def _partition_names(settings: Settings) -> list[str]:
    """Every partition of the events topic, named as the Kafka source names them."""
    admin = AdminClient(settings.kafka_client())
    deadline = time.monotonic() + settings.kafka_timeout_s
    metadata = wait_for_brokers(admin, settings.kafka_bootstrap, deadline, say)
    topic = settings.events_topic
    found = metadata.topics.get(topic)
    if found is None or found.error is not None:
        raise ConfigError(f"topic {topic!r} does not exist on {settings.kafka_bootstrap}")
    return [f"{p}-{topic}" for p in sorted(found.partitions)]


def _source_policy(settings: Settings, client: RedisClient) -> SourcePolicy:
    """The events topic's identity now, against the one recorded at the last start."""
    topic = settings.events_topic
    admin = AdminClient(settings.kafka_client())
    current = topic_id(admin, topic, timeout=settings.kafka_timeout_s) or ""
    previous = remember_topic_id(client, settings.keys.topics, topic, current)  # type: ignore[arg-type]
    if previous is not None:
        say(f"topic {topic!r} was recreated since the last start (id {previous}, now {current})")
    return SourcePolicy(
        topic_ids={topic: current},
        recreated=frozenset({topic}) if previous is not None else frozenset(),
        layout=settings.topic_layout(),
        reset_earliest=settings.reset_offsets == "earliest",
        log=say,
    )


def recovery_config(directory: str, partitions: int) -> RecoveryConfig:
    """Bytewax recovery in ``directory``, creating its partitions on first use."""
    path = Path(directory)
    if not any(path.glob("part-*.sqlite3")):
        path.mkdir(parents=True, exist_ok=True)
        init_db_dir(path, partitions)  # type: ignore[no-untyped-call]
    return RecoveryConfig(str(path))  # type: ignore[no-untyped-call]


def run_engine(rules_file: str | None, options: RunOptions, who: str = "") -> int:
    """Run the live engine until SIGINT/SIGTERM (or the end of the topic without tail).

    Returns 0 after a requested stop, 3 when the engine stopped on its own
    (the dead-letter breaker, Redis that lost its data), having said why.
    """
    os.umask(0o077)  # recovery snapshots hold offsets and clocks (flows.stores.deployment)
    base = from_env()
    options = replace(options, metrics_port=options.metrics_port or base.metrics_port)
    with ExitStack() as stack:
        endpoints = stack.enter_context(servers(progress=say))
        settings = base.with_endpoints(endpoints.redis_url, endpoints.kafka_bootstrap)
        client = connect(settings.redis_url)
        if options.process_id == 0:
            prepare(settings, rules_file, who or default_who())
        directory = options.recovery_dir or _default_recovery_dir(base, stack)
        if options.process_id == 0:
            marker = claim_recovery_dir(
                directory,
                client,
                settings.prefix,
                recover=_rebuild(settings) if options.recover_redis else None,
                say=say,
            )
        else:
            marker = _await_ready(client, settings)
        halt = Halt(stop_on_signals())
        say(
            f"running: {settings.events_topic} -> {settings.actions_topic}, "
            f"{settings.shards} shards, recovery in {directory} every {options.snapshot_s:g}s "
            "(Ctrl-C stops)"
        )
        monitor = Monitor(lambda: read_stats(client, settings.keys))
        monitor.start()
        try:
            if options.processes > 1 and not options.addresses:
                code = _run_processes(settings, options, directory, halt.stop)
            else:
                code = _run_here(settings, options, directory, halt, marker)
        finally:
            monitor.stop()
        if code == 0 and not options.tail and not halt.stop.is_set() and options.process_id == 0:
            check_settled(client, settings.keys, "tetik run")
    return code


def _await_ready(client: RedisClient, settings: Settings) -> Marker:
    """A cluster's process > 0: wait until process 0 has made the deployment ready.

    Ready means the deployment's token and an active rules version exist;
    Bytewax itself holds every process until all of them have connected, and
    process 0 connects only after it has prepared.
    """
    deadline = time.monotonic() + READY_WAIT_S
    rules = RulesStore(client, settings.prefix)  # type: ignore[arg-type]
    said = False
    while time.monotonic() < deadline:
        marker = current_marker(client, settings.prefix)  # type: ignore[arg-type]
        if marker is not None and rules.active() is not None:
            return marker
        if not said:
            say("waiting for process 0 to prepare topics, rules and outboxes")
            said = True
        time.sleep(0.2)
    raise TetikError(
        "process 0 did not prepare the deployment within 10 minutes; "
        "start it (tetik run --process-id 0 --addresses ...)"
    )


def _rebuild(settings: Settings) -> Callable[[], int]:
    def rebuild() -> int:
        client = connect(settings.redis_url)
        return rebuild_emitted(
            client, settings.keys, settings.kafka_bootstrap, settings.actions_topic
        )

    return rebuild


def _run_here(
    settings: Settings, options: RunOptions, directory: str, halt: Halt, marker: Marker | None
) -> int:
    with ExitStack() as stack:
        health = _observed(settings, options, stack)
        flow = live_flow(settings, options, halt, marker, health=health)
        cluster: dict[str, Any] = {}
        if options.addresses:
            cluster = {"process_id": options.process_id, "addresses": list(options.addresses)}
        return _run_flow(
            halt,
            flow,
            workers_per_process=options.workers,
            epoch_interval=timedelta(seconds=options.snapshot_s),
            recovery_config=_cluster_recovery(directory, options),
            **cluster,
        )


def _observed(settings: Settings, options: RunOptions, stack: ExitStack) -> Health | None:
    """With a metrics port, this process's metrics served over HTTP, its health, and
    (process 0) the timers gauge, all closed by ``stack``; else None (module rules)."""
    if not options.metrics_port:
        return None
    client = connect(settings.redis_url)
    checks = {"redis": redis_check(client), "kafka": kafka_check(settings.kafka_bootstrap)}
    health = serve_job(options.metrics_port, checks, stack, stale_s=LIVE_STALE_S)
    if options.process_id == 0:
        timers = TimersPending(client, settings.keys, installed())
        timers.start()
        stack.callback(timers.stop)
    return health


def _cluster_recovery(directory: str, options: RunOptions) -> RecoveryConfig:
    """Process 0 makes the partitions; the others find them when the cluster has
    connected, which process 0 does only once they exist (see the module rules)."""
    if options.process_id == 0:
        return recovery_config(directory, options.total_workers)
    return RecoveryConfig(directory)  # type: ignore[no-untyped-call]


def _quiet_gc() -> None:
    """Fewer, shorter collections while the engine runs (a latency tail, see the README).

    What exists at start (compiled rules, modules) is frozen out of every
    collection; young objects are collected every 50,000 allocations instead
    of 700, so a batch's short-lived objects die young without a collection
    pausing the worker mid-batch.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def _run_flow(halt: Halt, flow: Dataflow, **kwargs: Any) -> int:
    """Run ``flow``; 3 with one line when it stopped on its own (see run_engine)."""
    _quiet_gc()
    try:
        cli_main(flow, **kwargs)  # type: ignore[no-untyped-call]
    except BytewaxRuntimeError as exc:
        if halt.reason is None:
            raise TetikError(
                f"the live engine failed: {exc}; its snapshots are kept, so a restart resumes "
                "from the last one (report the line above if it repeats)"
            ) from None
    if halt.reason is not None:
        say(halt.reason)
        return 3
    return 0


def _default_recovery_dir(base: Settings, stack: ExitStack) -> str:
    if base.redis_url and base.kafka_bootstrap:
        return base.recovery_dir or str(Path(".tetik") / "recovery")
    return stack.enter_context(tempfile.TemporaryDirectory(prefix="tetik-recovery-"))


def _run_processes(
    settings: Settings, options: RunOptions, directory: str, stop: threading.Event
) -> int:
    """Start ``options.processes`` cooperating processes on loopback and wait for them."""
    recovery_config(directory, options.total_workers)
    addresses = tuple(f"127.0.0.1:{free_port()}" for _ in range(options.processes))
    children = [
        _spawn(Launch(settings, _child(options, i, addresses), directory))
        for i in range(options.processes)
    ]
    while any(child.poll() is None for child in children):
        failed = any(child.poll() not in (None, 0) for child in children)
        if stop.wait(0.2) or failed:
            for child in children:
                child.terminate()
            break
    codes = [child.wait() for child in children]
    return max(codes, default=0) if any(codes) else 0


def _child(options: RunOptions, index: int, addresses: tuple[str, ...]) -> RunOptions:
    port = options.metrics_port + index if options.metrics_port else 0  # module rules
    return replace(options, process_id=index, addresses=addresses, metrics_port=port)


def _spawn(launch: Launch) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "flows.jobs.run", msgspec.json.encode(launch).decode()]
    return subprocess.Popen(args, preexec_fn=die_with_parent_preexec())


def _process_main(argv: list[str]) -> int:
    """One process of a multi-process run (started by :func:`_run_processes`)."""
    launch = msgspec.json.decode(argv[0], type=Launch)
    os.umask(0o077)
    settings, options = launch.settings, launch.options
    halt = Halt(stop_on_signals())
    client = connect(settings.redis_url)
    marker = current_marker(client, settings.prefix)
    with ExitStack() as stack:
        health = _observed(settings, options, stack)
        flow = live_flow(settings, options, halt, marker, health=health)
        return _run_flow(
            halt,
            flow,
            workers_per_process=options.workers,
            process_id=options.process_id,
            addresses=list(options.addresses),
            epoch_interval=timedelta(seconds=options.snapshot_s),
            recovery_config=RecoveryConfig(launch.directory),  # type: ignore[no-untyped-call]
        )


if __name__ == "__main__":
    try:
        sys.exit(_process_main(sys.argv[1:]))
    except TetikError as exc:
        say(str(exc))
        sys.exit(2)
