"""Kafka topic set-up: wait for the brokers, create what is missing, never recreate.

Rules of this interface:

* :func:`ensure_topics` is the only creator of tetik's topics; the partition
  counts come from :meth:`flows.settings.Settings.topic_layout`.
* A topic that exists is never deleted or recreated, whatever its partition
  count: operators size production topics, and tetik reads any count (a
  user's events stay in one partition by key whatever the count). When an
  existing count differs from the configured one, one line on stderr says so.
* Start-up waits for the brokers up to a bounded timeout, with one line while
  waiting; then :class:`BrokerUnavailable` (a one-line :class:`TetikError`).
* :func:`topic_id` is the topic's identity (Kafka's topic id, from
  ``DescribeTopics``); a recreated topic gets a new one. tansu and Apache
  Kafka >= 2.8 have topic ids; a broker without them gives "".
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicCollection, TopicPartition

# The documented import path; confluent_kafka.admin re-exports these without __all__.
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ClusterMetadata,
    NewTopic,
    OffsetSpec,
)

from engine.errors import TetikError
from flows import logs
from flows.kafka.connection import client_config
from flows.report import say

__all__ = [
    "BrokerUnavailable",
    "ensure_topics",
    "read_topic_id",
    "request_topic_id",
    "topic_id",
    "wait_for_brokers",
    "wait_for_topic",
]

_POLL_S = 0.05
_PROBE_S = 2.0  # one metadata request while waiting for the brokers
_NO_ID = "AAAAAAAAAAAAAAAAAAAAAA"  # the zero UUID: a broker without topic ids


class BrokerUnavailable(TetikError):
    """The Kafka brokers did not answer in time; the message says what to do."""


def _admin(bootstrap: str) -> AdminClient:
    """An admin client whose librdkafka lines go to :data:`flows.logs.KAFKA`."""
    config: dict[str, Any] = {**client_config(bootstrap), "logger": logs.KAFKA}
    return AdminClient(config)


def ensure_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    timeout: float = 15.0,
    warn: Callable[[str], None] = say,
) -> None:
    """Create each missing topic (name -> partition count, replication 1) and wait for it.

    Idempotent: topics that already exist, or that another client creates concurrently
    (TOPIC_ALREADY_EXISTS), are accepted and keep their partition count (``warn`` hears
    one line for each whose count differs). Returns once metadata shows every topic with
    a leader for each partition, so producing and ``assign()`` work at once.

    Raises ValueError for a partition count below 1, BrokerUnavailable when the brokers
    do not answer within ``timeout`` seconds, RuntimeError when the broker refuses a
    creation, and TimeoutError when the topics do not show up in time.
    """
    if any(count < 1 for count in topics.values()):
        raise ValueError(f"partition counts must be >= 1, got {dict(topics)}")
    deadline = time.monotonic() + timeout
    admin = _admin(bootstrap)
    existing = _partition_counts(wait_for_brokers(admin, bootstrap, deadline, warn))
    for name, count in sorted(topics.items()):
        if name in existing and existing[name] != count:
            warn(
                f"topic {name!r} has {existing[name]} partition(s), the configured count is "
                f"{count}; it is kept as it is (tetik never recreates a topic): add partitions "
                "with your Kafka tools, or set the count to match"
            )
    _create(admin, {n: c for n, c in topics.items() if n not in existing}, deadline)
    _wait_for(admin, {n: existing.get(n, c) for n, c in topics.items()}, deadline)


def wait_for_brokers(
    admin: AdminClient, bootstrap: str, deadline: float, warn: Callable[[str], None] = say
) -> ClusterMetadata:
    """The cluster's metadata once a broker answers; BrokerUnavailable at ``deadline``."""
    said = False
    while True:
        try:
            return admin.list_topics(timeout=max(min(_PROBE_S, deadline - time.monotonic()), 0.1))
        except KafkaException as exc:
            reason = exc.args[0].str() if exc.args else str(exc)
        if time.monotonic() >= deadline:
            raise BrokerUnavailable(
                f"Kafka at {bootstrap} did not answer in time ({reason}): start it, or point "
                "TETIK_KAFKA_BOOTSTRAP at a running broker (TETIK_KAFKA_TIMEOUT_S waits longer)"
            )
        if not said:
            warn(f"waiting for Kafka at {bootstrap} ({reason})")
            said = True
        time.sleep(_POLL_S)


def topic_id(admin: AdminClient, topic: str, timeout: float = 5.0) -> str | None:
    """``topic``'s id ("" when the broker has no topic ids); None if it does not exist.

    Raises KafkaException when the broker does not answer within ``timeout`` seconds.
    """
    return read_topic_id(request_topic_id(admin, topic, timeout), timeout)


def request_topic_id(admin: AdminClient, topic: str, timeout: float = 5.0) -> Future[Any]:
    """Ask for ``topic``'s description; :func:`read_topic_id` reads the answer."""
    futures = admin.describe_topics(TopicCollection([topic]), request_timeout=timeout)
    future: Future[Any] = futures[topic]
    return future


def read_topic_id(future: Future[Any], timeout: float = 5.0) -> str | None:
    """The id in a :func:`request_topic_id` answer (see :func:`topic_id`)."""
    try:
        description = _answer(future, timeout)
    except KafkaException as exc:
        if exc.args and exc.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            return None
        raise
    found = str(description.topic_id or "")
    return "" if found == _NO_ID else found


def request_end_offset(
    admin: AdminClient, topic: str, index: int, timeout: float = 5.0
) -> Future[Any]:
    """Ask for the end (latest) offset of partition ``index``; :func:`read_end_offset`
    reads the answer."""
    asked = {TopicPartition(topic, index): OffsetSpec.latest()}  # type: ignore[no-untyped-call]
    futures = admin.list_offsets(asked, request_timeout=timeout)
    future: Future[Any] = next(iter(futures.values()))
    return future


def read_end_offset(future: Future[Any], timeout: float = 5.0) -> int:
    """The offset in a :func:`request_end_offset` answer; KafkaException if none came."""
    return int(_answer(future, timeout).offset)


def _answer(future: Future[Any], timeout: float) -> Any:
    """An admin request's answer; KafkaException (timed out) when none came in time."""
    try:
        return future.result(timeout=timeout)
    except FutureTimeout:
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "no answer")) from None


def wait_for_topic(
    bootstrap: str, topic: str, partitions: int | None = None, timeout: float = 15.0
) -> int:
    """Wait until ``topic`` has leaders for all (or exactly ``partitions``) partitions.

    Returns the partition count; raises TimeoutError when ``timeout`` seconds pass first.
    """
    admin = _admin(bootstrap)
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
    """Poll metadata until every topic shows its partitions with leaders.

    A topic another client created concurrently may have another count; it is accepted.
    """
    while True:
        ready = _ready_partitions(admin.list_topics(timeout=5.0))
        pending = sorted(name for name in topics if name not in ready)
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
