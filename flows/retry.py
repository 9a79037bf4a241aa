"""Redis faults: retried with backoff and jitter, reported in plain lines, never a traceback.

Rules of this interface:

* :func:`connect` is how the engine opens Redis: every command has a socket
  timeout (:data:`SOCKET_TIMEOUT_S`), so a frozen server shows as a
  ``TimeoutError`` instead of a hang, and redis-py's own retries are off, so
  :func:`retrying` sees every fault and reports it.
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
  checks there that Redis did not come back empty (:mod:`flows.deployment`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

import redis
from redis.backoff import NoBackoff
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

T = TypeVar("T")

SOCKET_TIMEOUT_S = 5.0
REDIS_FAULTS = (redis.ConnectionError, redis.TimeoutError)  # BusyLoadingError is one
_WAIT = wait_exponential(multiplier=0.1, max=5.0) + wait_random(0, 0.5)


class RedisUnavailable(TetikError):
    """Redis did not answer within the caller's deadline."""


def _report(line: str) -> None:
    print(f"tetik: {line}", file=sys.stderr, flush=True)


def connect(url: str) -> redis.Redis:
    """A client whose commands time out instead of hanging (see the module rules)."""
    return redis.Redis.from_url(
        url,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=SOCKET_TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=30,
    )


def retrying(
    what: str,
    call: Callable[[], T],
    *,
    deadline_s: float | None = None,
    on_back: Callable[[], None] | None = None,
    report: Callable[[str], None] = _report,
) -> T:
    """Run ``call``; retry it through Redis faults (see the module rules)."""

    def waiting(retry_state: RetryCallState) -> None:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
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
        result = retrier(call)
    except REDIS_FAULTS as exc:
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
