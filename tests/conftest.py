"""Shared fixtures: one private Redis and Kafka per test session, started on first use.

Set TETIK_REDIS_URL / TETIK_KAFKA_BOOTSTRAP to run the tests against existing servers.
Tests share the servers and isolate themselves with ``unique`` key prefixes and topic
names, so nothing is flushed between tests.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator

import pytest
import redis

from flows.servers.embedded import Endpoints, servers
from flows.servers.process import EmbeddedServer


@pytest.fixture(scope="session")
def endpoints() -> Iterator[Endpoints]:
    """Redis and Kafka endpoints for the whole session (servers stopped at its end)."""
    with servers(kafka=True) as found:
        yield found


@pytest.fixture(scope="session")
def redis_url(endpoints: Endpoints) -> str:
    """URL of the session's Redis."""
    return endpoints.redis_url


@pytest.fixture(scope="session")
def kafka_bootstrap(endpoints: Endpoints) -> str:
    """Bootstrap ``host:port`` of the session's Kafka."""
    return endpoints.kafka_bootstrap


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client on the session's Redis; isolate keys with ``unique``, do not flush."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def unique() -> str:
    """A short string unique to this test, for key prefixes and topic names."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def apache_kafka() -> Iterator[EmbeddedServer]:
    """One real Apache Kafka broker (KRaft, one node) for the session's ``apache_kafka``
    tests, started on first use (its jars are fetched once with Maven, then cached).

    Skipped, with the reason, only where Java 17 is missing; any other failure to start
    is an error. ``.bootstrap`` is its ``host:port``; do not restart it (tests that
    restart a broker start their own).
    """
    from flows.servers.apache_kafka import find_java, start_apache_kafka

    if find_java() is None:
        pytest.skip("Apache Kafka needs Java 17 or newer: none found (JAVA_HOME, PATH)")
    with start_apache_kafka(progress=lambda line: print(line, file=sys.stderr)) as server:
        yield server


from flows.servers.valkey_cluster import ValkeyCluster  # noqa: E402


@pytest.fixture(scope="session")
def valkey_cluster() -> Iterator[ValkeyCluster]:
    """One private Valkey Cluster of three masters for the session's cluster tests,
    started on first use (about 2 s) and stopped at the session's end.

    ``.url`` is its ``redis+cluster://host:port,...`` URL (``flows.retry.connect`` opens
    it as a ``RedisCluster``), ``.nodes`` its masters' ``(host, port)``. Tests share it
    and isolate themselves with ``unique`` hash tags; do not kill or flush its nodes.
    """
    from flows.servers.valkey_cluster import valkey_cluster as start_cluster

    with start_cluster() as cluster:
        yield cluster
