"""``tetik bench catalog-fanout``: one price drop fanned out to 100,000 shoppers, live.

Goal (issue 14): one price drop fanned out to 100k interested shoppers, live,
one worker: every derived event applied within 10 s, while the p99 of
ordinary events stays <= 2x its value without the fan-out.

Set-up (not measured): on the bench's servers (embedded Valkey and the
Kafka broker of :func:`bench.e2e.choose_broker`, or ``TETIK_REDIS_URL`` /
``TETIK_KAFKA_BOOTSTRAP``), 100,000 shoppers (quick: 10,000) are written
straight into Redis, as :mod:`bench.segments_live` does: states made by the
engine from :data:`TEMPLATES` histories (each viewed product :data:`PRODUCT`
at 100.0 within the last 20 days, one in three also made it a favorite,
with a few views of other products), each copied under its own identity
into its shard, with the shard's shopper index and its interest entry
(:func:`engine.interest.interest_of`, packed by
:func:`flows.stores.catalog.pack_interest`, under ``ShardKeys.interest``),
all in pipelines; and the catalog knows the product at 100.0.

Then ``tetik run`` (the live dataflow, :func:`flows.pipeline.dataflow.build_flow`,
one worker, a child process as in :mod:`bench.e2e`) runs :data:`RULES`:
``bench.journey``'s abandoned-cart journey and a ``viewed_pricey`` journey
(``onsite`` at once on a view of a product at :data:`PING_PRICE` or more,
about one event in five: enough samples for a p99 in a few seconds), whose
event-caused actions are the ordinary events' latency samples (event ->
action on Kafka, as ``bench e2e`` measures them), and a ``price_drop``
journey that sends an e-mail. A load process sends the generated
clickstream of other shoppers (20,000 people) at :data:`RATE` events/s
throughout:

1. warm-up (:data:`WARM_S`, not measured), then drained;
2. ``before``: :data:`BASELINE_S` seconds of the stream alone;
3. ``fan-out``: the stream goes on, and a ``product_update`` lowering the
   product to 80.0 is produced to the events topic; the stream keeps going
   until every derived event is applied (the shards' ``catalog.price_drop``
   counter, :func:`flows.stores.states.read_stats`, reaches the shoppers);
4. ``after``: once drained, :data:`BASELINE_S` seconds of the stream alone
   again. The baseline is ``before`` and ``after`` together, so a drift of
   the machine over the run (other processes, a broker warming up) does not
   favour either side.

Reported: when the update was taken (the fan-out stage wrote the product:
polled in Redis), the seconds from taken (the goal's figure) and from sent
until every ``price_drop`` was applied, and until the last ``price_drop``
e-mail was on Kafka; the p50/p99 latency (event -> action on Kafka) of the
ordinary actions caused by events sent during the fan-out, before it and
after it, and the ratio of the p99 during it to the p99 before and after;
the CPU of each process during the fan-out and the machine's load average
(a loaded machine shows in every window, so the ratio, taken in the same
run, is the fairer figure).
"""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Producer

from bench.e2e import (
    CpuMeter,
    Probe,
    choose_broker,
    make_system,
    measured_broker,
    running,
)
from bench.journey import JOURNEY
from bench.journey import RULES as CART_RULES
from bench.load import PRODUCER_CONFIG, LoadProcess, StepDone
from bench.percentiles import summary
from bench.segments_live import populate as populate_shoppers
from bench.tables import broker_label, table
from bench.watch import OutputWatch
from clickstream.generator import GeneratorConfig
from engine.events import PRODUCT_UPDATE, Event
from engine.interest import interest_of
from engine.journeys import Engine
from engine.rules.loader import load_rules
from engine.state import UserState
from flows.jobs.progress import Bar
from flows.kafka.topics import ensure_topics
from flows.report import say
from flows.retry import RedisClient, connect
from flows.servers.embedded import Endpoints, servers
from flows.settings import from_env
from flows.stores.catalog import CatalogStore, pack_interest
from flows.stores.keys import Keys, ShardKeys
from flows.stores.states import read_stats

SHOPPERS = 100_000
QUICK_SHOPPERS = 10_000
RATE = 1_000  # ordinary events per second, throughout
BASELINE_S = 15.0
QUICK_BASELINE_S = 8.0
WARM_S = 10.0  # Apache Kafka's JVM and the worker warm up
QUICK_WARM_S = 5.0
STEP_S = 1.0  # the stream is sent in steps of this long, back to back
TIMEOUT_S = 300.0  # the fan-out is reported unfinished after this long
GOAL_S = 10.0
GOAL_RATIO = 2.0
TEMPLATES = 300
PRODUCT = "bench-drop-p1"
PRICE, NEW_PRICE = 100.0, 80.0
DROP_JOURNEY = "price_drop_mail"
DAY = 86_400_000
PING_JOURNEY = "viewed_pricey"
PING_PRICE = 250  # about one event in five of the generated stream is such a view
RULES = (
    CART_RULES
    + f"""  - id: {PING_JOURNEY}
    trigger: {{event: view_product, if: "event.price >= {PING_PRICE}"}}
    reentry: always
    steps:
      - send: onsite
  - id: {DROP_JOURNEY}
    trigger: price_drop
    key: product_id
    steps:
      - send: email
"""
)
ORDINARY = (JOURNEY, PING_JOURNEY)  # their event-caused actions are the latency samples


def templates(engine: Engine, now: int, count: int = TEMPLATES) -> list[UserState]:
    """Interested shoppers' states, made by ``engine`` (module docstring)."""
    rng = random.Random(14)
    made = []
    for n in range(count):
        state = UserState(key=f"template{n}")
        seen = now - rng.randrange(DAY, 20 * DAY)
        docs: list[dict[str, Any]] = [
            {"type": "view_product", "ts": seen - rng.randrange(1, 3 * DAY),
             "product_id": f"p{rng.randrange(5000):06d}", "price": 30.0}
            for _ in range(rng.randrange(4))
        ]  # fmt: skip
        docs.append({"type": "view_product", "ts": seen, "product_id": PRODUCT, "price": PRICE})
        if n % 3 == 0:
            docs.append(
                {"type": "add_favorite", "ts": seen + 60_000, "product_id": PRODUCT, "price": PRICE}
            )
        for i, doc in enumerate(sorted(docs, key=lambda d: int(d["ts"]))):
            event = Event(event_id=f"t{n}-{i}", user_id=state.key, **doc)
            engine.on_event(state, event, event.ts)
        made.append(state)
    return made


def populate(client: RedisClient, keys: Keys, shoppers: int, engine: Engine, now: int) -> str:
    """Write ``shoppers`` copies of :func:`templates`, their shopper index and interest
    entries, and the product at :data:`PRICE`; the shoppers' name prefix."""
    made = templates(engine, now)
    packed = []
    for state in made:
        interest = interest_of(state, PRODUCT, now, engine.windows)
        assert interest is not None, "each template is interested in the product"
        assert interest.price == PRICE, "each template saw the product at PRICE"
        packed.append(pack_interest(interest))

    def interested(pipe: Any, shard: ShardKeys, identity: str, n: int) -> None:
        pipe.hset(shard.interest(PRODUCT), identity, packed[n % len(made)])

    run = populate_shoppers(client, keys, shoppers, made, "catalog-fanout", interested)
    opening = Event(
        event_id="bench-catalog-open",
        type=PRODUCT_UPDATE,
        ts=now - 30 * DAY,
        product_id=PRODUCT,
        price=PRICE,
        stock=50,
        name="Bench product",
    )
    CatalogStore(client, keys).update(opening)
    return run


class DropWatch(OutputWatch):
    """The output topic: latency samples of the ordinary journey's event-caused actions
    only, and how many ``price_drop`` e-mails came out, the last one when."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(bootstrap, topic)
        self.drops = 0
        self.last_drop_ms = 0

    def _add(self, messages: list[Any]) -> None:
        caused = []
        drops, last = 0, 0
        for message in messages:
            written = int(message.timestamp()[1])
            doc = orjson.loads(message.value())
            journey = doc.get("journey")
            if journey == DROP_JOURNEY:
                drops += 1
                last = max(last, written)
            elif journey in ORDINARY and isinstance(doc.get("ingested_at"), int):
                caused.append((doc["ingested_at"], written - doc["ingested_at"]))
        with self._lock:
            self._samples.records += len(messages)
            self._samples.caused.extend(caused)
            self.drops += drops
            self.last_drop_ms = max(self.last_drop_ms, last)


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class Stream:
    """Keeps the load process sending at ``rate``, in back-to-back steps."""

    def __init__(self, probe: Probe, rate: float) -> None:
        self.probe, self.rate = probe, rate
        self.running = False
        self.steps: list[StepDone] = []

    def start(self) -> None:
        self.probe.load.prepare(int(self.rate * STEP_S))
        self.probe.load.go(self.rate)
        self.running = True

    def tick(self, keep_going: bool) -> None:
        """Collect a finished step; start the next one while ``keep_going``."""
        if not self.running:
            return
        done = self.probe.load.poll(0)
        if done is None:
            return
        self.steps.append(done)
        self.probe.sent += done.sent
        self.running = False
        if keep_going:
            self.start()

    def finish(self) -> None:
        while self.running:
            self.tick(False)
            time.sleep(0.02)


def send_update(bootstrap: str, topic: str, run: str) -> tuple[str, int]:
    """Produce the price drop; its event id and Kafka timestamp (ms)."""
    producer = Producer({"bootstrap.servers": bootstrap, **PRODUCER_CONFIG})
    event_id = f"bench-drop-{run}"
    sent = _wall_ms()
    doc = {
        "event_id": event_id,
        "type": PRODUCT_UPDATE,
        "ts": sent,
        "product_id": PRODUCT,
        "price": NEW_PRICE,
    }
    producer.produce(topic, value=orjson.dumps(doc), key=PRODUCT.encode(), timestamp=sent)
    producer.flush(10)
    return event_id, sent


def fan_out(
    probe: Probe, stream: Stream, target: Target, shoppers: int, run: str
) -> dict[str, Any]:
    """Send the drop with the stream going; wait until every derived event is applied."""
    client, keys = target.client, target.keys
    store = CatalogStore(client, keys)
    counted = read_stats(client, keys).get("catalog.price_drop", 0)
    stream.start()
    event_id, sent_ms = send_update(target.endpoints.kafka_bootstrap, target.events_topic, run)
    taken_ms = done_ms = None
    applied = 0
    bar = Bar(f"catalog-fanout: price drop to {shoppers:,} shoppers")
    last_stats = 0.0
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        probe.check()
        stream.tick(keep_going=True)
        if taken_ms is None:
            record = store.product(PRODUCT)
            if record is not None and record.event == event_id:
                taken_ms = _wall_ms()
            time.sleep(0.005)
            continue
        if time.monotonic() - last_stats >= 0.05:
            last_stats = time.monotonic()
            applied = read_stats(client, keys).get("catalog.price_drop", 0) - counted
            bar.update(applied / shoppers, f"{applied:,} applied")
            if applied >= shoppers:
                done_ms = _wall_ms()
                break
        time.sleep(0.005)
    bar.close(f"{applied:,} of {shoppers:,} applied")
    stream.finish()
    return {
        "event_id": event_id,
        "sent_ms": sent_ms,
        "taken_ms": taken_ms,
        "done_ms": done_ms,
        "applied": applied,
    }


def _await_drops(watch: DropWatch, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while watch.drops < count and time.monotonic() < deadline:
        time.sleep(0.1)


def _seconds(start: int | None, end: int | None) -> float | None:
    return None if start is None or end is None else round((end - start) / 1000, 3)


@contextlib.contextmanager
def _session(broker: str | None) -> Iterator[tuple[Endpoints, dict[str, str], Path]]:
    kind, why = choose_broker(broker)
    with (
        servers(progress=say, kafka_server=kind) as endpoints,
        tempfile.TemporaryDirectory(prefix="tetik-catalog-") as tmp,
    ):
        yield endpoints, measured_broker(endpoints, why), Path(tmp)


def bench_catalog_fanout(
    *,
    quick: bool = False,
    broker: str | None = None,
    shoppers: int = 0,
    rate: float = RATE,
    baseline_s: float = 0.0,
    warm_s: float = 0.0,
) -> dict[str, Any]:
    """Set up, measure the baseline, fan out, measure again, report (module docstring)."""
    count = shoppers or (QUICK_SHOPPERS if quick else SHOPPERS)
    plan = Plan(
        rate=rate,
        baseline_s=baseline_s or (QUICK_BASELINE_S if quick else BASELINE_S),
        warm_s=warm_s or (QUICK_WARM_S if quick else WARM_S),
    )
    load_before = os.getloadavg()
    with _session(broker) as (endpoints, used, workdir):
        run = f"c{uuid.uuid4().hex[:6]}"
        system = make_system("tetik", endpoints, run, workdir, rules=RULES)
        keys = Keys(system.env["TETIK_PREFIX"], from_env(system.env).shards)
        client = connect(endpoints.redis_url)
        populate(client, keys, count, Engine(load_rules(RULES, "bench-catalog.yaml")), _wall_ms())
        ensure_topics(endpoints.kafka_bootstrap, system.layout)
        load = LoadProcess(
            endpoints.kafka_bootstrap,
            GeneratorConfig(users=20_000, events=10**9, seed=14, invalid_ratio=0.0),
        )
        watch = DropWatch(endpoints.kafka_bootstrap, system.output)
        watch.start()
        try:
            load.topic(system.events)
            with running(system, workdir) as child:
                probe = Probe(system, child, load, workdir)
                say(f"bench catalog-fanout: measuring on {broker_label(used)} ({used['why']})")
                pids = {**endpoints.pids, "system": child.pid, "load": load.pid}
                found = windows(probe, watch, Target(client, keys, endpoints, system.events),
                                count, run, plan, pids)  # fmt: skip
        finally:
            watch.stop()
            load.close()
        counters = read_stats(client, keys)
        _drop(client, keys)
    result = figures(found, watch, count, plan)
    result.update(
        loadavg={"before": list(load_before), "after": list(os.getloadavg())},
        counters={k: v for k, v in counters.items() if k.startswith(("catalog.", "actions."))},
        broker=used,
    )
    print(fanout_table(result))
    return result


@dataclass(frozen=True)
class Plan:
    """The ordinary stream's rate and the windows' lengths."""

    rate: float
    baseline_s: float
    warm_s: float


@dataclass(frozen=True)
class Target:
    """Where the engine under test keeps its shoppers and reads its events."""

    client: RedisClient
    keys: Keys
    endpoints: Endpoints
    events_topic: str


def windows(
    probe: Probe,
    watch: DropWatch,
    target: Target,
    count: int,
    run: str,
    plan: Plan,
    pids: dict[str, int],
) -> dict[str, Any]:
    """Warm up; the stream alone (before); the fan-out with the stream; the stream alone
    again once drained (after). When each window was sent, and what the fan-out did."""
    probe.send(plan.rate, plan.warm_s, "catalog warm-up")
    if not probe.drain(90.0):
        raise RuntimeError(probe.stuck("did not process its warm-up"))
    before = probe.send(plan.rate, plan.baseline_s, "catalog before")
    meter = CpuMeter(pids)
    stream = Stream(probe, plan.rate)
    out = fan_out(probe, stream, target, count, run)
    cpu = meter.percent()
    drained = probe.drain(60.0)
    _await_drops(watch, count, 30.0 if out["done_ms"] else 1.0)
    after = probe.send(plan.rate, plan.baseline_s, "catalog after")
    drained = probe.drain(60.0) and drained
    end = out["done_ms"] or (stream.steps[-1].ended_ms if stream.steps else out["sent_ms"])
    return {"before": before, "after": after, "fanout": out, "end_ms": end, "cpu": cpu,
            "drained": drained}  # fmt: skip


def figures(found: dict[str, Any], watch: DropWatch, count: int, plan: Plan) -> dict[str, Any]:
    """The result (module docstring) from the windows and the output watch."""
    out = found["fanout"]
    before, _ = watch.between(found["before"].started_ms, found["before"].ended_ms)
    after, _ = watch.between(found["after"].started_ms, found["after"].ended_ms)
    during, _ = watch.between(out["sent_ms"], found["end_ms"])
    alone, fan = summary(before + after), summary(during)
    return {
        "shoppers": count,
        "rate_per_s": plan.rate,
        "baseline_s": plan.baseline_s,
        "applied": out["applied"],
        "complete": out["done_ms"] is not None,
        "taken_after_s": _seconds(out["sent_ms"], out["taken_ms"]),
        "seconds": _seconds(out["taken_ms"], out["done_ms"]),
        "seconds_from_sent": _seconds(out["sent_ms"], out["done_ms"]),
        "drop_actions": watch.drops,
        "drop_actions_s": _seconds(out["taken_ms"], watch.last_drop_ms or None),
        "latency_ms": {
            "baseline": alone,
            "before": summary(before),
            "after": summary(after),
            "fanout": fan,
        },
        "p99_ratio": fan["p99"] / alone["p99"] if fan["p99"] and alone["p99"] else None,
        "drained": found["drained"],
        "cpu_pct_during_fanout": found["cpu"],
        "goal_s": GOAL_S * count / SHOPPERS,
        "goal_ratio": GOAL_RATIO,
    }


def _drop(client: RedisClient, keys: Keys) -> None:
    """Delete the bench's keys (its own prefix) so a shared Redis is left as it was."""
    for pattern in (f"{{{keys.prefix}:*", f"{{{keys.prefix}}}*"):
        cursor = 0
        while True:
            cursor, found = client.scan(cursor, match=pattern, count=10_000)
            if found:
                client.unlink(*found)
            if cursor == 0:
                break


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:,.0f}"


def fanout_table(result: dict[str, Any]) -> str:
    lat = result["latency_ms"]
    rows = [
        ["shoppers interested", f"{result['shoppers']:,}"],
        ["price_drop applied", f"{result['applied']:,}"],
        ["update taken after it was sent (s)", _secs(result["taken_after_s"])],
        ["every price_drop applied, from taken (s)", _secs(result["seconds"])],
        ["... from sent (s)", _secs(result["seconds_from_sent"])],
        ["last price_drop e-mail on Kafka, from taken (s)", _secs(result["drop_actions_s"])],
        ["price_drop e-mails on Kafka", f"{result['drop_actions']:,}"],
        ["ordinary events/s throughout", f"{result['rate_per_s']:,.0f}"],
        *[[f"ordinary p50 / p99 ms, {label} (n)", _latency(lat.get(name))]
          for name, label in (("before", "before the fan-out"), ("after", "after it"),
                              ("baseline", "before and after"), ("fanout", "during it"))],
        ["p99 during / before and after", "-" if result["p99_ratio"] is None
         else f"{result['p99_ratio']:.2f}x"],
        ["CPU % during the fan-out (tetik / kafka / redis / load)",
         " / ".join(_pct(result["cpu_pct_during_fanout"].get(k))
                    for k in ("system", "kafka", "redis", "load"))],
        ["load average before / after (1 min)",
         f"{result['loadavg']['before'][0]:.2f} / {result['loadavg']['after'][0]:.2f}"],
        ["goal", f"<= {result['goal_s']:.1f} s, p99 <= {result['goal_ratio']:.0f}x"],
    ]  # fmt: skip
    return table(["price drop fan-out, live, one worker", "value"], rows)


def _latency(figures: dict[str, Any] | None) -> str:
    if figures is None:
        return "-"
    return f"{_ms(figures['p50'])} / {_ms(figures['p99'])} ({figures['count']:,})"


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"
