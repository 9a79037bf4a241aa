"""How every Kafka client of tetik connects: the brokers, and the security settings.

Rules:

* A Kafka client of tetik (consumer, producer, admin) starts from
  :meth:`flows.settings.Settings.kafka_client`, or, where only a bootstrap string has
  come down, from :func:`client_config`; a client's own settings come last and win.
* Security (SASL, SSL) passes through from ``TETIK_KAFKA_<NAME>``, which sets
  librdkafka's ``<name>`` with ``_`` read as ``.``, for the names in
  :data:`KAFKA_SECURITY` only: a misspelt ``TETIK_KAFKA_SASL_*``/``SSL_*`` name is an
  error rather than a plain-text connection without a word
  (:func:`kafka_security_from_env`, which :func:`flows.settings.from_env` also calls).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from engine.errors import ConfigError
from engine.events import suggest

KAFKA_SECURITY = (
    "security.protocol",
    "sasl.mechanism",
    "sasl.username",
    "sasl.password",
    "sasl.oauthbearer.config",
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.key.password",
    "ssl.endpoint.identification.algorithm",
)
# A producer that never drops a message and never writes one twice: the idempotent
# producer retries inside librdkafka, without a time limit (the engine's outbox).
EXACTLY_ONCE_PRODUCER: dict[str, Any] = {
    "linger.ms": 1,
    "enable.idempotence": True,
    "message.timeout.ms": 0,
}
SECURITY_PROTOCOLS = ("plaintext", "ssl", "sasl_plaintext", "sasl_ssl")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER")


def client_config(bootstrap: str, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A Kafka client's settings: ``bootstrap``, the deployment's security, ``extra``."""
    return {"bootstrap.servers": bootstrap, **kafka_security_from_env(), **(extra or {})}


def kafka_security_from_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """librdkafka's security settings from ``TETIK_KAFKA_*`` (:data:`KAFKA_SECURITY`);
    ConfigError, one line, for a name or value librdkafka would not take."""
    env = os.environ if env is None else env
    names = {"TETIK_KAFKA_" + name.upper().replace(".", "_"): name for name in KAFKA_SECURITY}
    chosen = {names[var]: value for var, value in env.items() if var in names and value}
    for var in env:
        if var.startswith(("TETIK_KAFKA_SASL_", "TETIK_KAFKA_SSL_")) and var not in names:
            raise ConfigError(
                f"{var} is not a Kafka security setting{suggest(var, names)}; "
                f"known: {', '.join(names)}"
            )
    protocol = chosen.get("security.protocol", "").lower()
    if protocol and protocol not in SECURITY_PROTOCOLS:
        raise ConfigError(
            f"TETIK_KAFKA_SECURITY_PROTOCOL must be one of {', '.join(SECURITY_PROTOCOLS)}, "
            f"got {chosen['security.protocol']!r}"
        )
    mechanism = chosen.get("sasl.mechanism", "")
    if mechanism and mechanism.upper() not in SASL_MECHANISMS:
        raise ConfigError(
            f"TETIK_KAFKA_SASL_MECHANISM must be one of {', '.join(SASL_MECHANISMS)}, "
            f"got {mechanism!r}"
        )
    if "sasl.username" in chosen and not protocol.startswith("sasl"):
        raise ConfigError(
            "TETIK_KAFKA_SASL_USERNAME is set but TETIK_KAFKA_SECURITY_PROTOCOL is "
            f"{protocol or 'unset'}: set it to sasl_ssl (or sasl_plaintext on a private network)"
        )
    return chosen
