"""Fresh servers for one chaos scenario, owned by the chaos run so it can hurt them.

Rules of this interface:

* Every scenario gets its own Redis and broker, started here and stopped at
  the end of the block, whatever ``TETIK_REDIS_URL`` / ``TETIK_KAFKA_BOOTSTRAP``
  say: freezing or killing a server needs its process, and a fresh broker
  keeps tansu's in-memory log short.
* Redis is valkey, with its append-only file on when ``persistent`` (so a
  SIGKILLed server restarts with its data, as ``flows.servers.embedded`` documents).
* The broker is tansu (in memory), or Apache Kafka (``broker="apache"``, a
  log on disk that survives a restart; needs Java). With ``delay_ms`` the
  clients reach tansu only through ``chaos.proxy`` (the broker advertises the
  proxy's port), which holds every answer of the broker ``delay_ms`` back.
* :class:`Unavailable` means the scenario cannot run here (no Java, no
  proxy); its message says why, and the scenario is reported as skipped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from flows.servers.embedded import start_kafka, start_redis
from flows.servers.process import EmbeddedServer, ServerStartError, free_port

__all__ = ["Servers", "Unavailable", "scenario_servers"]


class Unavailable(Exception):
    """This machine cannot run the scenario; the message says why."""


@dataclass(frozen=True)
class Servers:
    """The scenario's servers; ``bootstrap`` is the proxy's address when there is one."""

    redis: EmbeddedServer
    redis_url: str
    broker: EmbeddedServer
    bootstrap: str


@contextlib.contextmanager
def scenario_servers(
    *, persistent: bool = False, broker: str = "tansu", delay_ms: int = 0
) -> Iterator[Servers]:
    """Start Redis and a broker (see the module rules); stop both on leaving."""
    with contextlib.ExitStack() as stack:
        redis_server, redis_url = start_redis(persistent=persistent)
        stack.enter_context(redis_server)
        if broker == "apache":
            kafka = stack.enter_context(_apache_kafka())
            yield Servers(redis_server, redis_url, kafka, kafka.address)
        elif delay_ms:
            kafka, address = _proxied_tansu(stack, delay_ms)
            yield Servers(redis_server, redis_url, kafka, address)
        else:
            kafka, address = start_kafka()
            stack.enter_context(kafka)
            yield Servers(redis_server, redis_url, kafka, address)


def _apache_kafka() -> EmbeddedServer:
    try:
        from flows.servers.apache_kafka import start_apache_kafka
    except ImportError as exc:
        raise Unavailable(f"flows.servers.apache_kafka is not available ({exc})") from None
    try:
        return start_apache_kafka()
    except ServerStartError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise Unavailable(f"Apache Kafka could not start: {first}") from None


def _proxied_tansu(stack: contextlib.ExitStack, delay_ms: int) -> tuple[EmbeddedServer, str]:
    """tansu behind a delaying proxy; the address clients should bootstrap from."""
    try:
        from chaos.proxy import DelayProxy
    except ImportError as exc:
        raise Unavailable(f"the delaying proxy chaos.proxy is not available ({exc})") from None
    proxy_port = free_port()
    kafka, _ = start_kafka(advertised_port=proxy_port)
    stack.enter_context(kafka)
    proxy = DelayProxy("127.0.0.1", kafka.port, to_client_ms=delay_ms, port=proxy_port)
    stack.enter_context(proxy)  # stopped before the broker
    return kafka, proxy.address
