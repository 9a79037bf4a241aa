"""Runtime settings, read once from the environment.

``TETIK_REDIS_URL`` and ``TETIK_KAFKA_BOOTSTRAP`` point at real servers; when
unset, the commands start embedded ones (SPEC section 6) and fill them in.
``TETIK_WINDOWS`` (JSON, see :func:`engine.windows.config_from_mapping`)
changes how much state each user keeps; ``TETIK_PREFIX`` namespaces the Redis
keys so several deployments (or tests) can share one server.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

import orjson

from engine.errors import ConfigError
from engine.windows import DEFAULT_CONFIG, WindowConfig, config_from_mapping


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

    def with_endpoints(self, redis_url: str, kafka_bootstrap: str) -> Settings:
        """A copy pointing at the given servers (those of ``servers()``)."""
        return dataclasses.replace(self, redis_url=redis_url, kafka_bootstrap=kafka_bootstrap)


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
    )


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
