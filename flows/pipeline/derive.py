"""Derived events: an input that belongs to no single shopper, fanned out to many.

A product update reaches every shopper who cares about the product
(:mod:`flows.pipeline.catalog_fanout`). A :class:`Deriver` (one small
interface per kind of fan-out) says which inputs it takes, what taking one
does (:meth:`Deriver.take`: the catalog applies an update at once) and, page
by page, which shoppers get what: a derived event, or a :class:`Fanout` of
the input to a shopper whose shard decides the derived events from the
shopper's state. :class:`FanoutLogic` runs the pages and sends each through
the same keyed step as ordinary events, to the shopper's shard.

Rules of this interface:

* A derived event's ``event_id`` is :func:`derived_id` of the input's id and
  the shopper: re-processing the input (after a crash) derives the same ids,
  and the shard's state drops an event id it already holds
  (``duplicate``), so nothing fans out twice.
* The pages of an input start once the watermark has passed its ``ts``:
  every shopper's event up to the input's time has been applied by then
  (:mod:`flows.pipeline.watermark`), so whoever became interested before
  the input is listed.
* Fan-out is paced: at most ``page`` items per activation, no more than one
  page ahead of what this process's shards have applied (:class:`Credit`:
  one page being applied, the next queued) or, when they say nothing (the
  items went to shards of other processes), at :data:`FLOOR_PER_S` items a
  second; and not while more than a page of the shards' records wait for
  Kafka's acknowledgement. The shards apply what they get in slices of
  :data:`flows.pipeline.shard.DERIVED_SLICE` per activation, after their
  shoppers' own events (:mod:`flows.pipeline.shard`). So a fan-out to
  100,000 shoppers never queues ahead of other shoppers' events, which
  interleave with it. Pages and slices are small because every step of
  Bytewax's graph waits for the activation in front of it, and an epoch
  closes (the input reads again) only once each step has run: a long
  activation delays every event behind it several times over (measured:
  pages of 500 applied at once held the input back for 1 to 2 s per epoch).
  Ordering: a derived event is applied at its input's clock, after the
  events its shopper's shard had already taken; a shopper whose own event
  arrives during a long fan-out may see that event before the derived one
  (``tetik replay`` applies the derived events at the input's position).
* The fan-out stage's Bytewax snapshot holds the inputs it has not finished
  and how far each got (a cursor), never the shoppers: after a crash it goes
  on from the snapshot's cursor (and the shards drop what they already
  applied).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import msgspec
from bytewax.operators import StatefulBatchLogic

from engine.catalog import derived_id
from engine.events import Event
from flows.pipeline.decode import Fanout, Stamped

PAGE = 200  # derived items a fan-out emits per activation
PACE_MS = 2  # how soon a fan-out with more to go looks again
GATE_MS = 10  # how soon a fan-out waiting for the watermark looks again
AHEAD = 1  # pages a fan-out may be ahead of the shards (and of Kafka's acknowledgements)
FLOOR_PER_S = 2_000  # the pace a fan-out keeps when the shards say nothing (other processes)


class Credit:
    """How many fanned-out items this process's shards have applied (one int, added to
    under the GIL), and how many of their records Kafka has not acknowledged yet
    (``backlog``): the fan-out stays within a page of both (module rules). And whether
    the fan-out stage has inputs to page through (``fanning_out``)."""

    def __init__(self, backlog: Callable[[], int] | None = None) -> None:
        self.applied = 0
        self.backlog = backlog
        self.fanning_out = False  # the fan-out stage has inputs to page through

    def add(self, count: int) -> None:
        self.applied += count


__all__ = ["Deriver", "FanoutConfig", "FanoutLogic", "Job", "derived_id", "wants_any"]


class Deriver(Protocol):
    """One kind of fan-out (a plug-in; see the module rules)."""

    name: str

    def wants(self, event: Event) -> bool:
        """Whether ``event`` is an input of this fan-out rather than a shopper's event."""
        ...

    def take(self, events: Sequence[Event]) -> list[bytes | None]:
        """Take inputs, in order (once, or again after a crash): for each, what its pages
        need, or None when it fans out to no one."""
        ...

    def page(
        self, event: Event, data: bytes, cursor: str, limit: int
    ) -> tuple[list[Event | Fanout], str | None]:
        """Up to ``limit`` derived events or fan-outs after ``cursor``, and the next
        cursor (None: done). ``data`` is what :meth:`take` returned.

        Each derived event carries its shopper's identity and the
        :func:`derived_id` of ``event``'s id and that identity.
        """
        ...


class Job(msgspec.Struct, array_like=True, frozen=True):
    """One input being fanned out: the event, its clock, and how far it got."""

    deriver: str
    event: bytes  # msgspec JSON of the input Event
    now: int
    cursor: str = ""
    data: bytes = b""  # what the deriver's take() returned
    ts: int = 0  # the input's event time: its pages start once the watermark passes it
    started: bool = False


_encode = msgspec.json.Encoder().encode
_decode_event = msgspec.json.Decoder(Event).decode


@dataclass(frozen=True)
class FanoutConfig:
    derivers: Sequence[Deriver]
    watermark: Any  # flows.pipeline.watermark.Watermark: the input is applied once taken
    clock: Any  # flows.clock.Clock
    page: int = 0  # 0: the module's PAGE as it is when the stage is built
    credit: Credit | None = None  # the shards' progress (None: paced by time alone)


class FanoutLogic(StatefulBatchLogic[Stamped, Stamped, list[Job]]):
    """Runs the fan-outs of one key (see the module rules); emits derived :class:`Stamped`."""

    def __init__(self, config: FanoutConfig, resume: list[Job] | None) -> None:
        self._c = config
        self._page = config.page or PAGE
        self._by_name = {d.name: d for d in config.derivers}
        self._jobs: list[Job] = list(resume or [])
        self._emitted = 0  # items emitted, against the shards' credit
        self._credit_base = 0  # the credit's count before the first page went out
        self._last_page = 0  # when (clock ms) the last page went out
        self._last_sent = 0  # items in the last page

    def on_batch(self, values: list[Stamped]) -> tuple[Iterable[Stamped], bool]:
        emitted = self._take(values)
        self._tell()
        return emitted, StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[Iterable[Stamped], bool]:
        emitted = self._step()
        self._tell()
        return emitted, StatefulBatchLogic.RETAIN

    def _tell(self) -> None:
        """Let the shards know whether a fan-out is under way (they space their timer
        passes meanwhile, :mod:`flows.pipeline.shard`)."""
        if self._c.credit is not None:
            self._c.credit.fanning_out = bool(self._jobs)

    def _take(self, values: list[Stamped]) -> list[Stamped]:
        by_deriver: dict[str, list[Stamped]] = {}
        for item in values:
            deriver = next(d for d in self._c.derivers if d.wants(item.event))
            by_deriver.setdefault(deriver.name, []).append(item)
        for name, items in by_deriver.items():
            taken = self._by_name[name].take([item.event for item in items])
            for item, data in zip(items, taken, strict=True):
                if data is not None:
                    event = item.event
                    self._jobs.append(Job(name, _encode(event), item.now, data=data, ts=event.ts))
        # The inputs are taken: they no longer hold their partitions back.
        self._c.watermark.applied((v.partition, v.now) for v in values if v.partition)
        return self._step()

    def notify_at(self) -> datetime | None:
        if not self._jobs:
            return None
        pace = GATE_MS if self._gated(self._jobs[0]) else PACE_MS
        return datetime.fromtimestamp((self._c.clock() + pace) / 1000, UTC)

    def _gated(self, job: Job) -> bool:
        """Whether ``job`` waits for the watermark to pass its input (module rules)."""
        return not job.started and self._c.watermark.value() < job.ts

    def snapshot(self) -> list[Job]:
        return list(self._jobs)

    def _waiting_for_shards(self) -> bool:
        """Whether the next page waits (module rules): the shards have more than a page
        of this fan-out still to apply, or Kafka more than a page of their records."""
        if self._emitted == 0:
            return False
        credit = self._c.credit
        if credit is None:
            return self._below_floor()
        if credit.backlog is not None and credit.backlog() > AHEAD * self._page:
            return True  # the actions topic is behind: ordinary actions would queue
        in_flight = self._emitted - (credit.applied - self._credit_base)
        return in_flight > AHEAD * self._page and self._below_floor()

    def _below_floor(self) -> bool:
        """Whether the last page went out less than the floor pace's time ago."""
        floor_ms = self._last_sent * 1000 // FLOOR_PER_S
        return bool(self._c.clock() - self._last_page < floor_ms)

    def _step(self) -> list[Stamped]:
        """One page of the oldest job."""
        if not self._jobs:
            return []
        job = self._jobs[0]
        if self._gated(job) or self._waiting_for_shards():
            return []
        event = _decode_event(job.event)
        page = self._by_name[job.deriver].page
        derived, cursor = page(event, job.data, job.cursor, self._page)
        if cursor is None:
            self._jobs.pop(0)
        else:
            self._jobs[0] = msgspec.structs.replace(job, cursor=cursor, started=True)
        if self._emitted == 0 and self._c.credit is not None:
            self._credit_base = self._c.credit.applied  # what the shards applied before
        self._last_sent = len(derived)
        self._emitted += len(derived)
        self._last_page = self._c.clock()
        return [
            Stamped(d, job.now) if isinstance(d, Event) else Stamped(event, job.now, fanout=d)
            for d in derived
        ]


def wants_any(derivers: Sequence[Deriver]) -> Any:
    """The predicate that sends an event to the fan-out stage."""

    def wants(item: Stamped) -> bool:
        return any(d.wants(item.event) for d in derivers)

    return wants
