"""The live pipeline in process: real Redis and Kafka, Bytewax testing source and sink."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from bytewax.connectors.kafka import KafkaSinkMessage, KafkaSourceMessage
from bytewax.inputs import DynamicSource, StatelessSourcePartition
from bytewax.testing import TestingSink, TestingSource, run_main
from confluent_kafka import Producer

from engine.journeys import Engine
from engine.rules.loader import load_rules
from flows.clock import wall_ms
from flows.kafka.topics import ensure_topics
from flows.pipeline.dataflow import build_flow
from flows.pipeline.decode import Stamped, decode_stamped
from flows.pipeline.rules_runtime import RulesRuntime
from flows.pipeline.shard import ShardConfig, ShardReport, shared_committer
from flows.pipeline.watermark import Watermark
from flows.retry import RedisClient
from flows.stores.emissions import PRODUCER_CONFIG, Emitter
from flows.stores.keys import Keys
from flows.stores.states import ShardStore

NOW = wall_ms()


def message(offset: int, doc: dict[str, Any], partition: int = 0) -> KafkaSourceMessage[Any, Any]:
    return KafkaSourceMessage(
        key=str(doc.get("user_id", "")).encode(),
        value=orjson.dumps(doc),
        topic="events",
        partition=partition,
        offset=offset,
        timestamp=(1, NOW),
    )


def event(n: int, user: str, kind: str, ts: int, **fields: Any) -> dict[str, Any]:
    return {"event_id": f"e{n}", "type": kind, "ts": ts, "user_id": user, **fields}


# One journey that e-mails each signup: for the tests of the shard's write itself.
SIGNUP_RULES = """\
version: 1
consent: {email: opt_out}
journeys:
  - id: welcome
    trigger: signup
    steps:
      - send: email
"""


def commits_ran() -> None:
    """Every commit the shards handed to the committer thread has run (a process killed
    now has them in Redis; one killed before a commit ran is one killed before that batch)."""
    shared_committer().submit(lambda: None).result()


def signups(watermark: Watermark, first: int, count: int) -> list[Stamped]:
    """Decoded signups of u<first>... at input offsets first..first+count-1."""
    decode = decode_stamped(watermark)
    docs = [event(i, f"u{i}", "signup", NOW - 1000 + i) for i in range(first, first + count)]
    items = [decode(message(i, d)) for i, d in zip(range(first, first + count), docs, strict=True)]
    return [i for i in items if isinstance(i, Stamped)]


def doc(n: int, kind: str, ts: int, user: str | None = None, anon: str | None = None,
        **fields: Any) -> dict[str, Any]:  # fmt: skip
    """An event with a user id, an anonymous id, both or (a product update) neither."""
    body: dict[str, Any] = {"event_id": f"e{n}", "type": kind, "ts": ts, **fields}
    if user is not None:
        body["user_id"] = user
    if anon is not None:
        body["anon_id"] = anon
    return body


def price_drop_log(shoppers: int, start: int, drop_to: float, name: str | None = None
                   ) -> list[dict[str, Any]]:  # fmt: skip
    """Product p1 at 100.0 (update c1 at ``start``), ``shoppers`` users who view it a
    minute later (shopper0...), then update c2 lowering it to ``drop_to``."""
    first: dict[str, Any] = {"event_id": "c1", "type": "product_update", "ts": start,
                             "product_id": "p1", "price": 100.0}  # fmt: skip
    if name is not None:
        first["name"] = name
    views = [
        {"event_id": f"v{n}", "type": "view_product", "ts": start + 60_000 + n,
         "user_id": f"shopper{n}", "product_id": "p1", "price": 100.0}
        for n in range(shoppers)
    ]  # fmt: skip
    drop = {"event_id": "c2", "type": "product_update", "ts": start + 10 * 60_000,
            "product_id": "p1", "price": drop_to}  # fmt: skip
    return [first, *views, drop]


class Spy:
    """A real client that counts the commands the shard sends through it."""

    def __init__(self, client: RedisClient) -> None:
        self._client = client
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        self.calls[name] += 1
        return getattr(self._client, name)


class _Holding(StatelessSourcePartition[Any]):
    def __init__(
        self, items: list[Any], until: Callable[[], bool], limit_s: float, idle: Callable[[], None]
    ) -> None:
        self._items: list[Any] | None = items
        self._until = until
        self._idle = idle
        self._deadline = time.monotonic() + limit_s

    def next_batch(self) -> list[Any]:
        if self._items is not None:
            items, self._items = self._items, None
            return items
        commits_ran()  # until() reads Redis: every commit handed over is in it first
        if self._until() or time.monotonic() > self._deadline:
            raise StopIteration
        self._idle()
        time.sleep(0.01)
        return []


class HoldingSource(DynamicSource[Any]):
    """Emits ``items`` (from worker 0), then stays open until ``until()`` (or ``limit_s``),
    asked once the commits handed to the committer thread have run.

    While open it calls ``idle()`` at each empty poll, as the Kafka source tells
    the watermark that a partition is at its end.
    """

    def __init__(
        self,
        items: list[Any],
        until: Callable[[], bool],
        idle: Callable[[], None],
        limit_s: float = 20,
    ) -> None:
        self._items = items
        self._until = until
        self._idle = idle
        self._limit_s = limit_s

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Holding:
        items = self._items if worker_index == 0 else []
        return _Holding(items, self._until, self._limit_s, self._idle)


@dataclass
class Pipeline:
    """One deployment's pieces for in-process runs (a prefix and topics of its own)."""

    client: RedisClient
    bootstrap: str
    prefix: str
    rules: str
    shards: int = 4
    actions_topic: str = ""
    dlq_topic: str = ""
    events_topic: str = ""
    reports: list[ShardReport] = field(default_factory=list)
    dead: list[KafkaSinkMessage[Any, Any]] = field(default_factory=list)

    @classmethod
    def create(
        cls,
        client: RedisClient,
        bootstrap: str,
        unique: str,
        rules: str,
        shards: int = 4,
        partitions: int = 1,
    ) -> Pipeline:
        """A pipeline with topics of its own (``UNIQUE.actions``, ``UNIQUE.dlq``)."""
        p = cls(client, bootstrap, unique, rules, shards=shards)
        p.actions_topic, p.dlq_topic = f"{unique}.actions", f"{unique}.dlq"
        p.events_topic = f"{unique}.events"
        ensure_topics(bootstrap, {p.actions_topic: partitions, p.dlq_topic: 1, p.events_topic: 1})
        return p

    @property
    def keys(self) -> Keys:
        return Keys(self.prefix, self.shards)

    def config(self, engine: Engine | None = None, **overrides: Any) -> ShardConfig:
        engine = engine or Engine(load_rules(self.rules, "rules.yaml"))
        # log_level 2: the session's broker stops before these producers are collected
        producer = Producer(
            {"bootstrap.servers": self.bootstrap, **PRODUCER_CONFIG, "log_level": 2}
        )
        values: dict[str, Any] = {
            "runtime": RulesRuntime(engine),
            "watermark": Watermark([]),
            "emitter": Emitter(producer, self.actions_topic),
            "client": self.client,
            "keys": self.keys,
            "ttl_ms": 3_600_000,
            "actions_topic": self.actions_topic,
            "dlq_topic": self.dlq_topic,
            "events_topic": self.events_topic,
        }
        values.update(overrides)
        return ShardConfig(**values)

    def run(self, messages: Iterable[KafkaSourceMessage[Any, Any]], **overrides: Any) -> None:
        """One bounded run over ``messages`` (TestingSource), collecting reports and DLQ."""
        flow = build_flow(
            TestingSource(list(messages)),
            TestingSink(self.dead),
            TestingSink(self.reports),
            self.config(**overrides),
        )
        run_main(flow)

    def run_holding(
        self,
        messages: list[Any],
        until: Callable[[], bool],
        partitions: int = 1,
        **overrides: Any,
    ) -> None:
        """A run that stays open after ``messages`` until ``until()``: for timers.

        Partitions 0..``partitions``-1 of ``events`` count as read to their end once
        the messages are out.
        """
        config = self.config(**overrides)
        watermark = config.watermark

        def idle() -> None:
            for partition in range(partitions):
                watermark.polled(f"{partition}-events", 0, True)

        flow = build_flow(
            HoldingSource(messages, until, idle),
            TestingSink(self.dead),
            TestingSink(self.reports),
            config,
        )
        run_main(flow)

    def actions(self) -> list[Any]:
        return [a for r in self.reports for a in r.actions]


def quiet(pipeline: Pipeline) -> bool:
    """No shard has a user waiting for a hand-off or a timer due up to ``NOW``."""
    for shard in pipeline.keys.all_shards():
        store = ShardStore(pipeline.client, shard, 0)
        due = store.next_due()
        if store.waiting() or (due is not None and due <= NOW):
            return False
    return True
