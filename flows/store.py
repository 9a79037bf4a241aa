"""Per-user state in Redis: one msgpack value per identity key.

Rules of this interface:

* ``{prefix}:state:{identity}`` holds :func:`engine.state.dumps` of the user's
  state, with a time-to-live as long as the longest window, so a user who
  never comes back stops costing memory.
* Writes go in one pipeline per batch (:meth:`StateStore.write`), never one
  round trip per event. Counters of what the flow did live in the hash
  ``{prefix}:stats`` and move in the same pipeline, so they match the state.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Protocol, TypeVar

import redis
from redis.client import Pipeline

from engine.state import UserState, loads
from engine.windows import WindowConfig
from flows.retry import connect, retrying

T = TypeVar("T")


class Loader(Protocol):
    """How the dataflow gets a user's state on first touch (see BatchLoader)."""

    def prefetch(self, identities: Collection[str]) -> None: ...

    def load(self, identity: str) -> UserState | None: ...

    def release(self, identity: str) -> None: ...


def state_ttl_ms(windows: WindowConfig) -> int:
    """How long an idle user's state is worth keeping: its longest age limit."""
    ages = [windows.default.max_age_ms, windows.cart_max_age_ms, windows.favorites_max_age_ms]
    ages.extend(limits.max_age_ms for limits in windows.types.values())
    return max(ages)


class StateStore:
    """Reads and writes user states and flow counters in one Redis database."""

    def __init__(self, client: redis.Redis, prefix: str = "tetik", ttl_ms: int = 0) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl_ms = ttl_ms

    @classmethod
    def from_url(cls, url: str, prefix: str, windows: WindowConfig) -> StateStore:
        """A store on the Redis at ``url`` with the TTL that ``windows`` implies."""
        return cls(connect(url), prefix, state_ttl_ms(windows))

    def key(self, identity: str) -> str:
        return f"{self.prefix}:state:{identity}"

    @property
    def stats_key(self) -> str:
        return f"{self.prefix}:stats"

    def load(self, identity: str) -> UserState | None:
        """The stored state of a user, or None when there is none."""
        data = self.client.get(self.key(identity))
        return None if data is None else loads(data)  # type: ignore[arg-type]

    def write(self, states: Iterable[tuple[str, bytes]], counts: Mapping[str, int]) -> None:
        """Store serialised states and add to the counters, in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        self.queue(pipe, states, counts)
        pipe.execute()

    def queue(
        self, pipe: Pipeline, states: Iterable[tuple[str, bytes]], counts: Mapping[str, int]
    ) -> None:
        """Add the writes of :meth:`write` to a caller's pipeline (or transaction)."""
        for identity, data in states:
            pipe.set(self.key(identity), data, px=self.ttl_ms or None)
        for name, amount in counts.items():
            if amount:
                pipe.hincrby(self.stats_key, name, amount)

    def stats(self) -> dict[str, int]:
        """The flow's counters (applied, duplicate, stale, invalid, batches...)."""
        raw = self.client.hgetall(self.stats_key)
        return {k.decode(): int(v) for k, v in raw.items()}  # type: ignore[union-attr]


class BatchLoader:
    """First-touch loads in one ``MGET`` per input batch instead of a ``GET`` per user.

    Rules: :meth:`prefetch` is called with each batch of events before they are
    keyed; it fetches the states of users not live in this process. :meth:`load`
    hands a user's logic its prefetched state (falling back to a ``GET``), and
    marks the user live until :meth:`release`. Only a user's own logic writes
    its state, and prefetch skips live users, so a prefetched value is never
    older than the last write for that user. Correctness never depends on the
    prefetch: a miss is a ``GET``. Thread-safe (Bytewax workers are threads).
    """

    MAX_READY = 200_000  # keys fetched for users owned by another process never get used

    def __init__(self, store: StateStore, on_back: Callable[[], None] | None = None) -> None:
        self._store = store
        self._on_back = on_back  # after a Redis fault (reads are retried, flows.retry)
        self._lock = threading.Lock()
        self._live: set[str] = set()
        self._ready: dict[str, bytes | None] = {}

    def prefetch(self, identities: Collection[str]) -> None:
        with self._lock:
            wanted = [i for i in set(identities) if i not in self._live and i not in self._ready]
        if not wanted:
            return
        keys = [self._store.key(i) for i in wanted]
        values: list[bytes | None] = retrying(
            "reading user states",
            lambda: self._store.client.mget(keys),  # type: ignore[arg-type,return-value]
            on_back=self._on_back,
        )
        with self._lock:
            if len(self._ready) > self.MAX_READY:
                self._ready.clear()
            for identity, value in zip(wanted, values, strict=True):
                # A user who went live during the MGET may have written since: skip.
                if identity not in self._live:
                    self._ready[identity] = value

    def load(self, identity: str) -> UserState | None:
        with self._lock:
            self._live.add(identity)
            found = identity in self._ready
            data = self._ready.pop(identity, None)
        if not found:
            return retrying(
                "reading a user state", lambda: self._store.load(identity), on_back=self._on_back
            )
        return None if data is None else loads(data)

    def release(self, identity: str) -> None:
        with self._lock:
            self._live.discard(identity)


def prefetching(load: Loader, key: Callable[[T], str]) -> Callable[[list[T]], list[T]]:
    """A ``flat_map_batch`` step that prefetches the states of a batch's users."""

    def prefetch(batch: list[T]) -> list[T]:
        load.prefetch([key(item) for item in batch])
        return batch

    return prefetch
