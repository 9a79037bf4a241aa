"""RFM in the live engine (SPEC section 9): boundaries refreshed over the base, in Redis.

Rules of this interface:

* Inputs: every shard keeps ``{P:S}:rfm`` (identity -> packed inputs) in its
  own commit (:mod:`flows.pipeline.books`), so a refresh reads no state.
* :func:`refresh` computes the boundaries of refresh instant ``t`` (an
  epoch-aligned multiple of the rules' ``rfm_refresh``): the one process
  that claims ``t`` (``SET {P}:rfm:claim:t NX``) reads every shard's hash
  (``HSCAN``), computes with :func:`engine.rfm_base.base_bounds` (numpy) and
  stores them in ``{P}:rfm:bounds`` (instant -> packed), keeping the last
  :data:`KEEP`. Any process may run it; :class:`RfmClock` runs it in each
  process (a daemon thread), so the process that owns no shard or has died
  leaves the refresh to another.
* :class:`RfmFollower` reads the stored boundaries (one ``HGETALL`` at most
  every ``interval_ms``) into an :class:`engine.rfm.RfmBook` keeping
  :data:`KEEP`; :class:`RfmRuntime` wraps the rules runtime so that every
  engine a worker runs reads ``rfm()`` from that book
  (:meth:`engine.journeys.Engine.use_rfm`). Nothing is read while the rules
  do not call ``rfm()``.
* Live differs from replay: replay's refresh at ``t`` counts exactly the
  events before ``t``; live counts the base as the shards had written it when
  the refresh ran (shortly after ``t``): an event before ``t`` still in
  flight is missing, one just after ``t`` already applied is counted. And a
  worker uses the boundaries of ``t`` from when it has read them (within
  ``interval_ms`` of their computation); until then the previous refresh's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np

from engine.journeys import Engine
from engine.rfm import RfmBook, RfmBounds, refresh_instant
from engine.rfm_base import base_bounds
from flows.clock import Clock, wall_ms
from flows.pipeline.books import unpack_inputs
from flows.retry import RedisClient
from flows.stores.keys import Keys
from flows.stores.rules import monotonic_ms

KEEP = 4  # refreshes kept in Redis and in each worker's book
_pack = msgspec.msgpack.Encoder().encode
_unpack = msgspec.msgpack.Decoder(RfmBounds).decode


def read_base(client: RedisClient, keys: Keys) -> tuple[Any, Any, Any]:
    """Every buyer's inputs, from every shard's hash: (last, count, revenue) arrays."""
    last: list[int] = []
    count: list[int] = []
    revenue: list[float] = []
    for shard in keys.all_shards():
        for _, packed in client.hscan_iter(shard.rfm, count=5000):
            inputs = unpack_inputs(packed)
            last.append(inputs.last)
            count.append(inputs.count)
            revenue.append(inputs.revenue)
    return (
        np.asarray(last, np.int64),
        np.asarray(count, np.int64),
        np.asarray(revenue, np.float64),
    )


def refresh(client: RedisClient, keys: Keys, instant: int, every_ms: int) -> RfmBounds | None:
    """Compute and store the boundaries of ``instant`` if this process claims it."""
    claimed = client.set(keys.rfm_claim(instant), b"1", nx=True, px=max(2 * every_ms, 60_000))
    if not claimed:
        return None
    bounds = base_bounds(instant, *read_base(client, keys))
    client.hset(keys.rfm_bounds, str(instant), _pack(bounds))
    stored = sorted(int(k) for k in client.hkeys(keys.rfm_bounds))
    old = [str(k) for k in stored[:-KEEP]]
    if old:
        client.hdel(keys.rfm_bounds, *old)
    return bounds


def stored_bounds(client: RedisClient, keys: Keys) -> list[RfmBounds]:
    """The stored refreshes, oldest first."""
    raw: dict[bytes, bytes] = client.hgetall(keys.rfm_bounds)  # type: ignore[assignment]
    return sorted((_unpack(v) for v in raw.values()), key=lambda b: b.at)


class RfmFollower:
    """The stored boundaries, read at most every ``interval_ms`` (module rules)."""

    def __init__(
        self, client: RedisClient, keys: Keys, interval_ms: int = 1000, clock: Clock = monotonic_ms
    ) -> None:
        self._client = client
        self._keys = keys
        self._interval = interval_ms
        self._clock = clock
        self._next = 0
        self._lock = threading.Lock()
        self.book = RfmBook(keep=KEEP)

    def poll(self) -> RfmBook:
        now = self._clock()
        with self._lock:
            if now >= self._next:
                self._next = now + self._interval
                self._read()
            return self.book

    def _read(self) -> None:
        try:
            found = stored_bounds(self._client, self._keys)
        except Exception:  # Redis away: keep the boundaries held; the next poll retries
            return
        latest = self.book.latest
        for bounds in found:
            if latest is None or bounds.at > latest.at:
                self.book.add(bounds)


class RfmRuntime:
    """A rules runtime whose engines read ``rfm()`` from the stored boundaries."""

    def __init__(self, runtime: Any, follower: RfmFollower) -> None:
        self._runtime = runtime
        self._follower = follower

    def current(self) -> Engine:
        engine: Engine = self._runtime.current()
        if engine.uses_rfm:
            book = self._follower.poll()
            if engine.rfm is not book:
                engine.use_rfm(book)
        return engine

    def __getattr__(self, name: str) -> Any:  # engine, activated_at, drain_ended, ...
        return getattr(self._runtime, name)


class RfmClock:
    """A daemon thread that runs :func:`refresh` at every refresh instant (module rules)."""

    def __init__(
        self,
        runtime: Any,
        client: RedisClient,
        keys: Keys,
        clock: Clock = wall_ms,
        report: Callable[[str], None] | None = None,
    ) -> None:
        self._runtime = runtime
        self._client = client
        self._keys = keys
        self._clock = clock
        self._report = report
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tetik-rfm", daemon=True)
        self.done: int | None = None  # the latest instant dealt with

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.tick()
            self._stop.wait(1.0)

    def tick(self) -> None:
        """Refresh now if an instant came round since the last one dealt with."""
        engine: Engine = self._runtime.engine
        if not engine.uses_rfm:
            return
        every = engine.rules.rfm_refresh
        instant = refresh_instant(self._clock(), every)
        if self.done is not None and instant <= self.done:
            return
        try:
            bounds = refresh(self._client, self._keys, instant, every)
        except Exception as exc:  # Redis away: try again at the next tick
            if self._report is not None:
                self._report(f"RFM refresh at {instant} failed ({type(exc).__name__}: {exc})")
            return
        self.done = instant
        if bounds is not None and self._report is not None:
            self._report(f"RFM boundaries at {instant} over {bounds.buyers:,} buyers")
