"""Runtime settings, read once from the environment.

``TETIK_REDIS_URL`` and ``TETIK_KAFKA_BOOTSTRAP`` point at real servers; when
unset, the commands start embedded ones (SPEC section 6) and fill them in.
``TETIK_WINDOWS`` (JSON, see :func:`engine.windows.config_from_mapping`)
changes how much state each user keeps, live and in ``tetik replay`` alike
(:func:`windows_from_env`); ``TETIK_PREFIX`` namespaces the Redis
keys so several deployments (or tests) can share one server.

The topic layout has one owner, :meth:`Settings.topic_layout`, used by every
job that creates topics (``tetik run``, ``tetik deliver``, ``tetik ingest``,
the demo). Partition counts, each at least 1:

=================================  =========  ==============================
variable                           default    topic
=================================  =========  ==============================
``TETIK_EVENTS_PARTITIONS``        4          ``events`` (``TETIK_EVENTS_TOPIC``)
``TETIK_DLQ_PARTITIONS``           1          ``events.dlq`` (``TETIK_DLQ_TOPIC``)
``TETIK_ACTIONS_PARTITIONS``       4          ``actions`` (``TETIK_ACTIONS_TOPIC``)
``TETIK_ACTIONS_DLQ_PARTITIONS``   1          ``actions.dlq`` (``TETIK_ACTIONS_DLQ_TOPIC``)
=================================  =========  ==============================

They apply when a topic is created; an existing topic keeps its count (see
:func:`flows.kafka.topics.ensure_topics`). The Kafka source's fault policy
(:mod:`flows.pipeline.source`) reads ``TETIK_KAFKA_TIMEOUT_S`` (30: how long start-up
waits for the brokers), ``TETIK_IDLE_TIMEOUT_MS`` (30000: after this long
without a message or an answer from a partition, it no longer holds timers
back) and ``TETIK_RESET_OFFSETS`` (empty, or ``earliest``: go on from the
earliest kept event when retention deleted unread ones).

The live engine's layout and memory: ``TETIK_SHARDS`` (8: shards of shoppers,
fixed per deployment, :mod:`flows.stores.keys`), ``TETIK_CACHE_SHOPPERS``
(4096: states a process keeps between batches, shared out over its shards)
and ``TETIK_RECOVERY_DIR`` (Bytewax's snapshots; ``.tetik/recovery`` when the
servers are given, a temporary directory when they are embedded).

The log (:mod:`flows.logs`, :func:`log_config_from_env`): ``TETIK_LOG_LEVEL``
(INFO) and ``TETIK_LOG_FORMAT`` (``json`` for one JSON object per line).

Settings are one object: :meth:`Settings.to_json` / :func:`from_json` carry them
(with the endpoints of embedded servers filled in) to child processes whole.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import msgspec
import orjson

from engine.errors import ConfigError
from engine.retention import state_ttl_ms
from engine.windows import DEFAULT_CONFIG, WindowConfig, config_from_mapping
from flows.kafka.connection import EXACTLY_ONCE_PRODUCER, kafka_security_from_env
from flows.pipeline.breaker import BreakerConfig
from flows.stores.keys import DEFAULT_SHARDS, Keys

# How long the broker may hold an empty fetch. librdkafka's default (500 ms) showed
# as a 140 ms median latency on tansu, which does not answer early when data
# arrives; 5 ms kept tansu busy at 120% CPU at 800 events/s, and latency grew.
# Measured at 800 events/s for 40 s: 20 ms gives a 27 ms median, tansu at 20%.
LOW_LATENCY_CONSUMER = {"fetch.wait.max.ms": "20"}
# Records other than the engine's outbox (deliveries' feedback, produced files):
# batched a little, acknowledged by every in-sync replica.
RECORDS_PRODUCER: dict[str, Any] = {"linger.ms": 5, "acks": "all"}
DAY_MS = 86_400_000


@dataclasses.dataclass(frozen=True)
class Settings:
    """Where tetik reads and writes, and how much state it keeps."""

    redis_url: str = ""
    kafka_bootstrap: str = ""
    events_topic: str = "events"
    dlq_topic: str = "events.dlq"
    actions_topic: str = "actions"
    prefix: str = "tetik"
    windows: WindowConfig = DEFAULT_CONFIG
    actions_dlq_topic: str = "actions.dlq"
    events_partitions: int = 4
    dlq_partitions: int = 1
    actions_partitions: int = 4
    actions_dlq_partitions: int = 1
    kafka_timeout_s: float = 30.0
    idle_timeout_ms: int = 30_000
    reset_offsets: str = ""
    # The dead-letter circuit breaker (flows.pipeline.breaker): TETIK_DLQ_MAX_SHARE (0.5),
    # TETIK_DLQ_WINDOW_S (60) and TETIK_DLQ_MIN_RECORDS (1000).
    breaker: BreakerConfig = dataclasses.field(default_factory=BreakerConfig)
    # How long start-up waits for Redis (TETIK_REDIS_TIMEOUT_S, 60).
    redis_timeout_s: float = 60.0
    shards: int = DEFAULT_SHARDS
    cache_shoppers: int = 4096
    recovery_dir: str = ""
    # tetik deliver: its consumer group (TETIK_DELIVER_GROUP) and how long a
    # delivered action id is remembered (TETIK_DELIVERY_TTL_DAYS, 30; it must
    # outlast the actions topic's retention).
    deliver_group: str = "tetik-deliver"
    delivery_ttl_ms: int = 30 * DAY_MS
    # librdkafka's security settings from TETIK_KAFKA_* (flows.kafka.connection), in every
    # client.
    kafka_security: dict[str, str] = dataclasses.field(default_factory=dict)
    # tetik collect: the write keys storefronts' Segment/RudderStack SDKs send
    # (TETIK_COLLECT_WRITE_KEYS, comma-separated; none: the collector refuses to start).
    collect_write_keys: tuple[str, ...] = ()
    # tetik run / deliver: the port of /metrics, /healthz, /readyz (TETIK_METRICS_PORT;
    # 0, unset: none). flows.metrics.
    metrics_port: int = 0
    # tetik console: who may use it, name -> token (TETIK_CONSOLE_TOKENS=alice:T1,bob:T2;
    # none: the console refuses to start). flows.console.auth.
    console_tokens: tuple[tuple[str, str], ...] = ()

    @property
    def keys(self) -> Keys:
        """The Redis key layout of this deployment."""
        return Keys(self.prefix, self.shards)

    @property
    def state_ttl_ms(self) -> int:
        """How long an idle shopper's state is kept: its longest window."""
        return state_ttl_ms(self.windows)

    def kafka_client(self) -> dict[str, Any]:
        """The connection every Kafka client of this deployment starts from."""
        return {"bootstrap.servers": self.kafka_bootstrap, **self.kafka_security}

    def producer_config(self, *, exactly_once: bool = False) -> dict[str, Any]:
        """A producer's settings: the outbox's (idempotent, never gives up) or plain records'."""
        purpose = EXACTLY_ONCE_PRODUCER if exactly_once else RECORDS_PRODUCER
        return {**self.kafka_client(), **purpose}

    def consumer_config(self, group: str, **extra: Any) -> dict[str, Any]:
        """A consumer's settings in consumer group ``group``."""
        return {**self.kafka_client(), "group.id": group, **extra}

    def engine_consumer_config(self) -> dict[str, str]:
        """Extra librdkafka settings of the engine's event consumers."""
        return {**self.kafka_security, **LOW_LATENCY_CONSUMER}

    def to_json(self) -> bytes:
        """The whole settings object, for a child process (:func:`from_json`)."""
        return msgspec.json.encode(self)

    def topic_layout(self) -> dict[str, int]:
        """Every topic tetik creates, with its configured partition count."""
        return {
            self.events_topic: self.events_partitions,
            self.dlq_topic: self.dlq_partitions,
            self.actions_topic: self.actions_partitions,
            self.actions_dlq_topic: self.actions_dlq_partitions,
        }

    def with_endpoints(self, redis_url: str, kafka_bootstrap: str) -> Settings:
        """A copy pointing at the given servers (those of ``servers()``)."""
        return dataclasses.replace(self, redis_url=redis_url, kafka_bootstrap=kafka_bootstrap)


def from_json(data: bytes | str) -> Settings:
    """Settings written by :meth:`Settings.to_json`."""
    return msgspec.json.decode(data, type=Settings)


def from_env(env: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``TETIK_*`` variables; raise ConfigError on a bad value."""
    env = os.environ if env is None else env
    return Settings(
        redis_url=env.get("TETIK_REDIS_URL", ""),
        kafka_bootstrap=env.get("TETIK_KAFKA_BOOTSTRAP", ""),
        events_topic=env.get("TETIK_EVENTS_TOPIC", "events"),
        dlq_topic=env.get("TETIK_DLQ_TOPIC", "events.dlq"),
        actions_topic=env.get("TETIK_ACTIONS_TOPIC", "actions"),
        prefix=env.get("TETIK_PREFIX", "tetik"),
        windows=_windows(env.get("TETIK_WINDOWS", "")),
        actions_dlq_topic=env.get("TETIK_ACTIONS_DLQ_TOPIC", "actions.dlq"),
        events_partitions=_count(env, "TETIK_EVENTS_PARTITIONS", 4),
        dlq_partitions=_count(env, "TETIK_DLQ_PARTITIONS", 1),
        actions_partitions=_count(env, "TETIK_ACTIONS_PARTITIONS", 4),
        actions_dlq_partitions=_count(env, "TETIK_ACTIONS_DLQ_PARTITIONS", 1),
        kafka_timeout_s=float(_count(env, "TETIK_KAFKA_TIMEOUT_S", 30)),
        idle_timeout_ms=_count(env, "TETIK_IDLE_TIMEOUT_MS", 30_000),
        reset_offsets=_reset_offsets(env.get("TETIK_RESET_OFFSETS", "")),
        breaker=_breaker(env),
        redis_timeout_s=float(_count(env, "TETIK_REDIS_TIMEOUT_S", 60)),
        shards=_count(env, "TETIK_SHARDS", DEFAULT_SHARDS),
        cache_shoppers=_count(env, "TETIK_CACHE_SHOPPERS", 4096),
        recovery_dir=env.get("TETIK_RECOVERY_DIR", ""),
        deliver_group=env.get("TETIK_DELIVER_GROUP", "tetik-deliver"),
        delivery_ttl_ms=_count(env, "TETIK_DELIVERY_TTL_DAYS", 30) * DAY_MS,
        kafka_security=kafka_security_from_env(env),
        collect_write_keys=_write_keys(env.get("TETIK_COLLECT_WRITE_KEYS", "")),
        metrics_port=port_from(env.get("TETIK_METRICS_PORT", ""), "TETIK_METRICS_PORT"),
        console_tokens=_console_tokens(env.get("TETIK_CONSOLE_TOKENS", "")),
    )


def _breaker(env: Mapping[str, str]) -> BreakerConfig:
    text = env.get("TETIK_DLQ_MAX_SHARE", "").strip()
    try:
        share = float(text) if text else BreakerConfig.max_share
    except ValueError:
        share = -1.0
    if not 0 < share <= 1:
        raise ConfigError(f"TETIK_DLQ_MAX_SHARE must be a share in (0, 1], got {text!r}; e.g. 0.5")
    return BreakerConfig(
        max_share=share,
        window_s=float(_count(env, "TETIK_DLQ_WINDOW_S", 60)),
        min_records=_count(env, "TETIK_DLQ_MIN_RECORDS", 1000),
    )


def _count(env: Mapping[str, str], name: str, default: int) -> int:
    """A whole number >= 1 from ``env[name]``, else ``default``."""
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{name} must be a whole number >= 1, got {text!r}; e.g. {default}")
    return value


def _write_keys(text: str) -> tuple[str, ...]:
    """Comma-separated write keys, blanks around them and empty ones dropped."""
    return tuple(key.strip() for key in text.split(",") if key.strip())


def _console_tokens(text: str) -> tuple[tuple[str, str], ...]:
    """``NAME:TOKEN`` pairs, comma-separated; ConfigError for a pair without both."""
    pairs = []
    for item in (part.strip() for part in text.split(",")):
        name, _, token = item.partition(":")
        if not item:
            continue
        if not name.strip() or len(token.strip()) < 8:
            raise ConfigError(
                "TETIK_CONSOLE_TOKENS must be NAME:TOKEN pairs, comma-separated, each token at "
                f"least 8 characters, got {name.strip() or '?'}:...; "
                "e.g. alice:$(openssl rand -hex 16)"
            )
        pairs.append((name.strip(), token.strip()))
    return tuple(pairs)


def port_from(text: str, name: str) -> int:
    """A TCP port (1-65535) from ``text``; 0 when empty; ConfigError naming ``name`` else."""
    text = text.strip()
    if not text:
        return 0
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ConfigError(f"{name} must be a TCP port from 1 to 65535, got {text!r}; e.g. 9464")
    return int(text)


def _reset_offsets(text: str) -> str:
    if text not in ("", "earliest"):
        raise ConfigError(
            f"TETIK_RESET_OFFSETS must be empty or 'earliest', got {text!r}: "
            "'earliest' goes on from the earliest event still kept when retention deleted some"
        )
    return text


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclasses.dataclass(frozen=True)
class LogConfig:
    """How the log is written (:mod:`flows.logs`): ``TETIK_LOG_LEVEL`` (INFO) and
    ``TETIK_LOG_FORMAT`` (``json``: one JSON object per line; else plain text)."""

    level: str = "INFO"
    json: bool = False


def log_config_from_env(env: Mapping[str, str] | None = None) -> LogConfig:
    """The log's settings alone (read before any other, so errors can be logged)."""
    env = os.environ if env is None else env
    level = env.get("TETIK_LOG_LEVEL", "").strip().upper() or "INFO"
    if level not in LOG_LEVELS:
        raise ConfigError(
            f"TETIK_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, "
            f"got {env['TETIK_LOG_LEVEL']!r}; e.g. INFO"
        )
    form = env.get("TETIK_LOG_FORMAT", "").strip().lower()
    if form not in ("", "text", "json"):
        raise ConfigError(
            f"TETIK_LOG_FORMAT must be 'json' or 'text', got {env['TETIK_LOG_FORMAT']!r}"
        )
    return LogConfig(level=level, json=form == "json")


def windows_from_env(env: Mapping[str, str] | None = None) -> WindowConfig:
    """The state bounds ``TETIK_WINDOWS`` sets (the defaults when unset), alone.

    ``tetik replay`` reads them so a backtest keeps what the live engine keeps.
    """
    env = os.environ if env is None else env
    return _windows(env.get("TETIK_WINDOWS", ""))


def _windows(text: str) -> WindowConfig:
    if not text:
        return DEFAULT_CONFIG
    try:
        raw = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(
            f'TETIK_WINDOWS is not JSON ({exc}); e.g. \'{{"default": {{"max_age": "14d"}}}}\''
        ) from None
    if not isinstance(raw, dict):
        raise ConfigError("TETIK_WINDOWS must be a JSON object")
    return config_from_mapping(raw)
