"""The HTTP side of metrics: ``/metrics``, ``/healthz`` and ``/readyz`` on one port.

Rules of this interface:

* :func:`serve` binds the port at once (a port in use fails with one line
  naming it) and answers on daemon threads of its own, never on the job's:
  a scrape renders the text from :meth:`flows.metrics.Metrics.exposition`, a
  probe asks :class:`flows.metrics.health.Health`. Nothing here runs on the
  hot path.
* ``GET /metrics``: the Prometheus text format. ``GET /healthz`` and
  ``GET /readyz``: 200 and ``ok``, or 503 and one line saying what is wrong.
  Any other path: 404. Request lines are not logged.
* The server binds every interface (``host``), as Prometheus exporters do;
  :meth:`MetricsServer.close` stops it.
* :func:`serve_job` is what a job calls (``tetik run``, ``tetik deliver``,
  ``tetik collect``): with a port, it installs a
  :class:`~flows.metrics.prometheus.PrometheusMetrics` as the process's
  metrics, serves it with a :class:`~flows.metrics.health.Health` of the
  job's checks until ``stack`` closes, and returns the health for the job's
  loop to beat; without one, it does nothing and returns None.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

from engine.errors import TetikError
from flows.metrics import Metrics, install
from flows.metrics.health import Check, Health
from flows.metrics.prometheus import PrometheusMetrics
from flows.report import say

TEXT = "text/plain; charset=utf-8"


class MetricsPortError(TetikError):
    """The metrics port cannot be bound."""


class MetricsServer:
    """A running ``/metrics`` + health server (see the module rules)."""

    def __init__(self, server: ThreadingHTTPServer) -> None:
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="tetik-metrics", daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def serve(port: int, metrics: Metrics, health: Health, host: str = "0.0.0.0") -> MetricsServer:
    """Serve ``metrics`` and ``health`` on ``host:port`` (0: a free port) until closed."""
    routes: dict[str, Callable[[], tuple[int, bytes, str]]] = {
        "/metrics": lambda: (200, *metrics.exposition()),
        "/healthz": lambda: _probe(health.live()),
        "/readyz": lambda: _probe(health.ready()),
    }
    handler = type("Handler", (_Handler,), {"routes": routes})
    try:
        server = ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        raise MetricsPortError(
            f"cannot serve metrics on {host}:{port} ({exc.strerror or exc}); "
            "pick a free port with --metrics-port or TETIK_METRICS_PORT"
        ) from None
    server.daemon_threads = True
    return MetricsServer(server)


def serve_job(
    port: int, checks: Mapping[str, Check], stack: ExitStack, *, stale_s: float
) -> Health | None:
    """With ``port``: Prometheus metrics installed and served with the job's health
    until ``stack`` closes; the health, for the job's loop to beat (module rules)."""
    if not port:
        return None
    health = Health(checks, stale_s=stale_s)
    server = serve(port, install(PrometheusMetrics()), health)
    stack.callback(server.close)
    say(f"metrics on port {server.port}: /metrics, /healthz, /readyz")
    return health


def _probe(answer: tuple[bool, str]) -> tuple[int, bytes, str]:
    ok, line = answer
    return (200 if ok else 503), f"{line}\n".encode(), TEXT


class _Handler(BaseHTTPRequestHandler):
    routes: ClassVar[dict[str, Callable[[], tuple[int, bytes, str]]]] = {}

    def do_GET(self) -> None:
        route = self.routes.get(self.path.split("?", 1)[0])
        if route is None:
            status, body, kind = 404, b"not found: try /metrics, /healthz or /readyz\n", TEXT
        else:
            status, body, kind = route()
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        del format, args  # scrapes every few seconds would flood stderr
