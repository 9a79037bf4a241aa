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
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import orjson
import redis
from bytewax.connectors.kafka import KafkaSink
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from engine.errors import ConfigError
from engine.rules.loader import load_rules
from flows.embedded import die_with_parent_preexec, free_port, servers
from flows.jobs import say
from flows.ledger import ActionEmitter, Ledger, resolve_pending, retention_ms
from flows.lifecycle import StoppableKafkaSource, stop_on_signals
from flows.progress import Monitor
from flows.rulestore import RulesStore, default_who
from flows.runtime import RulesRuntime
from flows.settings import Settings, from_env
from flows.store import BatchLoader, StateStore
from flows.topics import ensure_topics
from flows.trigger import OutcomeSink, build_trigger_flow
from flows.watermark import SharedProgress, Watermark

DEFAULT_PARTITIONS = 4
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


def prepare(settings: Settings, rules_file: str | None, who: str) -> None:
    """Topics, rules and the ledger, before any worker starts (see the module rules)."""
    ensure_topics(
        settings.kafka_bootstrap,
        {
            settings.events_topic: DEFAULT_PARTITIONS,
            settings.dlq_topic: 1,
            settings.actions_topic: 1,
        },
    )
    rules = RulesStore(redis.Redis.from_url(settings.redis_url), settings.prefix)
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


def _ledger(settings: Settings, rules: RulesStore) -> Ledger:
    client = redis.Redis.from_url(settings.redis_url)
    active = rules.active()
    if active is None:
        return Ledger(client, settings.prefix)
    return Ledger(client, settings.prefix, retention_ms(load_rules(active.text, active.filename)))


def live_flow(settings: Settings, options: RunOptions, stop: threading.Event) -> Dataflow:
    """The trigger flow on the real topics and Redis of ``settings``."""
    client = redis.Redis.from_url(settings.redis_url)
    rules = RulesStore(client, settings.prefix)
    runtime = RulesRuntime.from_store(rules, settings.windows)
    watermark = Watermark(
        _partition_names(settings),
        lateness_ms=options.lateness_ms,
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
        on_poll=watermark.polled,
    )
    store = StateStore.from_url(settings.redis_url, settings.prefix, settings.windows)
    ledger = Ledger(client, settings.prefix, retention_ms(runtime.engine.rules))

    def emitter() -> ActionEmitter:
        producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "linger.ms": 1})
        return ActionEmitter(ledger, producer, settings.actions_topic)

    return build_trigger_flow(
        source,  # type: ignore[arg-type]  # raise_on_errors=True: only messages come out
        KafkaSink(brokers, settings.dlq_topic, add_config={"linger.ms": "5"}),
        OutcomeSink(emitter, store, runtime),
        BatchLoader(store),
        runtime,
        watermark,
    )


def _partition_names(settings: Settings) -> list[str]:
    """Every partition of the events topic, named as Bytewax's Kafka source names them."""
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    topic = settings.events_topic
    metadata = admin.list_topics(topic, timeout=10).topics[topic]
    return [f"{p}-{topic}" for p in sorted(metadata.partitions)]


def recovery_config(directory: str, partitions: int) -> RecoveryConfig:
    """Bytewax recovery in ``directory``, creating its partitions on first use."""
    path = Path(directory)
    if not any(path.glob("part-*.sqlite3")):
        path.mkdir(parents=True, exist_ok=True)
        init_db_dir(path, partitions)  # type: ignore[no-untyped-call]
    return RecoveryConfig(str(path))  # type: ignore[no-untyped-call]


def claim_recovery_dir(directory: str, client: redis.Redis, prefix: str) -> None:
    """Refuse a recovery directory written for other servers (its offsets would be wrong).

    A new directory gets the token of this deployment (``{prefix}:recovery``
    in Redis, created on first use) in ``tetik.json``; a directory with
    snapshots but another token, or none, belongs to a different Redis/Kafka.
    """
    path = Path(directory)
    token_key = f"{prefix}:recovery"
    client.set(token_key, os.urandom(8).hex(), nx=True)
    raw = client.get(token_key)
    token = raw.decode() if isinstance(raw, bytes) else str(raw)
    marker = path / "tetik.json"
    if any(path.glob("part-*.sqlite3")):
        found = orjson.loads(marker.read_bytes()).get("token") if marker.exists() else None
        if found != token:
            raise ConfigError(
                f"recovery directory {directory} holds snapshots of another deployment (its "
                "offsets and states do not belong to these servers); pass an empty "
                "--recovery-dir, or delete that one if its deployment is gone"
            )
        return
    path.mkdir(parents=True, exist_ok=True)
    marker.write_bytes(orjson.dumps({"token": token, "prefix": prefix}))


def run_engine(rules_file: str | None, options: RunOptions, who: str = "") -> int:
    """Run the live engine until SIGINT/SIGTERM (or the end of the topic without tail)."""
    base = from_env()
    with ExitStack() as stack:
        endpoints = stack.enter_context(servers(progress=say))
        settings = base.with_endpoints(endpoints.redis_url, endpoints.kafka_bootstrap)
        prepare(settings, rules_file, who or default_who())
        directory = options.recovery_dir or _default_recovery_dir(base, stack)
        claim_recovery_dir(directory, redis.Redis.from_url(settings.redis_url), settings.prefix)
        stop = stop_on_signals()
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
                _run_here(settings, options, directory, stop)
            else:
                _run_processes(settings, options, directory, stop)
        finally:
            monitor.stop()
    return 0


def _run_here(
    settings: Settings, options: RunOptions, directory: str, stop: threading.Event
) -> None:
    flow = live_flow(settings, options, stop)
    cli_main(  # type: ignore[no-untyped-call]
        flow,
        workers_per_process=options.workers,
        epoch_interval=timedelta(seconds=options.snapshot_s),
        recovery_config=recovery_config(directory, options.workers * options.processes),
    )


def _default_recovery_dir(base: Settings, stack: ExitStack) -> str:
    if base.redis_url and base.kafka_bootstrap:
        return os.environ.get("TETIK_RECOVERY_DIR", str(Path(".tetik") / "recovery"))
    return stack.enter_context(tempfile.TemporaryDirectory(prefix="tetik-recovery-"))


def _run_processes(
    settings: Settings, options: RunOptions, directory: str, stop: threading.Event
) -> None:
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
        if stop.wait(0.2):
            for child in children:
                child.terminate()
            break
    for child in children:
        child.wait()


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
    settings = from_env()
    stop = stop_on_signals()
    flow = live_flow(settings, options, stop)
    cli_main(  # type: ignore[no-untyped-call]
        flow,
        workers_per_process=options.workers,
        process_id=int(index),
        addresses=addresses.split(","),
        epoch_interval=timedelta(seconds=options.snapshot_s),
        recovery_config=RecoveryConfig(directory),  # type: ignore[no-untyped-call]
    )
    return 0


if __name__ == "__main__":
    sys.exit(_process_main(sys.argv[1:]))
