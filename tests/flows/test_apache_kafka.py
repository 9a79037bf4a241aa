"""tetik against a real Apache Kafka 4.x broker (KRaft, one node), from flows.servers.apache_kafka.

The tests marked ``apache_kafka`` run in ``make test-kafka`` (.ci/run runs it where
Java is); the others (error messages) need no Java and run in ``make test``. The
session broker (``apache_kafka`` fixture) serves the read-only checks; the restart
tests use a broker of this module, behind a TCP forwarder, since they stop it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, Producer
from confluent_kafka import TopicPartition as TP
from confluent_kafka.admin import AdminClient

from flows.kafka.topics import ensure_topics, wait_for_topic
from flows.servers import apache_kafka as ak
from flows.servers import embedded
from flows.servers.apache_kafka import (
    EMBEDDED_KAFKA_ENV,
    ensure_jars,
    find_java,
    kafka_version,
    start_apache_kafka,
)
from flows.servers.embedded import servers
from flows.servers.process import EmbeddedServer, ServerStartError, free_port
from tests.flows.forwarder import Forwarder
from tests.flows.pipeline.test_emissions import settle_check

READ_TIMEOUT_S = 30.0


def produce(
    bootstrap: str, topic: str, values: list[bytes], producer: Producer | None = None
) -> None:
    """Produce ``values`` (key = value) and wait until every one is acknowledged."""
    producer = producer or Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    errors: list[KafkaError] = []

    def report(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            errors.append(err)

    for value in values:
        producer.produce(topic, value, key=value, on_delivery=report)
    assert producer.flush(READ_TIMEOUT_S) == 0
    assert errors == []


def read_all(bootstrap: str, topic: str, count: int) -> list[bytes]:
    """The first ``count`` values of ``topic`` (all partitions, from the beginning)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "read-all"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TP(topic, p, OFFSET_BEGINNING) for p in partitions])
        return _take(consumer, count)
    finally:
        consumer.close()


def _take(consumer: Consumer, count: int) -> list[bytes]:
    """``count`` message values from ``consumer``, or fewer if READ_TIMEOUT_S passes."""
    values: list[bytes] = []
    deadline = time.monotonic() + READ_TIMEOUT_S
    while len(values) < count and time.monotonic() < deadline:
        for msg in consumer.consume(count - len(values), 0.2):
            assert msg.error() is None, msg.error()
            values.append(msg.value() or b"")
    return values


def numbered(start: int, stop: int) -> list[bytes]:
    return [str(n).encode() for n in range(start, stop)]


@pytest.mark.apache_kafka
def test_the_broker_is_apache_kafka_in_kraft_combined_mode(apache_kafka: EmbeddedServer) -> None:
    argv = Path(f"/proc/{apache_kafka.pid}/cmdline").read_bytes().split(b"\0")
    assert b"kafka.Kafka" in argv
    archives = [a.split(b"=", 1)[1] for a in argv if a.startswith(b"-XX:SharedArchiveFile=")]
    assert len(archives) == 1  # the classes recorded at the first start, for faster ones
    assert Path(archives[0].decode()).is_file()
    settings = (apache_kafka.workdir / "server.properties").read_text()
    assert "process.roles=broker,controller" in settings
    assert "auto.create.topics.enable=false" in settings
    assert apache_kafka.version == kafka_version()
    metadata = AdminClient({"bootstrap.servers": apache_kafka.bootstrap}).list_topics(timeout=10)
    brokers = [(b.host, b.port) for b in metadata.brokers.values()]
    assert brokers == [("127.0.0.1", apache_kafka.port)]


@pytest.mark.apache_kafka
def test_ensure_topics_creates_them_and_nothing_is_created_automatically(
    apache_kafka: EmbeddedServer, unique: str
) -> None:
    bootstrap = apache_kafka.bootstrap
    wanted = {f"{unique}.events": 3, f"{unique}.events.dlq": 1}
    ensure_topics(bootstrap, wanted)
    ensure_topics(bootstrap, wanted)  # idempotent
    assert wait_for_topic(bootstrap, f"{unique}.events") == 3
    assert wait_for_topic(bootstrap, f"{unique}.events.dlq") == 1

    missing = f"{unique}.missing"
    errors: list[KafkaError | None] = []
    producer = Producer({"bootstrap.servers": bootstrap, "message.timeout.ms": 2000})
    producer.produce(missing, b"x", on_delivery=lambda err, _msg: errors.append(err))
    producer.flush(10)
    assert len(errors) == 1
    assert errors[0] is not None  # not delivered: the broker did not create the topic
    assert missing not in AdminClient({"bootstrap.servers": bootstrap}).list_topics().topics


@pytest.mark.apache_kafka
def test_keyed_round_trip_keeps_each_keys_order(apache_kafka: EmbeddedServer, unique: str) -> None:
    topic = f"{unique}.events"
    ensure_topics(apache_kafka.bootstrap, {topic: 3})
    producer = Producer({"bootstrap.servers": apache_kafka.bootstrap, "acks": "all"})
    sent = [(f"user{n % 5}".encode(), str(n).encode()) for n in range(40)]
    for key, value in sent:
        producer.produce(topic, value, key=key)
    assert producer.flush(READ_TIMEOUT_S) == 0

    consumer = Consumer({"bootstrap.servers": apache_kafka.bootstrap, "group.id": unique})
    consumer.assign([TP(topic, p, OFFSET_BEGINNING) for p in range(3)])
    received: list[tuple[bytes, bytes]] = []
    deadline = time.monotonic() + READ_TIMEOUT_S
    while len(received) < len(sent) and time.monotonic() < deadline:
        for msg in consumer.consume(100, 0.2):
            assert msg.error() is None
            received.append((msg.key() or b"", msg.value() or b""))
    consumer.close()
    for key in {k for k, _ in sent}:
        assert [v for k, v in received if k == key] == [v for k, v in sent if k == key]
    assert len(received) == len(sent)


@pytest.mark.apache_kafka
def test_the_outboxes_settle_against_apache_kafka(
    apache_kafka: EmbeddedServer, redis_client: redis.Redis, unique: str
) -> None:
    """As in test_emissions, on Apache Kafka: what Kafka has is not sent again."""
    settle_check(redis_client, apache_kafka.bootstrap, unique)


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedServer, str]]:
    """A broker of this module that advertises a forwarder's port; yields it and the
    forwarder's address, through which every client of these tests connects."""
    if find_java() is None:
        pytest.skip("Apache Kafka needs Java 17 or newer: none found (JAVA_HOME, PATH)")
    port = free_port()
    server = start_apache_kafka(tmp_path_factory.mktemp("apache-kafka"), advertised_port=port)
    with server, Forwarder(port, server.port):
        yield server, f"127.0.0.1:{port}"


@pytest.mark.apache_kafka
def test_clients_follow_the_advertised_port(proxied: tuple[EmbeddedServer, str]) -> None:
    server, bootstrap = proxied
    metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
    assert [(b.host, b.port) for b in metadata.brokers.values()] == [
        ("127.0.0.1", int(bootstrap.rsplit(":", 1)[1]))
    ]
    assert server.port != int(bootstrap.rsplit(":", 1)[1])


@pytest.mark.apache_kafka
def test_restart_keeps_the_log_and_the_groups_committed_offsets(
    proxied: tuple[EmbeddedServer, str], unique: str
) -> None:
    server, bootstrap = proxied
    topic, group = f"{unique}.events", f"{unique}-group"
    ensure_topics(bootstrap, {topic: 1})
    produce(bootstrap, topic, numbered(0, 10))
    settings = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    }
    first = Consumer(settings)
    first.subscribe([topic])
    assert _take_one_by_one(first, 6) == numbered(0, 6)
    first.commit(asynchronous=False)
    first.close()

    port, pid = server.port, server.pid
    server.restart()
    assert (server.port, server.returncode()) == (port, None)
    assert server.pid != pid

    second = Consumer(settings)
    second.subscribe([topic])
    assert _take(second, 4) == numbered(6, 10)  # resumes after the committed offset
    second.close()
    assert read_all(bootstrap, topic, 10) == numbered(0, 10)


def _take_one_by_one(consumer: Consumer, count: int) -> list[bytes]:
    """Exactly ``count`` values, fetched one per poll so none beyond is consumed."""
    values: list[bytes] = []
    deadline = time.monotonic() + READ_TIMEOUT_S
    while len(values) < count and time.monotonic() < deadline:
        msg = consumer.poll(0.2)
        if msg is not None:
            assert msg.error() is None, msg.error()
            values.append(msg.value() or b"")
    return values


@pytest.mark.apache_kafka
def test_sigkill_and_restart_keep_every_acknowledged_message(
    proxied: tuple[EmbeddedServer, str], unique: str
) -> None:
    server, bootstrap = proxied
    topic = f"{unique}.actions"
    ensure_topics(bootstrap, {topic: 2})
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    produce(bootstrap, topic, numbered(0, 50), producer)

    server.kill()
    assert server.returncode() == -9
    server.restart()
    produce(bootstrap, topic, numbered(50, 60), producer)  # the same client reconnects

    assert sorted(read_all(bootstrap, topic, 60), key=int) == numbered(0, 60)


@pytest.mark.apache_kafka
def test_servers_start_apache_kafka_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(embedded.REDIS_URL_ENV, raising=False)
    monkeypatch.delenv(embedded.KAFKA_BOOTSTRAP_ENV, raising=False)
    monkeypatch.setenv(EMBEDDED_KAFKA_ENV, "apache")
    lines: list[str] = []
    with servers(kafka=True, progress=lines.append) as found:
        broker = found.servers["kafka"]
        assert broker.name == "apache-kafka"
        assert found.kafka_bootstrap == broker.bootstrap
        metadata = AdminClient({"bootstrap.servers": found.kafka_bootstrap}).list_topics(timeout=10)
        assert len(metadata.brokers) == 1
    assert lines[1].startswith(f"kafka: started apache-kafka {kafka_version()} on ")
    assert lines[-2] == "kafka: stopped apache-kafka"
    assert broker.returncode() is not None


@pytest.mark.apache_kafka
def test_a_version_maven_cannot_fetch_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(ServerStartError, match="Maven could not fetch") as caught:
        ensure_jars("4.99.0", cache=tmp_path)
    assert "\n" not in str(caught.value)
    assert list((tmp_path / "apache-kafka-4.99.0").iterdir()) == []  # nothing half-made


def test_without_java_the_error_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ak, "find_java", lambda: None)
    with pytest.raises(ServerStartError, match="needs Java 17") as caught:
        start_apache_kafka()
    assert "\n" not in str(caught.value)
    assert EMBEDDED_KAFKA_ENV in str(caught.value)  # the way back to tansu


def test_fetching_jars_without_maven_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no mvn there
    with pytest.raises(ServerStartError, match=r"needs Maven \(mvn on PATH\) once") as caught:
        ensure_jars("4.4.0", cache=tmp_path)
    assert "\n" not in str(caught.value)


def test_cached_jars_are_used_without_maven(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    lib = tmp_path / "apache-kafka-4.4.0" / "lib"
    lib.mkdir(parents=True)
    (lib / "kafka_2.13-4.4.0.jar").write_bytes(b"")
    monkeypatch.setenv("PATH", str(tmp_path))  # no mvn: it must not be needed
    monkeypatch.setenv(ak.CACHE_ENV, str(tmp_path))
    assert ensure_jars("4.4.0") == lib


def test_java_major_reads_old_and_new_version_strings(tmp_path: Path) -> None:
    for text, major in (
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('java version "1.8.0_392"', 8),
    ):
        fake = tmp_path / f"java{major}"
        fake.write_text(f"#!/bin/sh\necho '{text}' >&2\n")
        fake.chmod(0o755)
        assert ak.java_major(str(fake)) == major
    assert ak.java_major(str(tmp_path / "absent")) == 0
