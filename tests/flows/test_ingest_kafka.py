"""The ingest flow end to end on the real broker and the real Redis."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from typing import Any

import orjson
import pytest
from bytewax.testing import run_main
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, Producer, TopicPartition

from clickstream.generator import GeneratorConfig, generate_records
from engine.errors import InvalidEvent
from engine.events import decode_event
from engine.interest import products_of
from engine.journeys import Engine
from engine.replay import replay
from engine.rules.loader import load_rules
from engine.state import UserState, dumps, loads, to_view
from flows.clock import wall_ms as now_ms
from flows.jobs.ingest import NO_JOURNEYS, ingest_flow
from flows.jobs.run import RunOptions
from flows.kafka.producer import produce_records
from flows.kafka.topics import ensure_topics
from flows.pipeline.breaker import Halt
from flows.retry import connect
from flows.settings import Settings
from flows.stores.states import Shoppers, fix_layout

pytestmark = pytest.mark.integration


@dataclasses.dataclass
class Setup:
    settings: Settings
    store: Shoppers
    records: list[tuple[bytes | None, bytes]]
    marker: tuple[int, int]  # partition, offset of a known malformed record


def _produce_marker(settings: Settings) -> tuple[int, int]:
    """One malformed record with a known key, returning where the broker put it."""
    where: list[tuple[int, int]] = []
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    producer.produce(
        settings.events_topic,
        key=b"u-marker",
        value=b'{"event_id": "m1", "type": "Add To Cart"}',
        on_delivery=lambda err, msg: where.append((msg.partition(), msg.offset())),
    )
    producer.flush(10)
    return where[0]


@pytest.fixture
def setup(endpoints: object, redis_url: str, kafka_bootstrap: str, unique: str) -> Setup:
    settings = Settings(
        redis_url=redis_url,
        kafka_bootstrap=kafka_bootstrap,
        events_topic=f"events-{unique}",
        dlq_topic=f"dlq-{unique}",
        prefix=unique,
    )
    ensure_topics(kafka_bootstrap, {settings.events_topic: 3, settings.dlq_topic: 1})
    cfg = GeneratorConfig(
        users=150, events=2000, seed=11, start_ms=now_ms() - 3_600_000, invalid_ratio=0.02
    )
    records: list[tuple[bytes | None, bytes]] = list(generate_records(cfg))
    produce_records(kafka_bootstrap, settings.events_topic, records[:1000])
    marker = _produce_marker(settings)
    produce_records(kafka_bootstrap, settings.events_topic, records[1000:])
    store = Shoppers(connect(redis_url), settings.keys)
    fix_layout(store.client, settings.keys)
    return Setup(settings, store, records, marker)


def kafka_ingest_flow(settings: Settings, tail: bool = False) -> Any:
    return ingest_flow(settings, RunOptions(tail=tail), Halt())


def expected_states(records: list[tuple[bytes | None, bytes]], now: int) -> dict[str, UserState]:
    """What the pure core makes of the same records: a replay without journeys, identity
    stitching included (a device's state merges into its user's at the login)."""
    states: dict[str, UserState] = {}
    engine = Engine(load_rules(NO_JOURNEYS, "<ingest>"))
    replay(engine, (value for _, value in records), states=states)
    return {key: state for key, state in states.items() if state.events}


def read_dlq(settings: Settings, expect: int) -> list[Message]:
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "t"})
    consumer.assign([TopicPartition(settings.dlq_topic, 0, OFFSET_BEGINNING)])
    found: list[Message] = []
    deadline = time.monotonic() + 15
    while len(found) < expect and time.monotonic() < deadline:
        message = consumer.poll(0.2)
        if message is not None and message.error() is None:
            found.append(message)
    consumer.close()
    return found


def device_events_of_linked_ids(records: list[tuple[bytes | None, bytes]]) -> list[str]:
    """The ids of the valid events with only an anonymous id that some login links."""
    events = []
    for _, value in records:
        try:
            events.append(decode_event(value))
        except InvalidEvent:
            continue
    linked = {e.anon_id for e in events if e.user_id is not None and e.anon_id is not None}
    return [e.event_id for e in events if e.user_id is None and e.anon_id in linked]


def invalid_count(records: list[tuple[bytes | None, bytes]]) -> int:
    bad = 0
    for _, value in records:
        try:
            decode_event(value)
        except InvalidEvent:
            bad += 1
    return bad


def test_state_in_redis_equals_the_core_applied_per_user(setup: Setup) -> None:
    run_main(kafka_ingest_flow(setup.settings, tail=False))
    expected = expected_states(setup.records, now_ms())
    assert expected, "the generator produced no valid events"
    for identity, state in expected.items():
        stored = setup.store.client.get(setup.store.keys.state(identity))
        assert stored is not None, identity
        assert to_view(loads(stored)) == to_view(state), identity
        assert stored == dumps(state), identity
    stats = setup.store.stats()
    bad = invalid_count(setup.records) + 1  # + the marker
    assert stats["applied"] == len(setup.records) + 1 - bad
    assert stats["invalid"] == bad


def test_malformed_records_land_in_the_dlq_with_reason_and_source(setup: Setup) -> None:
    run_main(kafka_ingest_flow(setup.settings, tail=False))
    bad = invalid_count(setup.records) + 1
    dlq = read_dlq(setup.settings, bad)
    assert len(dlq) == bad
    marker = [m for m in dlq if m.key() == b"u-marker"]
    assert len(marker) == 1
    headers = dict(marker[0].headers() or [])
    assert marker[0].value() == b'{"event_id": "m1", "type": "Add To Cart"}'
    assert b"type" in headers["tetik.error.reason"]
    assert headers["tetik.source.topic"] == setup.settings.events_topic.encode()
    where = (int(headers["tetik.source.partition"]), int(headers["tetik.source.offset"]))
    assert where == setup.marker


def _env(settings: Settings) -> dict[str, str]:
    return os.environ | {
        "TETIK_REDIS_URL": settings.redis_url,
        "TETIK_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "TETIK_PREFIX": settings.prefix,
        "TETIK_EVENTS_TOPIC": settings.events_topic,
        "TETIK_DLQ_TOPIC": settings.dlq_topic,
    }


def tetik(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        env=_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )


def snapshot(store: Shoppers) -> dict[bytes, bytes | None]:
    keys = sorted(
        key
        for shard in store.keys.all_shards()
        for key in store.client.scan_iter(match=shard.state("*"), count=1000)
    )
    return {key: store.client.get(key) for key in keys}


def test_reprocessing_the_topic_with_tetik_ingest_changes_no_state(setup: Setup) -> None:
    run_main(kafka_ingest_flow(setup.settings, tail=False))
    before = snapshot(setup.store)
    applied = setup.store.stats()["applied"]
    done = tetik(setup.settings, "ingest", "--no-tail")
    assert done.returncode == 0, done.stderr
    assert snapshot(setup.store) == before
    stats = setup.store.stats()
    assert stats["applied"] == applied  # nothing applied twice
    # Skipped by the shards' offsets, except a device's events applied to it before its link:
    # re-read now, the resolver sends them to the user's shard, whose offsets do not cover
    # them, and the user's merged window knows their ids (counted as duplicates).
    assert stats["skipped"] + stats.get("duplicate", 0) == applied
    assert stats.get("duplicate", 0) <= len(device_events_of_linked_ids(setup.records))
    assert "events" in done.stderr  # the progress line


def test_tetik_state_prints_the_users_state(setup: Setup) -> None:
    run_main(kafka_ingest_flow(setup.settings, tail=False))
    identity = next(iter(expected_states(setup.records, now_ms())))
    done = tetik(setup.settings, "state", identity)
    assert done.returncode == 0, done.stderr
    state = setup.store.load(identity)
    assert state is not None
    shown = orjson.loads(done.stdout)
    interest = shown.pop("interest")  # its catalog entries (test_catalog_live checks them)
    assert shown == orjson.loads(orjson.dumps(to_view(state)))
    assert set(interest) <= products_of(state, state.last_seen)
    missing = tetik(setup.settings, "state", "nobody-here")
    assert missing.returncode == 1
    assert "no state" in missing.stderr


def test_tetik_state_without_redis_says_what_to_set() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETIK_")}
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "state", "u1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "TETIK_REDIS_URL" in done.stderr


def test_two_workers_give_the_same_state_as_the_core(setup: Setup) -> None:
    done = tetik(setup.settings, "ingest", "--no-tail", "--workers", "2")
    assert done.returncode == 0, done.stderr
    expected = expected_states(setup.records, now_ms())
    for identity, state in expected.items():
        assert setup.store.client.get(setup.store.keys.state(identity)) == dumps(state), identity
    assert setup.store.stats()["applied"] == sum(s.events for s in expected.values())
