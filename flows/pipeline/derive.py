"""Derived events: an input that belongs to no single shopper, fanned out to many.

A product update reaches every shopper who cares about the product, a
broadcast every member of a segment. A :class:`Deriver` (one small interface
per kind of fan-out) says which inputs it takes and, page by page, which
shoppers get which derived event. :class:`FanoutLogic` runs the pages and
sends each derived event through the same keyed step as ordinary events, to
the shopper's shard.

Rules of this interface:

* A derived event's ``event_id`` is :func:`derived_id` of the input's id and
  the shopper: re-processing the input (after a crash) derives the same ids,
  and the shard's state drops an event id it already holds
  (``duplicate``), so nothing fans out twice.
* Fan-out is paced: at most ``page`` derived events per activation, so a
  fan-out to 100,000 shoppers never stalls other shoppers' events, which
  interleave with it. Ordering: a derived event is applied at its input's
  clock, after the events its shopper's shard had already taken; a shopper
  whose own event arrives during a long fan-out may see that event before
  the derived one (``tetik replay`` applies the derived events at the
  input's position).
* The fan-out stage's Bytewax snapshot holds the inputs it has not finished
  and how far each got (a cursor), never the shoppers: after a crash it goes
  on from the snapshot's cursor (and the shards drop what they already
  applied).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import msgspec
from bytewax.operators import StatefulBatchLogic

from engine.events import Event
from flows.pipeline.decode import Stamped

PAGE = 2_000  # derived events a fan-out emits per activation
PACE_MS = 1  # how soon a fan-out with more to go looks again


def derived_id(source_id: str, identity: str) -> str:
    """The id of the event derived from input ``source_id`` for ``identity``."""
    digest = hashlib.blake2b(f"{source_id}\x1f{identity}".encode(), digest_size=16)
    return f"d-{digest.hexdigest()}"


class Deriver(Protocol):
    """One kind of fan-out (a plug-in; see the module rules)."""

    name: str

    def wants(self, event: Event) -> bool:
        """Whether ``event`` is an input of this fan-out rather than a shopper's event."""
        ...

    def page(self, event: Event, cursor: str, limit: int) -> tuple[list[Event], str | None]:
        """Up to ``limit`` derived events after ``cursor``, and the next cursor (None: done).

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


_encode = msgspec.json.Encoder().encode
_decode_event = msgspec.json.Decoder(Event).decode


@dataclass(frozen=True)
class FanoutConfig:
    derivers: Sequence[Deriver]
    watermark: Any  # flows.pipeline.watermark.Watermark: the input is applied once taken
    clock: Any  # flows.clock.Clock
    page: int = PAGE


class FanoutLogic(StatefulBatchLogic[Stamped, Stamped, list[Job]]):
    """Runs the fan-outs of one key (see the module rules); emits derived :class:`Stamped`."""

    def __init__(self, config: FanoutConfig, resume: list[Job] | None) -> None:
        self._c = config
        self._by_name = {d.name: d for d in config.derivers}
        self._jobs: list[Job] = list(resume or [])

    def on_batch(self, values: list[Stamped]) -> tuple[Iterable[Stamped], bool]:
        for item in values:
            deriver = next(d for d in self._c.derivers if d.wants(item.event))
            self._jobs.append(Job(deriver.name, _encode(item.event), item.now))
        # The inputs are taken: they no longer hold their partitions back.
        self._c.watermark.applied((v.partition, v.now) for v in values if v.partition)
        return self._step(), StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[Iterable[Stamped], bool]:
        return self._step(), StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        if not self._jobs:
            return None
        return datetime.fromtimestamp((self._c.clock() + PACE_MS) / 1000, UTC)

    def snapshot(self) -> list[Job]:
        return list(self._jobs)

    def _step(self) -> list[Stamped]:
        """One page of the oldest job."""
        if not self._jobs:
            return []
        job = self._jobs[0]
        event = _decode_event(job.event)
        derived, cursor = self._by_name[job.deriver].page(event, job.cursor, self._c.page)
        if cursor is None:
            self._jobs.pop(0)
        else:
            self._jobs[0] = msgspec.structs.replace(job, cursor=cursor)
        return [Stamped(d, job.now) for d in derived]


def wants_any(derivers: Sequence[Deriver]) -> Any:
    """The predicate that sends an event to the fan-out stage."""

    def wants(item: Stamped) -> bool:
        return any(d.wants(item.event) for d in derivers)

    return wants
