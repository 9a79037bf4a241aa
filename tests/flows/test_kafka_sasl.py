"""Kafka SASL (PLAIN, SCRAM) from ``TETIK_KAFKA_*``, against a real Apache Kafka broker
with a SASL listener (flows.servers.apache_kafka.Sasl): tetik's own commands create
topics, produce and read through it, and a wrong password is one line."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.servers.apache_kafka import Sasl, find_java, start_apache_kafka
from flows.servers.process import EmbeddedServer, free_port
from tests.tetik_cli import tetik

pytestmark = [pytest.mark.apache_kafka, pytest.mark.integration]

USER, PASSWORD = "shop", "pw-for-shop"


@pytest.fixture(scope="module")
def sasl_broker() -> Iterator[tuple[EmbeddedServer, str]]:
    """An Apache Kafka broker with a SASL_PLAINTEXT listener; its SASL bootstrap."""
    if find_java() is None:
        pytest.skip("Apache Kafka needs Java 17 or newer: none found (JAVA_HOME, PATH)")
    sasl = Sasl(port=free_port(), users=((USER, PASSWORD),))
    with start_apache_kafka(sasl=sasl) as server:
        yield server, f"127.0.0.1:{sasl.port}"


def _env(bootstrap: str, mechanism: str, password: str = PASSWORD) -> dict[str, str]:
    return {
        "TETIK_KAFKA_BOOTSTRAP": bootstrap,
        "TETIK_KAFKA_SECURITY_PROTOCOL": "sasl_plaintext",
        "TETIK_KAFKA_SASL_MECHANISM": mechanism,
        "TETIK_KAFKA_SASL_USERNAME": USER,
        "TETIK_KAFKA_SASL_PASSWORD": password,
        "TETIK_KAFKA_TIMEOUT_S": "10",
    }


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_produce_and_read_back_through_sasl(
    sasl_broker: tuple[EmbeddedServer, str], tmp_path: Path, mechanism: str
) -> None:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    _server, bootstrap = sasl_broker
    topic = f"sasl-{mechanism.lower()}"
    log = tmp_path / "events.jsonl"
    log.write_text(
        f'{{"event_id":"{topic}-1","type":"view_product","user_id":"u1",'
        '"ts":1700000000000,"product_id":"p1"}\n'
    )
    done = tetik("produce", str(log), "--topic", topic, env=_env(bootstrap, mechanism), timeout=90)
    assert done.returncode == 0, done.stderr
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "security.protocol": "sasl_plaintext",
            "sasl.mechanism": mechanism,
            "sasl.username": USER,
            "sasl.password": PASSWORD,
            "group.id": "sasl-test",
        }
    )
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    values: list[bytes] = []
    for _ in range(100):
        message = consumer.poll(0.2)
        if message is not None and message.error() is None:
            values.append(message.value() or b"")
            break
    consumer.close()
    assert values
    assert f'"{topic}-1"'.encode() in values[0]


def test_a_wrong_password_is_one_line(
    sasl_broker: tuple[EmbeddedServer, str], tmp_path: Path
) -> None:
    _server, bootstrap = sasl_broker
    log = tmp_path / "events.jsonl"
    log.write_text('{"event_id":"x","type":"login","user_id":"u1","ts":1700000000000}\n')
    done = tetik(
        "produce", str(log), env=_env(bootstrap, "SCRAM-SHA-256", password="wrong"), timeout=90
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert "wrong" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("tetik")]
    assert lines, done.stderr
