"""The process's committer thread: shards' commits run behind the worker, in order.

Rules of this interface:

* :meth:`Committer.submit` runs any call on the thread, alone, in the order
  submitted (a :class:`concurrent.futures.Executor`).
* :meth:`Committer.commit` hands over one shard's commit
  (:meth:`flows.stores.states.ShardStore.commit`'s script) and what follows it
  on this thread (``then(head)``: produce the records, read ahead); the
  future holds ``then``'s result, or the error of either.
* **Staged commits** (``staged=True``) wait until :meth:`Committer.flush`
  hands every staged commit to the thread at once. The live dataflow flushes
  after each activation of its shards step (every shard that had work in a
  turn of the worker has staged its commit by then), and a shard that is
  about to wait for one of its own staged commits flushes first
  (:meth:`Committer.flush_for`), as does :meth:`Committer.submit`: staging
  delays a commit by the rest of the worker's turn, never more.
* **Commits waiting together go to Redis together.** When the thread takes a
  commit, the commits queued right behind it join it, up to :data:`GROUP`
  commits and :data:`GROUP_STATES` states:
  their scripts go to Redis in one pipeline
  (:func:`flows.stores.states.commit_together`: one round trip to one Redis,
  one per node of a cluster), then each ``then`` runs in the order
  submitted. A group holds at most one commit per shard, so a shard's commits
  still run one after another, each only once the one before it is in Redis.
  Each script is atomic on its own shard's slot, so a group changes no
  commit's meaning; it saves the round trips: at 2,250 events/s with eight
  shards a commit each per activation, the thread made 590 round trips a
  second, each about 160 us of its CPU in the client and the kernel.
* A Redis fault retries the whole group (``retry``, the shards' own
  :func:`flows.retry.retrying`): a commit that ran before the connection broke
  runs again, which writes the same values (counters may over-count one
  batch, as any retried commit's).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any, TypeVar

from flows.stores.states import ShardStore, ShardWrite, TimerHead, commit_together

T = TypeVar("T")
GROUP = 32  # commits in one pipeline at most
# ... and states: a group's arguments are all in memory at once, and large commits gain
# little from sharing a round trip. Unbounded, 32 of a burst's batches of 500 left the
# worker 9 MiB larger (tetik bench scale, 30k signups: 755 bytes per pending enrollment,
# 442 before grouping); 256: 462 bytes, 512: 522, 1024: 665. A fan-out's slices of 100
# still share a round trip five at a time (catalog-fanout: 22.4 s at 512, 24.9 at 256).
GROUP_STATES = 512

Retry = Callable[[str, Callable[[], Any]], Any]


@dataclass(frozen=True)
class _Commit:
    store: ShardStore
    write: ShardWrite
    clock: Callable[[], int]
    retry: Retry
    then: Callable[[TimerHead], Any]
    future: Future[Any]


@dataclass(frozen=True)
class _Call:
    call: Callable[[], Any]
    future: Future[Any]


class Committer(Executor):
    """One thread running commits in the order submitted (see the module rules)."""

    def __init__(self, name: str = "tetik-commit") -> None:
        self._queue: queue.SimpleQueue[_Commit | _Call | None] = queue.SimpleQueue()
        self._lock = threading.Lock()  # the staged commits (several workers may stage)
        self._staged: list[_Commit] = []
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Run ``fn`` on the thread after every commit handed over or staged before."""
        future: Future[T] = Future()
        with self._lock:
            self._flush()
            self._queue.put(_Call(lambda: fn(*args, **kwargs), future))
        return future

    def commit(
        self,
        store: ShardStore,
        write: ShardWrite,
        *,
        clock: Callable[[], int],
        retry: Retry,
        then: Callable[[TimerHead], T],
        staged: bool = False,
    ) -> Future[T]:
        """Hand over (or stage) one shard's commit; see the module rules."""
        future: Future[T] = Future()
        job = _Commit(store, write, clock, retry, then, future)
        with self._lock:
            if staged:
                self._staged.append(job)
            else:
                self._flush()
                self._queue.put(job)
        return future

    def flush(self) -> None:
        """Hand every staged commit to the thread, in the order staged."""
        with self._lock:
            self._flush()

    def flush_for(self, futures: list[Future[Any]]) -> None:
        """Flush if one of ``futures`` belongs to a staged commit (its owner will wait)."""
        with self._lock:
            if any(job.future in futures for job in self._staged):
                self._flush()

    def _flush(self) -> None:
        for job in self._staged:
            self._queue.put(job)
        self._staged.clear()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._flush()
            self._queue.put(None)
        if wait:
            self._thread.join()

    def _run(self) -> None:
        held: list[_Commit | _Call | None] = []  # taken while grouping, not in the group
        while True:
            job = held.pop() if held else self._queue.get()
            if job is None:
                return
            if isinstance(job, _Call):
                _settle(job.future, job.call)
                continue
            group = [job]
            while len(group) < GROUP:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if not isinstance(more, _Commit) or not _joins(group, more):
                    held.append(more)  # a call, the end, or the same shard again: next
                    break
                group.append(more)
            self._run_group(group)

    @staticmethod
    def _run_group(group: list[_Commit]) -> None:
        first = group[0]
        stores = [c.store for c in group]
        writes = [c.write for c in group]
        try:
            heads: list[TimerHead] = first.retry(
                "storing states and their actions",
                lambda: commit_together(stores, writes, first.clock()),
            )
        except BaseException as exc:  # every commit of the group waits on it: tell each
            for c in group:
                c.future.set_exception(exc)
            return
        for c, head in zip(group, heads, strict=True):
            _settle(c.future, lambda c=c, head=head: c.then(head))  # type: ignore[misc]


def _joins(group: list[_Commit], commit: _Commit) -> bool:
    """Whether ``commit`` may join ``group``: the same Redis, a shard not in it yet, and
    at most :data:`GROUP_STATES` states in all."""
    client, timers = commit.store.client, commit.store.keys.timers
    states = len(commit.write.states) + sum(len(c.write.states) for c in group)
    return (
        group[0].store.client is client
        and states <= GROUP_STATES
        and all(c.store.keys.timers != timers for c in group)
    )


def _settle(future: Future[Any], call: Callable[[], Any]) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(call())
    except BaseException as exc:  # handed to the waiter, as an Executor does
        future.set_exception(exc)
