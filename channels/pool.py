"""One route's adapters, sending in parallel with a bound, behind a circuit breaker.

Rules of this interface:

* A pool holds up to ``concurrency`` instances of one route's adapter and a
  ``ThreadPoolExecutor`` of as many threads: :meth:`ChannelPool.submit` runs
  work there, so no more than ``concurrency`` sends of a route are ever in
  flight. Threads, not asyncio: every adapter blocks (``http.client``,
  ``smtplib``, redis-py, librdkafka's flush), and threads run them unchanged.
* Each instance is used by one thread at a time (the rule of
  :mod:`channels.base`): :meth:`send` takes an idle instance, or builds one
  while fewer than ``concurrency`` exist, and gives it back after the send.
  So an SMTP adapter keeps one connection per thread. The first instance is
  built up front (a bad setup fails at start-up); the others when needed.
* :meth:`send` never raises: an adapter that does (a bug) gives a ``failed``
  delivery with ``adapter error: ...`` as its detail. Every send goes
  through the route's :class:`~channels.breaker.CircuitBreaker`: while the
  circuit is open the action is ``failed`` at once (``attempts`` 0) with
  the reason, without touching the target.
* :meth:`close` waits for submitted work, then closes every instance.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from channels.base import Channel, Delivery
from channels.breaker import CircuitBreaker
from engine.actions import Action

T = TypeVar("T")


class ChannelPool:
    """Bounded parallel sends for one route; see the module docstring."""

    def __init__(
        self,
        make: Callable[[], Channel],
        concurrency: int = 1,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.primary = make()
        self.name = self.primary.name
        self.concurrency = max(concurrency, 1)
        self.breaker = breaker if breaker is not None else CircuitBreaker()
        self._make = make
        self._made = [self.primary]
        self._idle: queue.SimpleQueue[Channel] = queue.SimpleQueue()
        self._idle.put(self.primary)
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(self.concurrency, f"tetik-{self.name}")

    def submit(self, work: Callable[[], T]) -> Future[T]:
        """Run ``work`` on one of the pool's threads."""
        return self._executor.submit(work)

    def send(self, action: Action) -> Delivery:
        """Send through the breaker on an idle instance (never raises)."""
        refused = self.breaker.admit()
        if refused is not None:
            return failed(action, self.name, refused, attempts=0)
        try:
            adapter = self._take()
        except Exception as exc:  # building another instance failed: like a failed send
            result = failed(action, self.name, f"adapter error: {type(exc).__name__}: {exc}")
            self.breaker.record(result)
            return result
        try:
            result = guarded_send(adapter, action)
        finally:
            self._idle.put(adapter)
        self.breaker.record(result)
        return result

    def _take(self) -> Channel:
        with self._lock:
            try:
                return self._idle.get_nowait()
            except queue.Empty:
                if len(self._made) < self.concurrency:
                    self._made.append(self._make())
                    return self._made[-1]
        return self._idle.get()

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        for adapter in self._made:
            adapter.close()


def guarded_send(adapter: Channel, action: Action) -> Delivery:
    """``send`` must not raise; if an adapter has a bug, park the action rather than loop."""
    try:
        return adapter.send(action)
    except Exception as exc:
        return failed(action, adapter.name, f"adapter error: {type(exc).__name__}: {exc}")


def failed(action: Action, adapter: str, detail: str, attempts: int = 0) -> Delivery:
    """A ``failed`` delivery of ``action`` with ``detail`` as the reason."""
    return Delivery(
        action_id=action.action_id,
        channel=action.channel,
        adapter=adapter,
        outcome="failed",
        detail=detail,
        attempts=attempts,
    )
