"""What one process knows of anonymous ids' links, so that it asks Redis less.

A link ``a -> U`` is written only by ``a``'s shard (:mod:`flows.pipeline.identity`),
in the commit that hands ``a`` over, and is never removed. The resolver, a
user's shard waiting for a hand-off and an anonymous id's own shard all ask
whether ``a`` is linked; this book answers from memory when it can and
remembers what Redis said.

Rules of this interface (the staleness rule):

* **A link is final**: once read from Redis or committed here, ``a -> U`` is
  remembered (the latest ``size`` looked up) and never read again.
* **"Not linked" is trusted only for an anonymous id whose shard this process
  owns** (:meth:`LinkBook.own`, called by each shard's logic when it binds).
  Its one writer is then in this process, and calls :meth:`LinkBook.linked`
  right after each commit of links: from then on the book answers the link.
  The answer of a shard owned by another process is never cached (the book
  cannot hear of its commits): it is read from Redis every time.
* **A read that raced a commit is not remembered as "not linked"**: every
  :meth:`LinkBook.linked` bumps :attr:`LinkBook.version`, and
  :meth:`LinkBook.learn` drops the "not linked" answers of a read started at
  an older version (the commit may have landed after Redis answered).
* Between a commit in Redis and its :meth:`LinkBook.linked` (one worker's next
  statements), another worker of the process may still be told "not linked":
  the same race as a Redis read just before the commit, which the pipeline
  already handles (the anonymous id's shard forwards the event to its user).
* Bounded: at most ``size`` links and ``size`` "not linked" answers, least
  recently used out; a dropped answer is read again.
* Thread-safe: a process's workers share one book (``ShardConfig.links``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable

from flows.stores.keys import shard_of

CACHE_LINKS = 100_000  # links (and "not linked" answers) a process remembers


class LinkBook:
    """Links known to this process, and "not linked" answers for its own shards."""

    def __init__(self, size: int = CACHE_LINKS) -> None:
        self._shards = 0
        self._size = size
        self._owned: set[int] = set()
        self._links: OrderedDict[str, str] = OrderedDict()
        self._unlinked: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self.version = 0  # bumped by every local commit of links

    def own(self, shard: int, shards: int) -> None:
        """This process runs ``shard`` (of ``shards``): its links are committed here."""
        with self._lock:
            self._shards = shards
            self._owned.add(shard)

    def answers(self, anons: Iterable[str]) -> tuple[dict[str, str | None], list[str]]:
        """What the book knows of ``anons`` (anon -> user, None: not linked), and the
        ids it does not know (to read from Redis)."""
        known: dict[str, str | None] = {}
        unknown: list[str] = []
        with self._lock:
            for anon in anons:
                user = self._links.get(anon)
                if user is not None:
                    self._links.move_to_end(anon)
                    known[anon] = user
                elif anon in self._unlinked:
                    self._unlinked.move_to_end(anon)
                    known[anon] = None
                else:
                    unknown.append(anon)
        return known, unknown

    def learn(self, found: dict[str, str | None], version: int) -> None:
        """Remember what Redis answered to a read started at ``version`` (see the rules)."""
        with self._lock:
            fresh = version == self.version
            for anon, user in found.items():
                if user is not None:
                    self._remember(anon, user)
                elif fresh and self._owned and shard_of(anon, self._shards) in self._owned:
                    self._unlinked[anon] = None
                    self._unlinked.move_to_end(anon)
            while len(self._unlinked) > self._size:
                self._unlinked.popitem(last=False)

    def linked(self, pairs: Iterable[tuple[str, str]]) -> None:
        """A shard of this process committed these links (anon, user)."""
        with self._lock:
            self.version += 1
            for anon, user in pairs:
                self._remember(anon, user)

    def _remember(self, anon: str, user: str) -> None:
        self._unlinked.pop(anon, None)
        self._links[anon] = user
        self._links.move_to_end(anon)
        while len(self._links) > self._size:
            self._links.popitem(last=False)


def look_up(
    book: LinkBook, anons: Iterable[str], read: Callable[[list[str]], dict[str, str | None]]
) -> dict[str, str | None]:
    """Each of ``anons``' link (None: not linked): from the book, else ``read`` from
    Redis (and learnt)."""
    known, unknown = book.answers(dict.fromkeys(anons))
    if unknown:
        version = book.version
        found = read(unknown)
        book.learn(found, version)
        known.update(found)
    return known
