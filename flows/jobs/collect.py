"""``tetik collect [--port N] [--host H]``: the Segment-compatible HTTP collector (SPEC 12).

Rules of this job:

* The write keys come from ``TETIK_COLLECT_WRITE_KEYS`` (comma-separated,
  :mod:`flows.settings`); without one the job refuses to start, with one
  line: a collector that takes any key would take anyone's events.
* Kafka is ``TETIK_KAFKA_BOOTSTRAP``; when it is unset the job starts the
  embedded servers (:func:`flows.servers.embedded.servers`, as ``tetik run``
  does) and says where they are, so ``tetik run`` can be pointed at them.
  Missing topics are created first (:meth:`flows.settings.Settings.topic_layout`).
* The port is bound before anything is served: a port in use is one line,
  not a traceback. uvicorn serves the app (:mod:`flows.collect.app`) on one
  event loop; SIGINT/SIGTERM stop it gracefully: requests under way are
  answered, then the producer is flushed.
* With ``--metrics-port`` (else ``TETIK_METRICS_PORT``) it serves
  ``/metrics``, ``/healthz`` and ``/readyz`` there as ``tetik run`` does
  (:mod:`flows.metrics`): ready when Kafka answers, live while the event
  loop turns. The collector's own port answers ``GET /healthz`` too.
* Records are produced with ``acks=all`` and a delivery timeout of
  :data:`DELIVERY_TIMEOUT_MS`: a broker that does not acknowledge within it
  turns the request into a 503, which the SDKs retry.
"""

from __future__ import annotations

import contextlib
import signal
import socket
from types import FrameType
from typing import Final

import uvicorn

from engine.errors import ConfigError
from flows.collect.app import Collector
from flows.kafka.acked import AckedProducer
from flows.kafka.topics import ensure_topics
from flows.metrics.health import Health, kafka_check
from flows.metrics.http import serve_job
from flows.report import say
from flows.servers.embedded import servers
from flows.settings import Settings, from_env

DEFAULT_PORT: Final = 8088
DEFAULT_HOST: Final = "0.0.0.0"  # storefront pages and servers post from elsewhere
# Under the SDKs' own request timeout (15 s in analytics-python and rudder-sdk-python).
DELIVERY_TIMEOUT_MS: Final = 10_000
LIVE_STALE_S: Final = 30.0  # the event loop beats every second (flows.collect.app)


def run_collect(port: int = DEFAULT_PORT, host: str = DEFAULT_HOST, metrics_port: int = 0) -> int:
    """Serve the collector until SIGINT/SIGTERM (see the module rules)."""
    base = from_env()
    metrics_port = metrics_port or base.metrics_port
    if not base.collect_write_keys:
        raise ConfigError(
            "set TETIK_COLLECT_WRITE_KEYS to the write keys your storefronts send "
            "(comma-separated), e.g. TETIK_COLLECT_WRITE_KEYS=shop-web-key"
        )
    sock = bind(host, port)
    with servers(progress=say) as endpoints, contextlib.ExitStack() as stack:
        settings = base.with_endpoints(endpoints.redis_url, endpoints.kafka_bootstrap)
        ensure_topics(
            settings.kafka_bootstrap, settings.topic_layout(), timeout=settings.kafka_timeout_s
        )
        checks = {"kafka": kafka_check(settings.kafka_bootstrap)}
        health = serve_job(metrics_port, checks, stack, stale_s=LIVE_STALE_S)
        if endpoints.servers:
            say(
                f"for tetik run: TETIK_KAFKA_BOOTSTRAP={settings.kafka_bootstrap} "
                f"TETIK_REDIS_URL={settings.redis_url}"
            )
        app = collector(settings, health)
        say(
            f"collecting on http://{host}:{port}/v1/{{track,identify,page,screen,batch}} "
            f"-> {settings.events_topic} (Ctrl-C stops)"
        )
        serve(server(app), sock)
        counts = app.counts
        say(
            f"collect: {counts.events:,} events taken from {counts.requests:,} requests; "
            f"{counts.refused:,} refused (-> {settings.dlq_topic}), "
            f"{counts.unauthorized:,} unauthorized, {counts.unavailable:,} answered 503"
        )
    return 0


def collector(settings: Settings, health: Health | None = None) -> Collector:
    """The app for ``settings`` (its producer starts with the app's lifespan)."""
    config = {**settings.producer_config(), "message.timeout.ms": DELIVERY_TIMEOUT_MS}
    producer = AckedProducer(config)
    keys, topics = settings.collect_write_keys, (settings.events_topic, settings.dlq_topic)
    return Collector(keys, producer, *topics, health=health)


def server(app: Collector) -> uvicorn.Server:
    """A uvicorn server for ``app``, quiet but for warnings; run it with bound sockets."""
    config = uvicorn.Config(
        app, lifespan="on", access_log=False, log_level="warning", server_header=False
    )
    return uvicorn.Server(config)


def serve(uvicorn_server: uvicorn.Server, sock: socket.socket) -> None:
    """Run until SIGINT/SIGTERM. uvicorn stops gracefully on either, then raises it
    again for the handlers before it: absorbed here, so the job ends and reports."""
    signals = (signal.SIGINT, signal.SIGTERM)
    before = {sig: signal.signal(sig, _absorb) for sig in signals}
    try:
        uvicorn_server.run(sockets=[sock])
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _absorb(_sig: int, _frame: FrameType | None) -> None:
    """The signal uvicorn raises again once it has stopped: nothing more to do."""


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``; ConfigError in one line when it cannot be."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port} ({exc.strerror}); choose another with --port"
        ) from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.listen(2048)
    return sock
