"""The settings every Kafka client starts from: where the brokers are, and how to reach
them securely.

Rules: a Kafka client of tetik (consumer, producer, admin) is built from
:func:`client_config`, so the security settings of ``TETIK_KAFKA_*`` (SASL, SSL; read
and checked by :func:`flows.settings.kafka_security_from_env`, their one owner) reach
all of them. A client's own settings (``extra``) come last and win.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flows.settings import kafka_security_from_env


def client_config(bootstrap: str, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A Kafka client's settings: ``bootstrap``, the deployment's security, ``extra``."""
    return {"bootstrap.servers": bootstrap, **kafka_security_from_env(), **(extra or {})}
