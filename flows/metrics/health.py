"""Liveness and readiness of a job, as ``/healthz`` and ``/readyz`` answer them.

Rules of this interface:

* **Live** (``/healthz``): the job's loop calls :meth:`Health.beat` every
  turn (the engine's Kafka source at every poll, ``tetik deliver`` at every
  consume). The job is live while it has not started yet (it is preparing)
  or its last beat is at most ``stale_s`` old; a loop stuck longer (a
  deadlock, a batch that never ends) is not, and an orchestrator restarts it.
  ``stale_s`` outlasts the longest turn the job allows itself.
* **Ready** (``/readyz``): the loop has beaten at least once (the flow
  started) and every check passes. A check is a callable that raises when
  its server does not answer (:func:`redis_check`, :func:`kafka_check`); the
  answers are kept ``cache_s`` seconds, so probes do not load the servers.
* Each answer is ``(ok, one line)``: the line names what is wrong.
* Thread-safe: beats come from the job's threads, questions from the HTTP server's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from flows.kafka.connection import client_config

Check = Callable[[], object]
CHECK_TIMEOUT_S = 2.0


class Health:
    """What ``/healthz`` and ``/readyz`` answer (see the module rules)."""

    def __init__(
        self,
        checks: Mapping[str, Check] | None = None,
        *,
        stale_s: float = 60.0,
        cache_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._checks = dict(checks or {})
        self._stale_s = stale_s
        self._cache_s = cache_s
        self._clock = clock
        self._beat: float | None = None
        self._lock = threading.Lock()
        self._answer: tuple[float, tuple[bool, str]] | None = None

    def beat(self) -> None:
        """The job's loop turned (cheap: one attribute written)."""
        self._beat = self._clock()

    def live(self) -> tuple[bool, str]:
        beat = self._beat
        if beat is None:
            return True, "starting"
        age = self._clock() - beat
        if age > self._stale_s:
            return False, f"the job's loop has not turned for {age:.0f} s (limit {self._stale_s:g})"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        if self._beat is None:
            return False, "not started yet"
        live, line = self.live()
        if not live:
            return False, line
        with self._lock:
            now = self._clock()
            if self._answer is None or now - self._answer[0] >= self._cache_s:
                self._answer = (now, self._run_checks())
            return self._answer[1]

    def _run_checks(self) -> tuple[bool, str]:
        for name, check in self._checks.items():
            try:
                check()
            except Exception as exc:
                return False, f"{name} does not answer ({type(exc).__name__}: {exc})"
        return True, "ok"


def redis_check(client: Any) -> Check:
    """A check that pings Redis (``client``: redis.Redis or RedisCluster)."""
    return lambda: client.ping()


def kafka_check(bootstrap: str, timeout: float = CHECK_TIMEOUT_S) -> Check:
    """A check that asks the brokers of ``bootstrap`` for their metadata."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(client_config(bootstrap))

    def check() -> None:
        admin.list_topics(timeout=timeout)

    return check
