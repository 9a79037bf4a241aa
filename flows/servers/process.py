"""Child server processes on loopback: start, probe, stop, and die with their parent.

The generic machinery under the embedded servers (:mod:`flows.servers.embedded`: valkey,
tansu; :mod:`flows.servers.apache_kafka`) and under every tetik child process (jobs, the
bench, the fault suite).

Rules of the interface:

* :func:`start_server` runs one binary on a free loopback port (another one if a racing
  process takes it first; ``host`` names another local address to listen on) and
  returns an :class:`EmbeddedServer` once a probe (:func:`redis_answers`,
  :func:`kafka_answers`, or the caller's) says it answers.
* Each server is a child process in its own session. It is stopped (SIGTERM, then
  SIGKILL) when its owner stops it, at interpreter exit, and -- on Linux -- by the kernel
  when the parent process dies (:func:`die_with_parent_preexec`), so no server outlives a
  killed test run or demo. For fault tests a server can also be killed (SIGKILL), paused
  and restarted on the same port with the same work dir.
* Failures raise :class:`ServerStartError`, whose message says what to do and carries
  the server's last log lines.
* :func:`stop_child` stops a tetik job the way an operator would (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import redis
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = [
    "HOST",
    "EmbeddedServer",
    "ServerStartError",
    "die_with_parent_preexec",
    "free_port",
    "kafka_answers",
    "redis_answers",
    "start_server",
    "stop_child",
]

HOST = "127.0.0.1"
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0
_PORT_ATTEMPTS = 3
# Readiness probes are short and repeated until START_TIMEOUT_S: loopback answers in
# milliseconds, and between probes we notice a server that exited (e.g. lost its port).
_PROBE_S = 0.25
_LOG_TAIL_LINES = 20
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_NO_RETRY = Retry(NoBackoff(), retries=0)

# Loaded in the parent: dlopen() in a freshly forked child of a threaded process is unsafe.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


class ServerStartError(RuntimeError):
    """A private server could not be found or started; the message says what to do."""


class EmbeddedServer:
    """One running server child process, owned by whoever started it.

    Rules: the process runs in its own session (a terminal's Ctrl+C reaches only the
    parent, which then stops it in order); stdout and stderr go to ``log_path`` in its
    work dir. The work dir is a private temp dir that :meth:`stop` removes, unless the
    caller passed ``workdir`` (then it is the caller's and is kept). On Linux the child
    gets SIGKILL when the *thread* that started (or restarted) it exits, so start
    servers from a long-lived thread (the main thread). Use as a context manager or call
    :meth:`stop`; both are idempotent.

    For fault tests: :meth:`kill` (SIGKILL, no clean shutdown), :meth:`pause` /
    :meth:`resume` (SIGSTOP / SIGCONT: a hung server), and :meth:`restart` (the same
    command line, so the same port and work dir: a server whose data lives there, such
    as ``start_redis(persistent=True)`` or Apache Kafka, comes back with it). ``pid``
    changes at each restart.
    """

    def __init__(
        self,
        name: str,
        binary: str,
        port: int,
        args_for: Callable[[int, Path], Sequence[str]],
        workdir: Path | None = None,
        host: str = HOST,
    ) -> None:
        """Run ``binary *args_for(port, workdir)`` now; it must listen on ``host:port``."""
        self.name = name
        self.host = host
        self.port = port
        self.address = f"{host}:{port}"
        self.version = ""
        self.start_timeout = START_TIMEOUT_S
        self.stop_timeout = STOP_TIMEOUT_S
        self._owns_workdir = workdir is None
        if workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix=f"tetik-{name}-"))
        else:
            self.workdir = workdir
            workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{name}.log"
        self._answers: Callable[[int], bool] = lambda _port: True
        self._stopped = False
        try:
            self._argv = [binary, *args_for(port, self.workdir)]
            self._proc = self._spawn(self._argv, "wb")
        except OSError as exc:  # e.g. not executable, or built for another platform
            self._remove_workdir()
            raise ServerStartError(f"cannot run {binary}: {exc}") from exc
        except BaseException:
            self._remove_workdir()
            raise
        atexit.register(self.stop)

    def _spawn(self, argv: list[str], mode: str) -> subprocess.Popen[bytes]:
        """Start ``argv`` in its own session, logging to ``log_path`` (``mode`` "wb"/"ab")."""
        with self.log_path.open(mode) as log:  # the child keeps its own copy of the fd
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
                preexec_fn=die_with_parent_preexec(),
            )

    @property
    def bootstrap(self) -> str:
        """``host:port`` to give Kafka clients (a broker's listening address)."""
        return self.address

    @property
    def pid(self) -> int:
        """Process id of the server (it stays reserved until :meth:`stop` reaps it)."""
        return self._proc.pid

    def returncode(self) -> int | None:
        """Exit code if the process has exited, else None."""
        return self._proc.poll()

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the server's log ("" once stopped)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL the process (no clean shutdown, as in a crash) and reap it."""
        self.resume()  # a stopped process dies of SIGKILL too, but be explicit
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()

    def pause(self) -> None:
        """SIGSTOP the process: it keeps its sockets but answers nothing until resumed."""
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a paused process (harmless on a running one)."""
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGCONT)

    def restart(self, timeout: float | None = None) -> None:
        """Stop the process if it runs (SIGTERM, then SIGKILL), start the same command
        line again (same port, same work dir) and wait until it answers.

        Raises ServerStartError when it does not come back within ``timeout`` seconds
        (default: ``start_timeout``); the process is then killed and the work dir kept,
        so a later :meth:`restart` can try again.
        """
        if self._stopped:
            raise ServerStartError(f"{self.name} on {self.address} was stopped; start a new one.")
        self._halt()
        with self.log_path.open("ab") as log:
            log.write(f"--- tetik: restarting {self.name} ---\n".encode())
        self._proc = self._spawn(self._argv, "ab")
        try:
            _wait_ready(self, self._answers, timeout or self.start_timeout)
        except _PortClash:
            self.kill()
            raise ServerStartError(
                f"{self.name} could not listen on {self.address} again: another process "
                "took the port; stop that process or start a new server."
            ) from None
        except ServerStartError:
            self.kill()
            raise

    def _halt(self) -> None:
        """End the process: SIGTERM, wait, then SIGKILL; reap it."""
        self.resume()  # a paused process cannot act on SIGTERM
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def _remove_workdir(self) -> None:
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def stop(self) -> None:
        """Stop the process (SIGTERM, wait, SIGKILL), reap it and remove its temp dir."""
        atexit.unregister(self.stop)
        self._stopped = True
        self._halt()
        self._remove_workdir()

    def __enter__(self) -> EmbeddedServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedServer({self.name!r}, {self.address}, pid={self.pid})"


class _PortClash(Exception):
    """The server lost the race for its port; retry on another one."""


def die_with_parent_preexec() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGKILL the child when its parent dies (else None)."""
    libc = _LIBC
    if libc is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
        # The parent may have died between fork() and prctl(): then nobody would stop us.
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def stop_child(child: subprocess.Popen[bytes], grace_s: float = 20) -> int:
    """Stop a tetik job: SIGTERM asks it to finish its batch and exit; SIGKILL if it
    will not within ``grace_s``. Returns its exit code."""
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(grace_s)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return child.returncode


def free_port(host: str = HOST) -> int:
    """A TCP port of ``host`` (loopback) that was free a moment ago (callers retry on a clash)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@functools.cache
def binary_version(binary: str) -> str:
    """The version printed by ``binary --version`` (e.g. "8.1.8"), or "" if unknown; asked
    once per binary and process (a loaded machine took more than 5 s to start one)."""
    try:
        done = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    match = re.search(r"\d+\.\d+(?:\.\d+)?", done.stdout)
    return match.group(0) if match else ""


def redis_answers(port: int, host: str = HOST) -> bool:
    """True once a Redis-protocol server on ``host:port`` answers PING."""
    # No retries: redis-py's default retry backs off for seconds per refused connection.
    client = redis.Redis(
        host=host,
        port=port,
        socket_connect_timeout=_PROBE_S,
        socket_timeout=_PROBE_S,
        retry=_NO_RETRY,
    )
    try:
        return bool(client.ping())
    except redis.RedisError:  # refused while starting, or still loading
        return False
    finally:
        client.close()


def kafka_answers(port: int, host: str = HOST) -> bool:
    """True once a Kafka-protocol broker on ``host:port`` returns cluster metadata."""
    # A plain TCP probe first: librdkafka would log every refused connection to stderr.
    try:
        socket.create_connection((host, port), timeout=_PROBE_S).close()
    except OSError:
        return False
    admin = AdminClient({"bootstrap.servers": f"{host}:{port}"})
    try:
        return bool(admin.list_topics(timeout=2 * _PROBE_S).brokers)
    except KafkaException:
        return False


def _wait_ready(server: EmbeddedServer, answers: Callable[[int], bool], timeout: float) -> None:
    """Return once ``answers(port)`` holds while the process runs; else raise (the caller
    stops the server): _PortClash when it lost its port, else ServerStartError."""
    deadline = time.monotonic() + timeout
    while True:
        # Re-checked after a successful probe: a server that lost its port exits quickly.
        if server.returncode() is None and answers(server.port) and server.returncode() is None:
            return
        code, tail = server.returncode(), server.log_tail()
        if code is not None:
            if "in use" in tail.lower():
                raise _PortClash
            raise ServerStartError(
                f"{server.name} exited with code {code} during start-up. Last log lines:\n{tail}"
            )
        if time.monotonic() > deadline:
            raise ServerStartError(
                f"{server.name} did not answer on {server.address} within {timeout:.0f} s. "
                f"Last log lines:\n{tail}"
            )
        time.sleep(0.05)


def start_server(
    name: str,
    binary: str,
    args_for: Callable[[int, Path], Sequence[str]],
    answers: Callable[[int], bool],
    *,
    port: int | None = None,
    workdir: Path | None = None,
    timeout: float = START_TIMEOUT_S,
    version: str | None = None,
    host: str = HOST,
) -> EmbeddedServer:
    """Start ``binary *args_for(port, workdir)`` and wait until ``answers(port)``.

    Without ``port`` a free one of ``host`` is taken (and another one if a racing process
    takes it first); with ``port`` a clash is an error. ``host`` (default loopback) is the
    address the server listens on: ``args_for`` and ``answers`` must use the same one.
    ``workdir`` (kept at stop) defaults to a private temp dir. ``version`` defaults to
    what ``binary --version`` prints.
    """
    for _ in range(1 if port else _PORT_ATTEMPTS):
        server = EmbeddedServer(name, binary, port or free_port(host), args_for, workdir, host)
        server.start_timeout = timeout
        server._answers = answers
        try:
            _wait_ready(server, answers, timeout)
        except _PortClash:
            server.stop()
            continue
        except BaseException:
            server.stop()
            raise
        server.version = binary_version(binary) if version is None else version
        return server
    if port:
        raise ServerStartError(f"{name} cannot listen on {host}:{port}: the port is in use.")
    raise ServerStartError(f"{name} found no free port in {_PORT_ATTEMPTS} attempts; retry.")
