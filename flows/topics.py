"""Kafka topic set-up: create what is missing, then wait until metadata shows it."""

from __future__ import annotations

import time
from collections.abc import Mapping

from confluent_kafka import KafkaError, KafkaException

# The documented import path; confluent_kafka.admin re-exports these without __all__.
from confluent_kafka.admin import AdminClient, ClusterMetadata, NewTopic  # type: ignore[attr-defined]

__all__ = ["ensure_topics", "wait_for_topic"]

_POLL_S = 0.05


def ensure_topics(bootstrap: str, topics: Mapping[str, int], timeout: float = 15.0) -> None:
    """Create each missing topic (name -> partition count, replication 1) and wait for it.

    Idempotent: topics that already exist, or that another client creates concurrently
    (TOPIC_ALREADY_EXISTS), are accepted. An existing topic keeps its partition count:
    operators size production topics, and tetik reads any count (a user's events stay
    in one partition by key whatever the count). Returns once metadata shows every
    topic with a leader for each partition, so producing and ``assign()`` work at once.

    Raises ValueError for a partition count below 1, RuntimeError when the broker
    refuses a creation, and TimeoutError when ``timeout`` seconds pass first.
    """
    if any(count < 1 for count in topics.values()):
        raise ValueError(f"partition counts must be >= 1, got {dict(topics)}")
    deadline = time.monotonic() + timeout
    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = _partition_counts(admin.list_topics(timeout=timeout))
    _create(admin, {n: c for n, c in topics.items() if n not in existing}, deadline)
    _wait_for(admin, {n: existing.get(n, c) for n, c in topics.items()}, deadline)


def wait_for_topic(
    bootstrap: str, topic: str, partitions: int | None = None, timeout: float = 15.0
) -> int:
    """Wait until ``topic`` has leaders for all (or exactly ``partitions``) partitions.

    Returns the partition count; raises TimeoutError when ``timeout`` seconds pass first.
    """
    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout
    while True:
        # All topics, not list_topics(topic): naming one may auto-create it on some brokers.
        count = _ready_partitions(admin.list_topics(timeout=timeout)).get(topic, 0)
        if count and (partitions is None or count == partitions):
            return count
        if time.monotonic() > deadline:
            raise TimeoutError(f"topic {topic!r} not ready on {bootstrap} after {timeout} s")
        time.sleep(_POLL_S)


def _create(admin: AdminClient, topics: Mapping[str, int], deadline: float) -> None:
    """Request creation of ``topics``; one already existing is fine."""
    if not topics:
        return
    budget = max(deadline - time.monotonic(), 0.1)
    requests = [
        NewTopic(name, num_partitions=n, replication_factor=1) for name, n in topics.items()
    ]
    futures = admin.create_topics(requests, operation_timeout=budget, request_timeout=budget)
    for name, future in futures.items():
        try:
            future.result(timeout=max(deadline - time.monotonic(), 0.1))
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise RuntimeError(f"creating topic {name!r} failed: {error.str()}") from exc


def _wait_for(admin: AdminClient, topics: Mapping[str, int], deadline: float) -> None:
    """Poll metadata until every topic shows its partition count with leaders."""
    while True:
        ready = _ready_partitions(admin.list_topics(timeout=5.0))
        pending = sorted(name for name, n in topics.items() if ready.get(name) != n)
        if not pending:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics not ready in time: {', '.join(pending)}")
        time.sleep(_POLL_S)


def _partition_counts(metadata: ClusterMetadata) -> dict[str, int]:
    """Partition count of every topic the metadata lists without error."""
    return {
        name: len(topic.partitions)
        for name, topic in metadata.topics.items()
        if topic.error is None
    }


def _ready_partitions(metadata: ClusterMetadata) -> dict[str, int]:
    """Partition count of every topic whose partitions all have a leader."""
    return {
        name: len(topic.partitions)
        for name, topic in metadata.topics.items()
        if topic.error is None and all(p.leader >= 0 for p in topic.partitions.values())
    }
