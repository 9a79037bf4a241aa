"""``make demo``: the live engine end to end on embedded real servers.

It starts a private Valkey and a tansu broker, a local SMTP server (the mail
catcher) and, as child processes (the real jobs, not in-process shortcuts),
``tetik run`` with ``examples/demo/journeys.yaml`` (the example journeys with waits in
seconds) and ``tetik deliver`` (email through SMTP, onsite into the Redis
inbox, the other channels into a JSONL file). It streams a generated
storefront clickstream (sessions of views, searches, favorites, carts,
purchases, consent and profiles in several time zones, with some malformed
records and some redeliveries) at a steady rate, stamped with the wall clock,
together with the catalog's feed (``product_update`` events: a first price and
stock per product, sent at once, the shoppers starting once the engine's
catalog holds them; then price drops, rises, stock-outs and restocks among the
shoppers' events), and shows a live view: actions
per channel and journey, suppressed by reason, the catalog's derived events
and the journeys they start, the dead-letter count and end-to-end latency
p50/p99, measured from each action's ``ingested_at``. After ``--duration``
seconds or Ctrl-C it prints a summary and stops everything it started.

The shoppers' hour: quiet hours (22:00-09:00 in each shopper's zone) would
make the demo's result depend on when it runs. So the demo picks its
shoppers' time zones for a local time, ``--at HH:MM`` (12:00 by default):
the zones where it is about that time now (:func:`clickstream.zones.zones_at`)
become the profiles' zones and the rules' default ``timezone`` (for shoppers
without a profile), written to a copy of the rules in the demo's folder. At
the default every channel sends whatever the hour; ``--at 23:00`` shows the
quiet hours deferring the sends.

The demo's folder, ``.tetik/demo/<UTC time>/`` under the working directory
(printed at the start and the end, kept afterwards), holds the children's
logs (``run.log``, ``deliver.log``), the rules and channel config they ran
with, ``deliveries.jsonl`` and the engine's recovery directory.

Time stamping: every record, shopper event or product update, is stamped with
the clock as it leaves (:func:`stream_records`), in the generator's order
(an update before the shopper events of its time or later). The generator's
hour of event time becomes the demo's minute: a price drop reaches the engine
after the views it drops below, and a restock comes about 20 s after its
stock-out.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import orjson
from aiosmtpd.controller import Controller
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from channels.onsite import read_inbox
from clickstream.generator import GeneratorConfig, generate_records
from clickstream.zones import Zone, parse_clock, zones_at
from engine.catalog import Product
from engine.errors import ConfigError
from engine.events import PRODUCT_UPDATE
from engine.state import to_view
from flows.jobs.action_watch import ActionWatch, Snapshot, render
from flows.jobs.progress import Line
from flows.kafka.producer import Record, produce_records
from flows.kafka.topics import ensure_topics
from flows.report import say
from flows.retry import RedisClient, connect
from flows.servers.embedded import servers
from flows.servers.process import free_port, stop_child
from flows.settings import Settings, from_env
from flows.stores.keys import Keys
from flows.stores.states import Shoppers, timers_pending

REDELIVER_EVERY = 50  # every 50th record is sent twice, as an at-least-once producer may
RULES = Path(__file__).resolve().parents[2] / "examples" / "demo" / "journeys.yaml"
DEFAULT_AT = "12:00"  # the shoppers' local time: daytime, outside every quiet hour
FOLDER = Path(".tetik") / "demo"  # under the working directory, one folder a run
SETTLE_S = 3.0  # after the stream ends, time for the last actions and deliveries
# The catalog's changes (drops, rises, stock-outs) per hour of the generator's event
# time; the demo's minute streams about an hour of it.
CATALOG_CHANGES_PER_HOUR = 120.0
# The journeys of examples/demo/journeys.yaml that the catalog starts or feeds.
CATALOG_JOURNEYS = (
    "favorite_on_sale",
    "price_drop_cart",
    "price_drop_viewed",
    "back_in_stock",
    "cross_sell",
)
DERIVED_COUNTERS = ("catalog.price_drop", "catalog.back_in_stock")
# The shoppers start once the engine's catalog holds the opening (or after this long).
OPENING_WAIT_S = 30.0
_PRODUCT = msgspec.msgpack.Decoder(Product)
Generated = tuple[bytes, bytes]  # a record of clickstream.generator.generate_records


@dataclasses.dataclass(frozen=True)
class Traffic:
    """The generated storefront the demo streams."""

    duration: float
    users: int
    rate: int
    seed: int
    zones: tuple[Zone, ...] = ()  # the profiles' zones (empty: the generator's own)

    def config(self) -> GeneratorConfig:
        """The generator's config: ``rate * duration`` shopper events, 1 % malformed,
        and the catalog's updates on top."""
        return GeneratorConfig(
            users=self.users,
            events=int(self.rate * self.duration),
            seed=self.seed,
            invalid_ratio=0.01,
            catalog_updates=True,
            catalog_changes_per_hour=CATALOG_CHANGES_PER_HOUR,
            timezones=self.zones,
        )


@dataclasses.dataclass(frozen=True)
class Hour:
    """The shoppers' local time the demo runs at (``--at``): their zones and the rules."""

    at: str
    zones: tuple[Zone, ...]

    @classmethod
    def at_now(cls, at: str, now_ms: int) -> Hour:
        """The zones where it is about ``at`` (``HH:MM``) at ``now_ms``."""
        try:
            minute = parse_clock(at)
        except ValueError as exc:
            raise ConfigError(f"tetik demo: {exc}") from None
        return cls(at, tuple(zones_at(minute, now_ms)))

    def rules(self) -> str:
        """The demo's journeys with the closest zone as the rules' default ``timezone``."""
        text = RULES.read_text()
        return re.sub(r"(?m)^timezone: .*$", f"timezone: {self.zones[0][0]}", text, count=1)

    def names(self) -> str:
        return ", ".join(zone for zone, *_ in self.zones)


@dataclasses.dataclass
class Tally:
    """What the demo has streamed so far (its producer thread writes, the view reads)."""

    keys: collections.Counter[bytes] = dataclasses.field(default_factory=collections.Counter)
    latest: dict[str, str] = dataclasses.field(default_factory=dict)  # product -> last update
    updates: int = 0  # product_update records (a redelivery counts once, as in keys)


class MailCatcher:
    """aiosmtpd's message handler: counts what arrives and keeps the latest."""

    def __init__(self) -> None:
        self.count = 0
        self.last: bytes = b""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.count += 1
        self.last = envelope.content
        return "250 OK"


def run_demo(*, duration: float, users: int, rate: int, seed: int, at: str = DEFAULT_AT) -> int:
    """Run the demo; return 0 when the engine emitted actions (or, at night in the
    shoppers' zones, deferred them) and everything stopped."""
    hour = Hour.at_now(at, wall_ms())
    folder = _folder()
    print(f"tetik demo: a live storefront for {duration:.0f} s at {rate:,} events/s", flush=True)
    say(f"shoppers' local time about {hour.at} (time zones {hour.names()})")
    say(f"logs in {folder}")
    stop = _stop_on_ctrl_c()
    with servers(progress=say) as endpoints:
        settings = from_env().with_endpoints(endpoints.redis_url, endpoints.kafka_bootstrap)
        ensure_topics(settings.kafka_bootstrap, settings.topic_layout())
        catcher = MailCatcher()
        logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd: a line a command
        smtp = Controller(catcher, hostname="127.0.0.1", port=free_port())
        smtp.start()
        say(f"mail catcher (SMTP) on 127.0.0.1:{smtp.port}")
        try:
            traffic = Traffic(duration, users, rate, seed, hour.zones)
            ok = _live(settings, folder, smtp.port, catcher, stop, traffic, hour)
        finally:
            smtp.stop()
    say(f"embedded servers stopped; nothing left running; logs kept in {folder}")
    return 0 if ok else 1


def _folder() -> Path:
    """A new folder for this run's logs, named by the UTC time it starts."""
    stamp = time.strftime("%Y-%m-%dT%H-%M-%SZ", time.gmtime())
    folder = Path.cwd() / FOLDER / stamp
    for n in itertools.count(2):
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            folder = Path.cwd() / FOLDER / f"{stamp}-{n}"
    raise AssertionError("unreachable")


def _stop_on_ctrl_c() -> threading.Event:
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda _s, _f: stop.set())
    signal.signal(signal.SIGTERM, lambda _s, _f: stop.set())
    return stop


def _live(
    settings: Settings,
    tmp: Path,
    smtp_port: int,
    catcher: MailCatcher,
    stop: threading.Event,
    traffic: Traffic,
    hour: Hour,
) -> bool:
    config = _channels_config(tmp, smtp_port)
    recovery = str(tmp / "recovery")
    rules = tmp / "journeys.yaml"
    rules.write_text(hour.rules())
    children = [
        _start(settings, tmp, "run", ["run", "--rules", str(rules), "--recovery-dir", recovery]),
        _start(
            settings, tmp, "deliver", ["deliver", "--config", str(config), *_next_port(settings)]
        ),
    ]
    watch = ActionWatch(
        settings.kafka_bootstrap, settings.actions_topic, settings.actions_partitions
    )
    watch.start()
    store = Shoppers(connect(settings.redis_url), settings.keys)
    tally = Tally()
    try:
        sent = _stream(settings, stop, traffic, tally, watch, store, children)
        time.sleep(0 if stop.is_set() else SETTLE_S)
    finally:
        codes = [stop_child(child) for child in children]
        watch.stop()
    data = watch.snapshot()
    _summary(settings, store, data, sent, catcher, tmp, codes, tally)
    _show_sample(store, tally.keys)
    if data.total > 0:
        return codes == [0, 0]
    pending = sum(timers_pending(store.client, settings.keys))
    if pending:
        say(
            f"no action yet: {pending:,} waits and quiet-hour deferrals pending (quiet "
            f"hours are 22:00-09:00 in the shoppers' zones, about {hour.at} now)"
        )
    return pending > 0 and codes == [0, 0]


def _channels_config(tmp: Path, smtp_port: int) -> Path:
    path = tmp / "channels.yaml"
    path.write_text(
        f"email: {{adapter: smtp, host: 127.0.0.1, port: {smtp_port}, "
        "sender: shop@tetik.example, starttls: false}\n"  # the loopback catcher has no TLS
        "onsite: {adapter: onsite}\n"
        f"default: {{adapter: jsonl, path: {tmp / 'deliveries.jsonl'}}}\n"
    )
    return path


def _next_port(settings: Settings) -> list[str]:
    """With TETIK_METRICS_PORT=N, run serves N and deliver N + 1 (not both N)."""
    return ["--metrics-port", str(settings.metrics_port + 1)] if settings.metrics_port else []


def _start(settings: Settings, tmp: Path, name: str, args: list[str]) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update(
        TETIK_REDIS_URL=settings.redis_url,
        TETIK_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
        TETIK_PREFIX=settings.prefix,
    )
    log = (tmp / f"{name}.log").open("wb")
    child = subprocess.Popen(
        [sys.executable, "-m", "cli.main", *args],
        env=env,
        stdout=log,
        stderr=log,
        start_new_session=True,  # Ctrl-C reaches the demo, which stops the child itself
    )
    say(f"tetik {name} started (pid {child.pid}, log {name}.log)")
    return child


def wall_ms() -> int:
    """The wall clock, epoch ms: the demo's stamp."""
    return time.time_ns() // 1_000_000


def stream_records(
    cfg: GeneratorConfig, clock: Callable[[], int], tally: Tally | None = None
) -> tuple[list[Record], Iterator[Record]]:
    """The demo's stream in the generator's order: the catalog's opening (the product
    updates before the first shopper's record: a first price and stock per product)
    and the rest, lazily. Each record is stamped with ``clock()`` as it is taken, every
    ``REDELIVER_EVERY``-th is sent twice (the same bytes); ``tally`` counts shoppers'
    records by key and the product updates."""
    tally = tally if tally is not None else Tally()
    opening, rest = _split_opening(generate_records(cfg))
    index = itertools.count()
    return list(_stamped(opening, clock, tally, index)), _stamped(rest, clock, tally, index)


def _stamped(
    records: Iterable[Generated],
    clock: Callable[[], int],
    tally: Tally,
    index: Iterator[int],
) -> Iterator[Record]:
    for key, value in records:
        n = next(index)
        doc = _decoded(value)
        if doc is not None and "ts" in doc:
            doc["ts"] = clock()
            value = orjson.dumps(doc)
        if doc is not None and doc.get("type") == PRODUCT_UPDATE:
            tally.updates += 1
            tally.latest[str(doc.get("product_id"))] = str(doc.get("event_id"))
        else:
            tally.keys[key] += 1
        yield key, value
        if n % REDELIVER_EVERY == REDELIVER_EVERY - 1:
            yield key, value


def _decoded(value: bytes) -> dict[str, Any] | None:
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None  # a malformed record stays malformed
    return doc if isinstance(doc, dict) else None


def _split_opening(
    records: Iterable[Generated],
) -> tuple[list[Generated], Iterator[Generated]]:
    """The product updates before the first shopper's record, and the rest."""
    rest = iter(records)
    opening: list[Generated] = []
    for record in rest:
        doc = _decoded(record[1])
        if doc is None or doc.get("type") != PRODUCT_UPDATE:
            return opening, itertools.chain([record], rest)
        opening.append(record)
    return opening, iter(())


def _catalog_taken(
    client: RedisClient, keys: Keys, tally: Tally, stop: threading.Event
) -> tuple[int, float]:
    """Wait (up to ``OPENING_WAIT_S``) until the engine's catalog holds every product
    streamed so far; (how many it holds, seconds waited)."""
    start = time.monotonic()
    pids = sorted(tally.latest)
    held = 0
    while not stop.is_set() and time.monotonic() - start < OPENING_WAIT_S:
        held = sum(p is not None for p in _products(client, keys, pids))
        if held == len(pids):
            break
        time.sleep(0.2)
    return held, time.monotonic() - start


def _products(client: RedisClient, keys: Keys, pids: list[str]) -> list[Product | None]:
    """The engine's catalog record of each product (None: not taken yet)."""
    pipe = client.pipeline(transaction=False)
    for pid in pids:
        pipe.get(keys.product(pid))
    return [_PRODUCT.decode(raw) if raw else None for raw in pipe.execute()]


def _until(records: Iterator[Record], stop: threading.Event) -> Iterator[Record]:
    for record in records:
        if stop.is_set():
            return
        yield record


def _stream(
    settings: Settings,
    stop: threading.Event,
    traffic: Traffic,
    tally: Tally,
    watch: ActionWatch,
    store: Shoppers,
    children: list[subprocess.Popen[bytes]],
) -> int:
    """Produce for ``duration`` s (or until Ctrl-C) while refreshing the view: the
    catalog's opening at once, then the rest at ``rate`` records/s."""
    opening, rest = stream_records(traffic.config(), wall_ms, tally)
    sent = [produce_records(settings.kafka_bootstrap, settings.events_topic, opening)]
    held, waited = _catalog_taken(connect(settings.redis_url), settings.keys, tally, stop)
    say(
        f"catalog: {len(opening):,} product_update records sent at once (a first price "
        f"and stock each), the engine's catalog held {held:,} products {waited:.1f} s later"
    )
    done = threading.Event()

    def produce() -> None:
        total = produce_records(
            settings.kafka_bootstrap,
            settings.events_topic,
            _until(rest, stop),
            rate=traffic.rate,
            on_progress=lambda n: sent.__setitem__(0, len(opening) + n),
        )
        sent[0] = len(opening) + total
        done.set()

    threading.Thread(target=produce, daemon=True, name="tetik-demo-producer").start()
    _view_loop(watch, store, sent, done, stop, children, tally)
    return sent[0]


def _view_loop(
    watch: ActionWatch,
    store: Shoppers,
    sent: list[int],
    done: threading.Event,
    stop: threading.Event,
    children: list[subprocess.Popen[bytes]],
    tally: Tally,
) -> None:
    view = Line(sys.stdout, every_s=5.0)  # live on a terminal, a line every 5 s elsewhere
    start = time.monotonic()
    try:
        while not (done.is_set() or stop.is_set()):
            time.sleep(1.0)
            if any(child.poll() is not None for child in children):
                view.close()
                print("a child job exited early; see its log", flush=True)
                stop.set()
                break
            elapsed = time.monotonic() - start
            data, stats = watch.snapshot(), store.stats()
            lines = render(data, sent[0], stats.get("invalid", 0), elapsed)
            lines[-1:-1] = catalog_lines(data, stats, tally.updates)  # latency stays last
            view.update("\n".join(lines) if view.tty else " | ".join(lines[:1] + lines[-3:]))
    finally:
        view.close()


def _summary(
    settings: Settings,
    store: Shoppers,
    data: Snapshot,
    sent: int,
    catcher: MailCatcher,
    tmp: Path,
    codes: list[int],
    tally: Tally,
) -> None:
    stats = store.stats()
    dlq, reason = _read_dlq(settings)
    print("\nsummary")
    lines = render(data, sent, dlq, 0)[1:]
    lines[-1:-1] = catalog_lines(data, stats, tally.updates)
    for line in lines:
        print(f"  {line}")
    print(f"  {_taken(connect(settings.redis_url), settings.keys, tally)}")
    print(
        f"  actions: {data.total:,} read from the {settings.actions_partitions} partitions "
        f"of {settings.actions_topic}; the shards emitted {stats.get('actions.emitted', 0):,}"
    )
    print(
        f"  events: applied {stats.get('applied', 0):,}, duplicate "
        f"{stats.get('duplicate', 0):,}, invalid {stats.get('invalid', 0):,}; dead-letter "
        f"topic {settings.dlq_topic}: {dlq} records; first reason: {reason}"
    )
    print(f"  enrollments ended by rules changes: {_ended(stats)}")
    _deliveries(settings, catcher, tmp)
    print(f"  jobs exited with codes run={codes[0]} deliver={codes[1]}")


def catalog_lines(data: Snapshot, stats: dict[str, int], updates: int) -> list[str]:
    """The view's catalog lines: product updates streamed, the events the shards
    derived from them (their stats), and what the catalog's journeys sent."""
    derived = "  ".join(f"{name[8:]} {stats.get(name, 0):,}" for name in DERIVED_COUNTERS)
    journeys = "  ".join(f"{name} {data.journeys.get(name, 0):,}" for name in CATALOG_JOURNEYS)
    return [
        f"catalog             product updates sent {updates:,}  derived {derived}",
        f"catalog journeys    {journeys}",
    ]


def _taken(client: RedisClient, keys: Keys, tally: Tally) -> str:
    """How many products the engine's catalog holds at the last update streamed."""
    pids = sorted(tally.latest)
    stored = _products(client, keys, pids)
    held = sum(product is not None for product in stored)
    latest = sum(
        product is not None and product.event == tally.latest[pid]
        for pid, product in zip(pids, stored, strict=True)
    )
    return (
        f"product updates taken: the catalog holds {held:,} of the {len(pids):,} products "
        f"streamed, {latest:,} at the last update sent"
    )


def _ended(stats: dict[str, int]) -> str:
    ended = {k: v for k, v in stats.items() if k.startswith("ended.")}
    return ", ".join(f"{k[6:]} {v}" for k, v in ended.items()) or "none"


def _deliveries(settings: Settings, catcher: MailCatcher, tmp: Path) -> None:
    path = tmp / "deliveries.jsonl"
    lines = path.read_bytes().count(b"\n") if path.exists() else 0
    print(
        f"  delivered: {catcher.count:,} emails to the SMTP catcher, {lines:,} push/sms/"
        "whatsapp messages to deliveries.jsonl"
    )
    client = connect(settings.redis_url)
    keys = settings.keys
    inboxes = list(client.scan_iter(match=keys.inboxes, count=1000))
    if inboxes:
        user = keys.inbox_user(inboxes[0])
        items = read_inbox(client, keys, user)
        print(
            f"  onsite inboxes: {len(inboxes):,}; `tetik onsite {user}` shows {len(items)} "
            f"message(s), latest: {orjson.dumps(items[0]).decode() if items else '-'}"
        )


def _show_sample(store: Shoppers, keys: collections.Counter[bytes]) -> None:
    known = [(n, k) for k, n in keys.items() if k and k.startswith(b"u")]
    if not known:
        return
    _, key = max(known)
    state = store.load(key.decode())
    if state is None:
        return
    view = to_view(state)
    # `tetik state` prints every stored record; here each window shows its size and latest.
    view["windows"] = {
        name: {"count": len(records), "latest": records[-1]}
        for name, records in view["windows"].items()
    }
    print(f"\nstate of the most active shopper (`tetik state {key.decode()}`, windows shortened):")
    print(orjson.dumps(view, option=orjson.OPT_INDENT_2).decode())


def _read_dlq(settings: Settings) -> tuple[int, str]:
    """Count the dead-letter records by reading them (tansu's watermarks lag)."""
    consumer = Consumer(
        {
            **settings.kafka_client(),
            "group.id": "tetik-demo",
            "enable.auto.commit": False,
        }
    )
    consumer.assign(
        [
            TopicPartition(settings.dlq_topic, p, OFFSET_BEGINNING)
            for p in range(settings.dlq_partitions)
        ]
    )
    count, reason, quiet_since = 0, "-", time.monotonic()
    try:
        while time.monotonic() - quiet_since < 1.5:
            message = consumer.poll(0.2)
            if message is None or message.error() is not None:
                continue
            count, quiet_since = count + 1, time.monotonic()
            if reason == "-":
                reason = _header(message.headers() or [], "tetik.error.reason")
        return count, reason
    finally:
        consumer.close()


def _header(headers: Any, name: str) -> str:
    value = dict(headers).get(name)
    return value.decode() if isinstance(value, bytes) else str(value)
