"""``tetik run``: the live engine on Kafka and Redis, with recovery and several processes.

Rules of this job:

* Before the dataflow starts, the job creates missing topics (``events``,
  ``events.dlq``, ``actions``), pushes ``--rules`` when given (a file
  identical to the active version changes nothing), and settles the action
  ledger's pending claims (:func:`flows.ledger.resolve_pending`): that is
  what makes a restart after SIGKILL emit each action exactly once.
* Bytewax recovery is on: ``--recovery-dir`` (default ``$TETIK_RECOVERY_DIR``,
  else ``./.tetik/recovery``; a fresh temporary directory when the servers
  are embedded, since they start empty) keeps source offsets, user states
  and pending timers, snapshotted every ``--snapshot-interval`` seconds
  (default 1). A restart resumes from the last snapshot.
* ``--workers N`` runs N Bytewax workers (threads) per process and
  ``--processes P`` starts P cooperating processes on loopback; a user's
  events stay in order on one worker either way. The child processes die
  with the parent.
* SIGINT/SIGTERM stop cleanly at the next batch; a second one aborts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import redis
from bytewax.dataflow import Dataflow
from bytewax.errors import BytewaxRuntimeError
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from engine.errors import ConfigError, TetikError
from engine.rules.loader import load_rules
from flows.breaker import Breaker, Halt
from flows.deployment import Marker, RedisDataLost, claim_recovery_dir, token_key
from flows.jobs import say
from flows.kafka.topics import ensure_topics, topic_id, wait_for_brokers
from flows.ledger import (
    PRODUCER_CONFIG,
    ActionEmitter,
    Ledger,
    rebuild_from_topic,
    resolve_pending,
    retention_ms,
)
from flows.lifecycle import (
    SourcePolicy,
    StoppableKafkaSource,
    remember_topic_id,
    stop_on_signals,
)
from flows.progress import Monitor
from flows.retry import connect, retrying
from flows.runtime import RulesRuntime
from flows.servers.embedded import servers
from flows.servers.process import die_with_parent_preexec, free_port
from flows.settings import Settings, from_env
from flows.store import BatchLoader, StateStore
from flows.stores.rules import RulesStore, default_who
from flows.trigger import OutcomeSink, build_trigger_flow
from flows.watermark import SharedProgress, Watermark

# How long the broker may hold an empty fetch. librdkafka's default (500 ms) showed
# as a 140 ms median latency on tansu, which does not answer early when data
# arrives; 5 ms kept tansu busy at 120% CPU at 800 events/s, and latency grew.
# Measured at 800 events/s for 40 s: 20 ms gives a 27 ms median, tansu at 20%.
LOW_LATENCY_CONSUMER = {"fetch.wait.max.ms": "20"}


@dataclass(frozen=True)
class RunOptions:
    """How ``tetik run`` runs (see the module rules)."""

    workers: int = 1
    processes: int = 1
    recovery_dir: str = ""
    snapshot_s: float = 1.0
    tail: bool = True
    lateness_ms: int = 200
    batch_size: int = 1000
    recover_redis: bool = False


def prepare(settings: Settings, rules_file: str | None, who: str) -> None:
    """Topics, rules and the ledger, before any worker starts (see the module rules)."""
    wait_for_redis(settings)
    ensure_topics(
        settings.kafka_bootstrap, settings.topic_layout(), timeout=settings.kafka_timeout_s
    )
    rules = RulesStore(connect(settings.redis_url), settings.prefix)
    if rules_file is not None:
        version, created = rules.push_or_keep(Path(rules_file).read_bytes(), rules_file, who)
        state = "pushed" if created else "unchanged"
        say(f"rules version {version.version} ({version.hash}, {state}) active")
    if rules.active() is None:
        raise ConfigError("no rules are active: pass --rules FILE or run `tetik rules push FILE`")
    ledger = _ledger(settings, rules)
    settled = resolve_pending(ledger, settings.kafka_bootstrap, settings.actions_topic)
    if settled:
        say(f"settled {settled} action(s) left pending by the last run")


def wait_for_redis(settings: Settings) -> None:
    """Wait (bounded, ``TETIK_REDIS_TIMEOUT_S``) until Redis answers; one line per wait."""
    client = connect(settings.redis_url)
    retrying("starting", client.ping, deadline_s=settings.redis_timeout_s)


def _ledger(settings: Settings, rules: RulesStore) -> Ledger:
    client = connect(settings.redis_url)
    active = rules.active()
    if active is None:
        return Ledger(client, settings.prefix)
    return Ledger(client, settings.prefix, retention_ms(load_rules(active.text, active.filename)))


def live_flow(
    settings: Settings, options: RunOptions, halt: Halt, marker: Marker | None = None
) -> Dataflow:
    """The trigger flow on the real topics and Redis of ``settings``.

    ``halt.stop`` ends the sources (signals, the dead-letter breaker);
    ``marker`` is checked whenever Redis answers again after a fault.
    """
    stop = halt.stop
    client = connect(settings.redis_url)
    rules = RulesStore(client, settings.prefix)
    runtime = RulesRuntime.from_store(rules, settings.windows)
    watermark = Watermark(
        _partition_names(settings),
        lateness_ms=options.lateness_ms,
        hold_unapplied=options.processes == 1,
        idle_timeout_ms=settings.idle_timeout_ms,
        shared=SharedProgress(client, f"{settings.prefix}:watermark")
        if options.processes > 1
        else None,
    )
    brokers = [settings.kafka_bootstrap]
    source = StoppableKafkaSource(
        brokers,
        [settings.events_topic],
        tail=options.tail,
        batch_size=options.batch_size,
        add_config=LOW_LATENCY_CONSUMER,
        stop=stop,
        fail=halt.request,
        clock=watermark,
        policy=_source_policy(settings, client),
    )
    store = StateStore.from_url(settings.redis_url, settings.prefix, settings.windows)
    ledger = Ledger(client, settings.prefix, retention_ms(runtime.engine.rules))
    on_back = _checking(marker, halt)

    def emitter() -> ActionEmitter:
        producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, **PRODUCER_CONFIG})
        return ActionEmitter(ledger, producer, settings.actions_topic, settings.dlq_topic)

    return build_trigger_flow(
        source,  # type: ignore[arg-type]  # raise_on_errors=True: only messages come out
        OutcomeSink(emitter, store, runtime, on_back),
        BatchLoader(store, on_back),
        runtime,
        watermark,
        breaker=Breaker(halt, settings.breaker),
    )


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
    """Every partition of the events topic, named as Bytewax's Kafka source names them."""
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    deadline = time.monotonic() + settings.kafka_timeout_s
    metadata = wait_for_brokers(admin, settings.kafka_bootstrap, deadline, say)
    topic = settings.events_topic
    found = metadata.topics.get(topic)
    if found is None or found.error is not None:
        raise ConfigError(f"topic {topic!r} does not exist on {settings.kafka_bootstrap}")
    return [f"{p}-{topic}" for p in sorted(found.partitions)]


def _source_policy(settings: Settings, client: redis.Redis) -> SourcePolicy:
    """The events topic's identity now, against the one recorded at the last start."""
    topic = settings.events_topic
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    current = topic_id(admin, topic, timeout=settings.kafka_timeout_s) or ""
    previous = remember_topic_id(client, f"{settings.prefix}:topics", topic, current)
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
    os.umask(0o077)  # recovery snapshots hold profile data (flows.deployment)
    base = from_env()
    with ExitStack() as stack:
        endpoints = stack.enter_context(servers(progress=say))
        settings = base.with_endpoints(endpoints.redis_url, endpoints.kafka_bootstrap)
        prepare(settings, rules_file, who or default_who())
        directory = options.recovery_dir or _default_recovery_dir(base, stack)
        marker = claim_recovery_dir(
            directory,
            connect(settings.redis_url),
            settings.prefix,
            recover=_rebuild_ledger(settings) if options.recover_redis else None,
            say=say,
        )
        halt = Halt(stop_on_signals())
        say(
            f"running: {settings.events_topic} -> {settings.actions_topic}, recovery in "
            f"{directory} every {options.snapshot_s:g}s (Ctrl-C stops)"
        )
        monitor = Monitor(
            StateStore.from_url(settings.redis_url, settings.prefix, settings.windows)
        )
        monitor.start()
        try:
            if options.processes == 1:
                code = _run_here(settings, options, directory, halt, marker)
            else:
                code = _run_processes(settings, options, directory, halt.stop)
        finally:
            monitor.stop()
    return code


def _rebuild_ledger(settings: Settings) -> Callable[[], int]:
    def rebuild() -> int:
        rules = RulesStore(connect(settings.redis_url), settings.prefix)
        ledger = _ledger(settings, rules)
        return rebuild_from_topic(ledger, settings.kafka_bootstrap, settings.actions_topic)

    return rebuild


def _run_here(
    settings: Settings, options: RunOptions, directory: str, halt: Halt, marker: Marker | None
) -> int:
    flow = live_flow(settings, options, halt, marker)
    return _run_flow(
        halt,
        flow,
        workers_per_process=options.workers,
        epoch_interval=timedelta(seconds=options.snapshot_s),
        recovery_config=recovery_config(directory, options.workers * options.processes),
    )


def _run_flow(halt: Halt, flow: Dataflow, **kwargs: Any) -> int:
    """Run ``flow``; 3 with one line when it stopped on its own (see run_engine)."""
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
        return os.environ.get("TETIK_RECOVERY_DIR", str(Path(".tetik") / "recovery"))
    return stack.enter_context(tempfile.TemporaryDirectory(prefix="tetik-recovery-"))


def _run_processes(
    settings: Settings, options: RunOptions, directory: str, stop: threading.Event
) -> int:
    """Start ``options.processes`` cooperating processes and wait for them."""
    recovery_config(directory, options.workers * options.processes)
    addresses = ",".join(f"127.0.0.1:{free_port()}" for _ in range(options.processes))
    env = {
        **os.environ,
        "TETIK_REDIS_URL": settings.redis_url,
        "TETIK_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
    }
    children = [_spawn(i, addresses, options, directory, env) for i in range(options.processes)]
    while any(child.poll() is None for child in children):
        failed = any(child.poll() not in (None, 0) for child in children)
        if stop.wait(0.2) or failed:
            for child in children:
                child.terminate()
            break
    codes = [child.wait() for child in children]
    return max(codes, default=0) if any(codes) else 0


def _spawn(
    index: int, addresses: str, options: RunOptions, directory: str, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    args = [
        sys.executable,
        "-m",
        "flows.run",
        str(index),
        addresses,
        str(options.workers),
        directory,
        str(options.snapshot_s),
        "1" if options.tail else "0",
        str(options.lateness_ms),
        str(options.processes),
    ]
    return subprocess.Popen(args, env=env, preexec_fn=die_with_parent_preexec())


def _process_main(argv: list[str]) -> int:
    """One process of a multi-process run (started by :func:`_run_processes`)."""
    index, addresses, workers, directory, snapshot, tail, lateness, procs = argv
    options = RunOptions(
        workers=int(workers),
        processes=int(procs),
        snapshot_s=float(snapshot),
        tail=tail == "1",
        lateness_ms=int(lateness),
    )
    os.umask(0o077)
    settings = from_env()
    halt = Halt(stop_on_signals())
    client = connect(settings.redis_url)
    token = client.get(token_key(settings.prefix))
    marker = None if token is None else Marker(client, settings.prefix, _text(token))
    flow = live_flow(settings, options, halt, marker)
    return _run_flow(
        halt,
        flow,
        workers_per_process=options.workers,
        process_id=int(index),
        addresses=addresses.split(","),
        epoch_interval=timedelta(seconds=options.snapshot_s),
        recovery_config=RecoveryConfig(directory),  # type: ignore[no-untyped-call]
    )


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


if __name__ == "__main__":
    try:
        sys.exit(_process_main(sys.argv[1:]))
    except TetikError as exc:
        say(str(exc))
        sys.exit(2)
