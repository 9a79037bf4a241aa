"""The live flow's clock: how far the input has got, in event time.

Rules of this interface:

* Each event is applied at its own clock, :meth:`Watermark.stamp`: its
  ``ts``, never before the latest ``ts`` already read from its partition
  (the input's time does not run backwards, as in ``tetik replay``) and
  never after the wall clock (a producer's clock running ahead cannot make
  timers fire early).
* Timers fire only once :meth:`Watermark.value` has passed their due time.
  It is the minimum over every partition of the input: the event time read
  so far on a partition that is behind, or, on a partition that is caught
  up, the later of that and the wall clock minus ``lateness_ms`` (a
  partition with steady traffic lets timers fire as soon as its events pass
  their due time; a quiet one, ``lateness_ms`` after the wall clock does). So after an outage the
  backlog is applied in event-time order with the timers that fell due
  meanwhile: a cart bought while the engine was down ends the cart journey
  before its reminder's timer can fire.
* A partition is caught up only when its last poll came back empty *and*
  either the source stood at the partition's end (its position at the high
  watermark of the latest fetch response: ``at_end``), or nothing came from
  it for ``idle_timeout_ms`` (30 s by default), as Flink's idle sources. An
  empty poll alone proves nothing: a slow broker has not answered yet. The
  idle timeout bounds how long a partition whose broker does not answer
  holds every timer back; after it, timers follow the wall clock.
* An event stamped but not yet applied holds its partition back at its
  clock until :meth:`Watermark.applied` hears of it. A batch is stamped as
  it leaves the source, and Bytewax may wake a user's timer before that
  user's events of the same batch reach it: without this hold a reminder
  could fire ahead of the purchase that was already read (found by
  ``tetik chaos``'s slow-broker scenario after a restart with a backlog).
  Only within one process (``hold_unapplied``): with several processes an
  event may be applied by another process's worker, which this one never
  hears of, so there a stamped event does not hold its partition.
* A partition that has not reported yet holds the value at 0: no timer
  fires before every partition has been heard from.
* With several processes, each publishes its partitions' progress to Redis
  (:class:`SharedProgress`, one hash: :attr:`flows.stores.keys.Keys.watermark`)
  and reads the others', at most every
  ``share_ms``; a report older than ``stale_ms`` counts as not heard from
  (so the reports of a crashed run are ignored after a restart).
* A partition's clock survives a restart: the source snapshots
  :meth:`Watermark.reached` beside its offset, and :meth:`Watermark.restore`
  puts it back, so a partition's time never runs backwards across restarts.
  The clock snapshotted is never ahead of the snapshot's offset (events are
  stamped after the source emits them).
"""

from __future__ import annotations

import heapq
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import orjson
import redis

from flows.clock import Clock, wall_ms


@dataclass
class Progress:
    """One input partition: the latest event time read, and whether it is caught up."""

    reached: int = 0
    idle: bool = False
    reported: int = 0
    active: int = 0  # when a poll last returned messages (local; never shared)
    # Clocks of events stamped but not yet applied (local; a heap, lazily cleaned).
    inflight: list[int] = field(default_factory=list)
    done: Counter[int] = field(default_factory=Counter)

    def hold(self) -> int | None:
        """The smallest clock of an event stamped and not yet applied, if any."""
        while self.inflight and self.done[self.inflight[0]] > 0:
            clock = heapq.heappop(self.inflight)
            self.done[clock] -= 1
            if not self.done[clock]:
                del self.done[clock]
        return self.inflight[0] if self.inflight else None

    def public(self) -> Progress:
        """What other processes may rely on: in-flight events hold it back."""
        reached, idle = self.view()
        return Progress(reached, idle, self.reported)

    def view(self) -> tuple[int, bool]:
        """(reached, idle) that others may rely on, without a copy of the progress."""
        hold = self.hold()
        if hold is None:
            return self.reached, self.idle
        return min(self.reached, hold), False


class SharedProgress:
    """Partition progress published to and read from Redis (multi-process runs)."""

    def __init__(self, client: redis.Redis, key: str, stale_ms: int = 3000) -> None:
        self._client = client
        self._key = key
        self._stale_ms = stale_ms

    def exchange(self, mine: dict[str, Progress], now: int) -> dict[str, Progress]:
        """Publish ``mine``; return every fresh report (mine included)."""
        pipe = self._client.pipeline(transaction=False)
        if mine:
            pipe.hset(self._key, mapping={p: _pack(v) for p, v in mine.items()})
        pipe.hgetall(self._key)
        raw: dict[bytes, bytes] = pipe.execute()[-1]
        reports = {k.decode(): _unpack(v) for k, v in raw.items()}
        return {p: v for p, v in reports.items() if now - v.reported <= self._stale_ms}


def _pack(progress: Progress) -> bytes:
    return orjson.dumps([progress.reached, progress.idle, progress.reported])


def _unpack(raw: bytes) -> Progress:
    reached, idle, reported = orjson.loads(raw)
    return Progress(int(reached), bool(idle), int(reported))


class Watermark:
    """Event-time progress of the input, shared by a process's workers (thread-safe)."""

    def __init__(
        self,
        partitions: Iterable[str] = (),
        *,
        lateness_ms: int = 20,
        idle_timeout_ms: int = 30_000,
        clock: Clock = wall_ms,
        shared: SharedProgress | None = None,
        share_ms: int = 100,
        hold_unapplied: bool = True,
    ) -> None:
        self._expected = set(partitions)
        self._lateness = lateness_ms
        self._idle_timeout = idle_timeout_ms
        self._clock = clock
        self._shared = shared
        self._share_ms = share_ms
        self._mine: dict[str, Progress] = {}
        self._seen: dict[str, Progress] = {}
        self._shared_at = -share_ms
        self._lock = threading.Lock()
        self._hold = hold_unapplied

    def stamp(self, partition: str, ts: int, check: Callable[[int], None] | None = None) -> int:
        """The clock to apply an event read from ``partition`` at (see module rules).
        ``check(clock)`` may refuse the event first, by raising: then nothing is recorded
        (a refused event must not hold its partition back)."""
        now = self._clock()
        with self._lock:
            known = self._mine.get(partition)
            clock = min(ts if known is None else max(known.reached, ts), now)
            if check is not None:
                check(clock)
            progress = self._progress(partition, now)
            progress.reached = max(progress.reached, ts)
            if self._hold:
                heapq.heappush(progress.inflight, clock)
            return clock

    def applied(self, events: Iterable[tuple[str, int]]) -> None:
        """The events ``(partition, clock)`` stamped by :meth:`stamp` are applied."""
        if not self._hold:
            return
        with self._lock:
            touched: set[str] = set()
            for partition, clock in events:
                progress = self._mine.get(partition)
                if progress is not None:
                    progress.done[clock] += 1
                    touched.add(partition)
            for partition in touched:  # drop what is applied now: the heap stays small
                self._mine[partition].hold()

    def polled(self, partition: str, count: int, at_end: bool = True) -> None:
        """The source read ``count`` messages from ``partition``.

        ``at_end``: the source's position is at the partition's end (see the
        module rules); an empty poll that is not at the end keeps the partition
        behind until ``idle_timeout_ms`` passes without a message.
        """
        now = self._clock()
        with self._lock:
            progress = self._progress(partition, now)
            if count:
                progress.active = now
            waited = now - progress.active
            progress.idle = count == 0 and (at_end or waited >= self._idle_timeout)
            self._exchange(now)  # publish even if this process never asks for the value

    def restore(self, partition: str, reached: int) -> None:
        """Put back ``partition``'s clock from a snapshot (it only moves forward)."""
        now = self._clock()
        with self._lock:
            progress = self._progress(partition, now)
            progress.reached = max(progress.reached, reached)

    def reached(self, partition: str) -> int:
        """The latest event time read from ``partition`` (0 before any), for snapshots."""
        with self._lock:
            progress = self._mine.get(partition)
            return 0 if progress is None else progress.reached

    def value(self) -> int:
        """Timers due at or before this may fire (epoch ms)."""
        now = self._clock()
        with self._lock:
            self._exchange(now)
            seen = {n: (p.reached, p.idle) for n, p in self._seen.items()}
            seen.update({n: p.view() for n, p in self._mine.items()})
            if not self._expected.issubset(seen):
                return 0
            floor = now - self._lateness
            values = [
                min(max(reached, floor), now) if idle else reached
                for reached, idle in seen.values()
            ]
        return min(values, default=now - self._lateness)

    def _progress(self, partition: str, now: int) -> Progress:
        progress = self._mine.get(partition)
        if progress is None:
            progress = self._mine[partition] = Progress(active=now)
        progress.reported = now
        return progress

    def _exchange(self, now: int) -> None:
        """Swap reports with the other processes, at most every ``share_ms``."""
        if self._shared is None or now - self._shared_at < self._share_ms:
            return
        self._shared_at = now
        try:
            fresh = self._shared.exchange({n: p.public() for n, p in self._mine.items()}, now)
        except redis.RedisError:
            return  # keep the last reports; they go stale, which only holds timers back
        self._seen = {p: v for p, v in fresh.items() if p not in self._mine}
