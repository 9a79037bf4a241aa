"""A decoded log cut into parts that replay apart: by identity, at the whole log's clock.

Rules of this interface:

* Users are independent in a replay (:mod:`engine.replay`), except through
  what the rules read across the base: the catalog and its interest index (a
  log with ``product_update`` events), ``bought_together`` and ``rfm()``.
  :func:`independent` says whether a log and its engine have none of these;
  only then may its parts run apart.
* Two events fall in the same part when they name the same identity, or
  identities some event of the log links (``anon_id`` with ``user_id``:
  union-find over every such pair, a conflicting one included), so every
  merge :func:`engine.identity.resolve` can make happens inside one part.
* A part keeps the log's order. Each of its events comes with the replay's
  virtual clock over the whole log at that event (``clocks``), and the part
  with the clock where the whole log stops (``last``): a part stamps,
  prunes and judges staleness as the whole run does. Events after ``until``
  are in no part (a replay does not apply them).
* Which part a group of linked identities falls in is a stable hash of one of
  its ids (crc32): the same log cuts the same way in every run. Parts
  with no event are left out.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from engine.events import PRODUCT_UPDATE, Event
from engine.journeys import Engine


@dataclass
class Part:
    """One part of a log: its events in log order, each with the whole log's clock."""

    events: list[Event] = field(default_factory=list)
    clocks: list[int] = field(default_factory=list)
    last: int = 0  # the whole log's clock after its last event


def independent(engine: Engine, events: Sequence[Event]) -> str | None:
    """None when the log's users replay apart; else what joins them (for a note)."""
    if engine.runs_rfm:
        return "the rules call rfm(), which ranks every shopper"
    if engine.reads_together:
        return "the rules read bought_together(), counted over every shopper's purchases"
    if any(event.type == PRODUCT_UPDATE for event in events):
        return "the log has product updates, fanned out across shoppers"
    return None


def partition(events: Sequence[Event], parts: int, until: int | None = None) -> list[Part]:
    """``events`` cut into at most ``parts`` parts (see the module rules)."""
    kept = [e for e in events if until is None or e.ts <= until]
    groups = _Groups()
    for event in kept:
        if event.anon_id is not None and event.user_id is not None:
            groups.join(event.anon_id, event.user_id)
    cut = [Part() for _ in range(parts)]
    clock = 0
    for event in kept:
        clock = max(clock, event.ts)
        part = cut[zlib.crc32(groups.root(event.key).encode()) % parts]
        part.events.append(event)
        part.clocks.append(clock)
    for part in cut:
        part.last = clock
    return [part for part in cut if part.events]


class _Groups:
    """Union-find over identity keys (path halving; the smaller key is the root)."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def root(self, key: str) -> str:
        parent = self.parent
        while (up := parent.get(key, key)) != key:
            above = parent.get(up, up)
            parent[key] = above
            key = above
        return key

    def join(self, a: str, b: str) -> None:
        ra, rb = self.root(a), self.root(b)
        if ra != rb:
            low, high = (ra, rb) if ra < rb else (rb, ra)
            self.parent[high] = low
