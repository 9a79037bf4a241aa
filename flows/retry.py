"""Redis faults: retried with backoff and jitter, reported in plain lines, never a traceback.

Rules of this interface:

* :func:`connect` is how the engine opens Redis: every command has a socket
  timeout (:data:`SOCKET_TIMEOUT_S`), so a frozen server shows as a
  ``TimeoutError`` instead of a hang, and redis-py's own retries are off, so
  :func:`retrying` sees every fault and reports it.
* A Redis Cluster is named by a ``redis+cluster://`` URL:
  ``redis+cluster://[user:password@]host:port[,host:port...]`` lists startup
  nodes (any one that answers is enough; the client learns the others and the
  slot map from it; port 6379 when left out; no database number: a cluster has
  only database 0). :func:`connect` opens it as a
  ``redis.cluster.RedisCluster`` with the same timeouts, any other URL as a
  ``redis.Redis``. A cluster client contacts its nodes at once: when none
  answers, :func:`connect` raises :class:`RedisUnavailable`. Multi-key
  operations need keys of one slot (hash tags; see
  :mod:`flows.servers.valkey_cluster` for what redis-py allows). The cluster
  client is typed as ``redis.Redis`` (it has the same command methods) until
  the stores take :data:`RedisClient`.
* :func:`retrying` runs one Redis step (a read, a claim, one transaction) and
  retries it while Redis is unreachable, frozen or loading its data
  (:data:`REDIS_FAULTS`): waits start at 0.1 s and double, with jitter, up
  to 5 s; each wait prints one line saying what is waiting and for how long.
  By default it never gives up (a running engine outlives any Redis outage);
  with ``deadline_s`` it raises :class:`RedisUnavailable`, one line saying
  what to do (start-up uses this).
* A retried step must be idempotent: the callers make it so (the ledger's
  claims carry a batch token; state writes are whole values). Counters in
  ``{prefix}:stats`` may over-count one batch after a lost reply.
* ``on_back`` runs once Redis answers again after a fault: the live engine
  checks there that Redis did not come back empty (:mod:`flows.stores.deployment`).
* Every failed attempt counts in ``tetik_errors_total{system="redis"}`` of the
  process's metrics (:func:`flows.metrics.installed`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeAlias, TypeVar, cast
from urllib.parse import unquote

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import ClusterDownError, RedisClusterException, TryAgainError
from redis.retry import Retry
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    stop_never,
    wait_exponential,
    wait_random,
)

from engine.errors import TetikError
from flows.metrics import installed
from flows.metrics.names import ERRORS
from flows.report import warn

T = TypeVar("T")

SOCKET_TIMEOUT_S = 5.0
# BusyLoadingError is a ConnectionError; a cluster answers CLUSTERDOWN while it fails
# over and TRYAGAIN while a multi-key command's slot migrates: both pass.
REDIS_FAULTS = (redis.ConnectionError, redis.TimeoutError, ClusterDownError, TryAgainError)
CLUSTER_SCHEME = "redis+cluster"
_DEFAULT_PORT = 6379

# What connect() returns: a single server's client or a cluster's.
RedisClient: TypeAlias = redis.Redis | RedisCluster
_WAIT = wait_exponential(multiplier=0.1, max=5.0) + wait_random(0, 0.5)


class RedisUnavailable(TetikError):
    """Redis did not answer within the caller's deadline."""


def _report(line: str) -> None:
    warn(line)


class RedisUrlError(TetikError):
    """A ``redis+cluster://`` URL that cannot be read."""


def connect(url: str) -> redis.Redis:
    """A client whose commands time out instead of hanging: a ``RedisCluster`` for a
    ``redis+cluster://`` URL, else a ``redis.Redis`` (see the module rules)."""
    if url.startswith(f"{CLUSTER_SCHEME}://"):
        return cast(redis.Redis, _connect_cluster(url))
    return redis.Redis.from_url(
        url,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=SOCKET_TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=30,
    )


def _connect_cluster(url: str) -> RedisCluster:
    username, password, nodes = parse_cluster_url(url)
    try:
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in nodes],  # type: ignore[no-untyped-call]
            username=username,
            password=password,
            socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=SOCKET_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=30,
        )
    except (RedisClusterException, *REDIS_FAULTS) as exc:
        where = ",".join(f"{host}:{port}" for host, port in nodes)
        raise RedisUnavailable(
            f"Redis Cluster at {where} did not answer ({type(exc).__name__}: {exc}); "
            "start it, or point TETIK_REDIS_URL at one that runs"
        ) from None


def cluster_url(nodes: Iterable[tuple[str, int]]) -> str:
    """The ``redis+cluster://`` URL of a cluster with these startup nodes."""
    addresses = (f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in nodes)
    return f"{CLUSTER_SCHEME}://" + ",".join(addresses)


def parse_cluster_url(url: str) -> tuple[str | None, str | None, list[tuple[str, int]]]:
    """(username, password, [(host, port)]) of a ``redis+cluster://`` URL;
    RedisUrlError, one line, when it cannot be read."""
    prefix = f"{CLUSTER_SCHEME}://"
    if not url.startswith(prefix):
        raise RedisUrlError(f"not a Redis Cluster URL (want {prefix}host:port,...): {url}")
    rest, _, path = url[len(prefix) :].partition("/")
    if path.split("?")[0] not in ("", "0"):
        raise RedisUrlError(f"a Redis Cluster has only database 0, not /{path}: {url}")
    userinfo, _, hosts = rest.rpartition("@")
    username, _, password = userinfo.partition(":")
    nodes = [_host_port(item, url) for item in hosts.split(",") if item.strip()]
    if not nodes:
        raise RedisUrlError(f"a Redis Cluster URL names no host:port: {url}")
    return (unquote(username) or None, unquote(password) or None, nodes)


def _host_port(item: str, url: str) -> tuple[str, int]:
    host, _, port = item.strip().rpartition(":") if ":" in item else (item.strip(), "", "")
    if host.startswith("[") and host.endswith("]"):  # an IPv6 address: [::1]:7000
        host = host[1:-1]
    if not host or (port and not port.isdigit()):
        raise RedisUrlError(f"cannot read {item!r} as host:port in the Redis Cluster URL {url}")
    return host, int(port) if port else _DEFAULT_PORT


def retrying(
    what: str,
    call: Callable[[], T],
    *,
    deadline_s: float | None = None,
    on_back: Callable[[], None] | None = None,
    report: Callable[[str], None] = _report,
) -> T:
    """Run ``call``; retry it through Redis faults (see the module rules). The first
    attempt runs bare (building the retrier costs more than most calls)."""
    try:
        return call()
    except REDIS_FAULTS as exc:
        first: BaseException = exc
    failed = [first]  # the retrier's first attempt is the one that just failed

    def again() -> T:
        if failed:
            raise failed.pop()
        return call()

    def waiting(retry_state: RetryCallState) -> None:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        installed().count(ERRORS, system="redis", kind=type(error).__name__)
        pause = retry_state.next_action.sleep if retry_state.next_action else 0.0
        report(
            f"Redis unavailable while {what} ({type(error).__name__}: {error}); "
            f"retrying in {pause:.1f} s (attempt {retry_state.attempt_number}, "
            f"{retry_state.seconds_since_start:.0f} s so far)"
        )

    retrier = Retrying(
        retry=retry_if_exception_type(REDIS_FAULTS),
        wait=_WAIT,
        stop=stop_never if deadline_s is None else stop_after_delay(deadline_s),
        before_sleep=waiting,
        reraise=True,
    )
    try:
        result = retrier(again)
    except REDIS_FAULTS as exc:
        installed().count(ERRORS, system="redis", kind=type(exc).__name__)
        raise RedisUnavailable(
            f"Redis did not answer within {deadline_s:g} s while {what} "
            f"({type(exc).__name__}: {exc}); start it, or point TETIK_REDIS_URL at it"
        ) from None
    attempts = retrier.statistics.get("attempt_number", 1)
    if attempts > 1:
        report(f"Redis is back ({what} went through after {attempts} attempts)")
        if on_back is not None:
            on_back()
    return result
