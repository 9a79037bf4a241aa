"""The Kafka source's partitions on real brokers: snapshots, the end of a partition, faults."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Producer
from confluent_kafka.admin import AdminClient

import flows.pipeline.source as source_module
from flows.kafka.topics import ensure_topics, topic_id
from flows.pipeline.source import (
    Resume,
    SourcePolicy,
    StoppableKafkaSource,
    Verdict,
    decode_snapshot,
    judge,
)
from flows.servers.embedded import start_kafka
from flows.servers.process import EmbeddedServer


class Clock:
    """Records what the source tells the watermark."""

    def __init__(self, reached: int = 0) -> None:
        self.polls: list[tuple[int, bool]] = []
        self.restored: dict[str, int] = {}
        self._reached = reached

    def polled(self, partition: str, count: int, at_end: bool = True) -> None:
        self.polls.append((count, at_end))

    def restore(self, partition: str, reached: int) -> None:
        self.restored[partition] = reached

    def reached(self, partition: str) -> int:
        return self._reached


def _produce(bootstrap: str, topic: str, values: list[str]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1})
    for value in values:
        producer.produce(topic, value.encode(), partition=0)
    producer.flush(10)


def _partition(
    bootstrap: str,
    topic: str,
    resume: Any = None,
    policy: SourcePolicy | None = None,
    clock: Clock | None = None,
) -> Any:
    source = StoppableKafkaSource(
        [bootstrap],
        [topic],
        stop=threading.Event(),
        clock=clock,
        policy=policy,
        add_config={"fetch.wait.max.ms": "20"},
    )
    return source.build_part("events", f"0-{topic}", resume)


def _read(part: Any, count: int, timeout: float = 15) -> list[tuple[int, str]]:
    """(offset, value) of the next ``count`` messages the partition gives."""
    got: list[tuple[int, str]] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got += [(m.offset, m.value.decode()) for m in part.next_batch()]
        time.sleep(0.005)
    return got


def _lines() -> tuple[list[str], SourcePolicy]:
    lines: list[str] = []
    return lines, SourcePolicy(log=lines.append)


def _five(bootstrap: str, topic: str) -> tuple[str, list[str], SourcePolicy]:
    """A one-partition ``topic`` holding v0..v4: its id, and a policy that knows it and
    keeps the source's lines."""
    ensure_topics(bootstrap, {topic: 1})
    _produce(bootstrap, topic, [f"v{i}" for i in range(5)])
    current = topic_id(AdminClient({"bootstrap.servers": bootstrap}), topic) or ""
    lines: list[str] = []
    return current, lines, SourcePolicy(topic_ids={topic: current}, log=lines.append)


def test_the_policy_for_offsets_out_of_range() -> None:
    assert judge(5, 0, 10, True) == Verdict("ok", 5)
    assert judge(10, 0, 10, True) == Verdict("ok", 10)  # at the end: nothing new yet
    assert judge(5, 0, 10, False) == Verdict("recreated", OFFSET_BEGINNING)
    assert judge(12, 0, 10, True) == Verdict("truncated", 10)
    assert judge(12, 0, 10, None) == Verdict("recreated", OFFSET_BEGINNING)
    assert judge(3, 7, 10, True) == Verdict("deleted", 7)
    assert judge(OFFSET_BEGINNING, 7, 10, True) == Verdict("ok", OFFSET_BEGINNING)


def test_snapshots_of_every_format_are_accepted() -> None:
    assert decode_snapshot(None) == Resume()
    assert decode_snapshot(42) == Resume(offset=42)  # a bare offset, as Bytewax wrote it
    state = {"offset": 7, "clock": 1_700_000_000_000, "topic_id": "abc"}
    assert decode_snapshot(state) == Resume(7, 1_700_000_000_000, "abc")


@pytest.mark.integration
def test_a_partition_is_caught_up_only_at_the_end_and_snapshots_its_clock(
    kafka_bootstrap: str, unique: str
) -> None:
    ensure_topics(kafka_bootstrap, {unique: 1})
    _produce(kafka_bootstrap, unique, [f"v{i}" for i in range(50)])
    current = topic_id(AdminClient({"bootstrap.servers": kafka_bootstrap}), unique)
    clock = Clock(reached=1_234)
    policy = SourcePolicy(topic_ids={unique: current or ""})
    part = _partition(kafka_bootstrap, unique, {"offset": 10, "clock": 999}, policy, clock)
    assert clock.restored == {f"0-{unique}": 999}
    first_count, first_at_end = clock.polls[0] if clock.polls else (0, False)
    got = _read(part, 40)
    assert [offset for offset, _ in got] == list(range(10, 50))
    assert not first_at_end or first_count
    assert all(not at_end for count, at_end in clock.polls if count == 0)  # never before
    deadline = time.monotonic() + 5
    while not (clock.polls and clock.polls[-1] == (0, True)) and time.monotonic() < deadline:
        part.next_batch()
        time.sleep(0.005)
    assert clock.polls[-1] == (0, True)  # an empty poll at the high watermark
    assert part.snapshot() == {"offset": 50, "clock": 1_234, "topic_id": current}
    part.close()


@pytest.mark.integration
def test_a_snapshot_of_a_recreated_topic_reads_the_new_one_from_its_beginning(
    kafka_bootstrap: str, unique: str
) -> None:
    current, lines, policy = _five(kafka_bootstrap, unique)
    assert current  # tansu has topic ids
    old = {"offset": 3, "clock": 0, "topic_id": "AaIrKYuic3O8Rkybm1cIDQ"}
    part = _partition(kafka_bootstrap, unique, old, policy)
    assert [offset for offset, _ in _read(part, 5)] == [0, 1, 2, 3, 4]
    assert any("recreated" in line for line in lines)
    part.close()
    # A bare offset (an old snapshot) of a topic whose id changed in Redis: the same.
    policy = SourcePolicy(topic_ids={unique: current}, recreated=frozenset({unique}))
    part = _partition(kafka_bootstrap, unique, 3, policy)
    assert [offset for offset, _ in _read(part, 5)] == [0, 1, 2, 3, 4]
    part.close()


@pytest.mark.integration
def test_an_offset_past_the_end_of_the_same_topic_goes_on_from_the_end(
    kafka_bootstrap: str, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(source_module, "TRUNCATED_AFTER_S", 0.5)
    current, lines, policy = _five(kafka_bootstrap, unique)
    part = _partition(kafka_bootstrap, unique, {"offset": 100, "topic_id": current}, policy)
    deadline = time.monotonic() + 10
    while not lines and time.monotonic() < deadline:
        assert part.next_batch() == []
        time.sleep(0.005)
    assert "truncated" in lines[0]
    _produce(kafka_bootstrap, unique, ["new0", "new1"])
    assert _read(part, 2) == [(5, "new0"), (6, "new1")]
    part.close()


@pytest.mark.integration
def test_an_offset_past_the_end_without_a_topic_id_reads_again_from_the_beginning(
    kafka_bootstrap: str, unique: str
) -> None:
    ensure_topics(kafka_bootstrap, {unique: 1})
    _produce(kafka_bootstrap, unique, [f"v{i}" for i in range(5)])
    part = _partition(kafka_bootstrap, unique, 100, SourcePolicy(log=lambda _line: None))
    assert [value for _, value in _read(part, 5)] == [f"v{i}" for i in range(5)]
    part.close()


@pytest.fixture
def own_broker() -> Iterator[tuple[EmbeddedServer, str]]:
    server, bootstrap = start_kafka()
    yield server, bootstrap
    server.kill()  # tansu takes its time over SIGTERM
    server.stop()


@pytest.mark.integration
def test_a_broker_that_comes_back_empty_is_read_from_the_beginning_without_a_crash(
    own_broker: tuple[EmbeddedServer, str], unique: str
) -> None:
    server, bootstrap = own_broker
    layout = {unique: 1, f"{unique}.dlq": 1}
    ensure_topics(bootstrap, layout)
    _produce(bootstrap, unique, [f"old{i}" for i in range(10)])
    current = topic_id(AdminClient({"bootstrap.servers": bootstrap}), unique) or ""
    lines: list[str] = []
    clock = Clock()
    policy = SourcePolicy(topic_ids={unique: current}, layout=layout, log=lines.append)
    part = _partition(bootstrap, unique, None, policy, clock)
    assert len(_read(part, 10)) == 10
    server.kill()
    down_until = time.monotonic() + 1.5
    while time.monotonic() < down_until:
        assert part.next_batch() == []  # transient errors never raise
        time.sleep(0.01)
    server.restart()
    # More new events than the old offset: a source keeping offset 10 would skip 0-9.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not any("recreated" in line for line in lines):
        part.next_batch()
        time.sleep(0.01)
    assert any("unreachable" in line for line in lines)
    assert any("recreated" in line or "gone" in line for line in lines), lines
    ensure_topics(bootstrap, layout)
    _produce(bootstrap, unique, [f"new{i}" for i in range(15)])
    got = _read(part, 15, timeout=20)
    assert [value for _, value in got] == [f"new{i}" for i in range(15)]
    assert f"{unique}.dlq" in AdminClient({"bootstrap.servers": bootstrap}).list_topics().topics
    part.close()


@pytest.fixture(
    params=[
        pytest.param("tansu", marks=pytest.mark.integration),
        pytest.param("apache", marks=pytest.mark.apache_kafka),
    ]
)
def any_bootstrap(request: pytest.FixtureRequest) -> str:
    """The session's tansu, or (``make test-kafka``) its Apache Kafka."""
    if request.param == "apache":
        return str(request.getfixturevalue("apache_kafka").bootstrap)
    return str(request.getfixturevalue("kafka_bootstrap"))


def test_a_consumer_that_reads_nothing_while_the_broker_holds_more_is_reopened(
    any_bootstrap: str, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A paused consumer stands in for a stuck one: it fetches nothing and reports no error.
    monkeypatch.setattr(source_module, "STALL_S", 0.5)
    kafka_bootstrap = any_bootstrap
    ensure_topics(kafka_bootstrap, {unique: 1})
    _produce(kafka_bootstrap, unique, [f"v{i}" for i in range(5)])
    lines, policy = _lines()
    part = _partition(kafka_bootstrap, unique, {"offset": 0}, policy)
    assert [offset for offset, _ in _read(part, 5)] == [0, 1, 2, 3, 4]
    quiet_until = time.monotonic() + 1.5  # idle at the end: checked, nothing to reopen
    while time.monotonic() < quiet_until:
        assert part.next_batch() == []
        time.sleep(0.01)
    assert lines == []
    stuck = part._consumer
    stuck.pause([part._tp])
    _produce(kafka_bootstrap, unique, ["new0", "new1"])
    assert _read(part, 2) == [(5, "new0"), (6, "new1")]
    assert part._consumer is not stuck
    (line,) = lines
    # tansu's ListOffsets answer may lag its log by the last record.
    assert re.fullmatch(
        f"partition 0-{unique}: its consumer read nothing for 0.5 s while the broker holds "
        r"[12] more event\(s\) from offset 5 \(a stuck consumer\); reopening it there",
        line,
    )
    part.close()


class LaggingMark:
    """A consumer whose broker reports a high watermark 2 below the truth (cached or
    asked) until ``until``: Apache Kafka's, for a moment after a restart."""

    def __init__(self, consumer: Any, until: float) -> None:
        self._consumer, self._until = consumer, until

    def get_watermark_offsets(self, tp: Any, timeout: float = 1.0, cached: bool = False) -> Any:
        if cached:
            low, high = self._consumer.get_watermark_offsets(tp, cached=True)
        else:
            low, high = self._consumer.get_watermark_offsets(tp, timeout=timeout, cached=False)
        return (low, high - 2) if time.monotonic() < self._until and high >= 0 else (low, high)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)


@pytest.mark.integration
def test_a_high_watermark_that_lags_for_a_moment_is_no_truncation(
    kafka_bootstrap: str, unique: str
) -> None:
    current, lines, policy = _five(kafka_bootstrap, unique)
    part = _partition(kafka_bootstrap, unique, {"offset": 0, "topic_id": current}, policy)
    assert [offset for offset, _ in _read(part, 5)] == [0, 1, 2, 3, 4]
    part._consumer = LaggingMark(part._consumer, time.monotonic() + 1.0)
    away_until = time.monotonic() + 2.0
    while time.monotonic() < away_until:
        assert part.next_batch() == []
        time.sleep(0.01)
    _produce(kafka_bootstrap, unique, ["new0", "new1"])
    assert _read(part, 2) == [(5, "new0"), (6, "new1")]  # nothing read twice
    assert lines == []  # no "truncated"
    part.close()
