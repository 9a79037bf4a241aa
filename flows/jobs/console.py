"""``tetik console [--port 8090] [--host 127.0.0.1]``: the marketers' web console.

Rules of this job:

* Its users come from ``TETIK_CONSOLE_TOKENS`` (``NAME:TOKEN`` pairs,
  :mod:`flows.settings`); without one the job refuses to start, with one
  line: the console pushes rules that reach customers.
* It reads and writes the Redis of a running engine (``TETIK_REDIS_URL``,
  ``TETIK_PREFIX``; refused without one) and reads the events topic
  (``TETIK_KAFKA_BOOTSTRAP``) only when a backtest asks for recent events.
* It listens on loopback by default: put it behind your TLS proxy to open it
  wider (the session cookie is not marked ``Secure`` so that plain
  ``http://127.0.0.1`` works). A port in use is one line, not a traceback;
  SIGINT/SIGTERM stop it after the requests under way.
"""

from __future__ import annotations

from typing import Final

import uvicorn

from engine.errors import ConfigError
from flows.console.app import Console
from flows.console.auth import Sessions
from flows.console.pages import Pages
from flows.jobs.collect import bind, serve
from flows.report import say
from flows.retry import connect
from flows.settings import Settings, from_env

DEFAULT_PORT: Final = 8090
DEFAULT_HOST: Final = "127.0.0.1"


def console_app(settings: Settings) -> Console:
    """The app for ``settings`` (ConfigError without tokens or Redis)."""
    if not settings.console_tokens:
        raise ConfigError(
            "set TETIK_CONSOLE_TOKENS to NAME:TOKEN pairs (comma-separated), e.g. "
            "TETIK_CONSOLE_TOKENS=alice:$(openssl rand -hex 16): the console pushes rules"
        )
    if not settings.redis_url:
        raise ConfigError(
            "set TETIK_REDIS_URL to the Redis the running engine uses (and TETIK_PREFIX if "
            "it has one): the console shows and pushes its rules"
        )
    pages = Pages(settings, connect(settings.redis_url))
    return Console(Sessions(settings.console_tokens), pages)


def run_console(port: int = DEFAULT_PORT, host: str = DEFAULT_HOST) -> int:
    """Serve the console until SIGINT/SIGTERM (see the module rules)."""
    app = console_app(from_env())
    sock = bind(host, port)
    config = uvicorn.Config(
        app, lifespan="on", access_log=False, log_level="warning", server_header=False
    )
    say(f"console on http://{host}:{port}/ (Ctrl-C stops)")
    serve(uvicorn.Server(config), sock)
    return 0
