"""Sweeps: a derived event for every known shopper, shard by shard, paced and resumable.

Some conditions change with time alone (a segment of shoppers "not seen for
90 days"), and a broadcast reaches every member of a segment at a given time:
both need every known shopper visited, not only those who send events. A
:class:`Sweep` (one small interface per kind of sweep) says when its runs
start and which derived event a shopper gets; each shard
(:class:`flows.pipeline.shard.ShardLogic`) walks its own shoppers.

Rules of this interface:

* Each shard keeps the index of its known shoppers (a sorted set, read in
  byte order) and, per sweep, a :class:`SweepMark`: the run (when it
  started) and the last shopper done. The mark is written in the same
  transaction as the states the page changed, so after a crash the sweep
  goes on after the last shopper whose state was written: none is visited
  twice in a run, none is skipped.
* A run visits ``page`` shoppers per activation, so ordinary events
  interleave with it; a shard with more to go looks again at once.
* A derived event's id is made of the sweep, the run and the shopper
  (:func:`sweep_event_id`), so a re-processed page changes nothing twice.
* A shopper added to the index after a run started is visited if its
  identity sorts after the cursor; either way the next run visits it.
* A :class:`Visiting` sweep gives no event: its ``visit`` runs the engine on
  the shopper's state itself (e.g. ``Engine.advance`` to the watermark, for
  segment rechecks and broadcasts, :mod:`flows.pipeline.segment_sweeps`) and
  returns the actions, or None when the state did not change: then nothing is
  written, so a quiet base costs reads only. ``full`` asks the shard to
  rewrite the shopper's stored memberships and RFM inputs with its state
  (:mod:`flows.pipeline.books`).
"""

from __future__ import annotations

from typing import Protocol

import msgspec

from engine.actions import Action
from engine.events import Event
from engine.journeys import Engine
from engine.state import UserState
from flows.pipeline.derive import derived_id

PAGE = 500  # shoppers one shard visits per activation


class Sweep(Protocol):
    """One kind of sweep (a plug-in; see the module rules)."""

    name: str

    def next_run(self, last_run: int | None, now: int) -> int | None:
        """When the run after ``last_run`` starts (epoch ms; None: no more runs)."""
        ...

    def event(self, identity: str, run: int, now: int) -> Event | None:
        """The derived event for ``identity`` in run ``run`` (None: nothing for this one)."""
        ...


class Visiting(Protocol):
    """A sweep that visits each shopper's state instead of giving it an event."""

    name: str
    full: bool

    def next_run(self, last_run: int | None, now: int) -> int | None: ...

    def visit(self, engine: Engine, state: UserState, run: int, until: int) -> list[Action] | None:
        """Run ``engine`` on ``state`` (watermark ``until``); the actions, or None when
        the state did not change."""
        ...


class SweepMark(msgspec.Struct, array_like=True, frozen=True):
    """Where one sweep stands in one shard."""

    run: int  # when the run started (epoch ms)
    cursor: str = ""  # the last shopper done
    done: bool = False


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(SweepMark).decode


def pack(mark: SweepMark) -> str:
    return _encode(mark).decode()


def unpack(text: str) -> SweepMark:
    return _decode(text)


def sweep_event_id(name: str, run: int, identity: str) -> str:
    """The id of a sweep's derived event (deterministic, see the module rules)."""
    return derived_id(f"sweep:{name}:{run}", identity)


class Every:
    """A sweep that runs every ``every_ms`` and gives each shopper an event of ``type``."""

    def __init__(self, name: str, every_ms: int, event_type: str, first_run: int = 0) -> None:
        self.name = name
        self._every = every_ms
        self._type = event_type
        self._first = first_run

    def next_run(self, last_run: int | None, now: int) -> int | None:
        if last_run is None:
            return self._first or now
        return last_run + self._every

    def event(self, identity: str, run: int, now: int) -> Event | None:
        return Event(
            event_id=sweep_event_id(self.name, run, identity),
            type=self._type,
            ts=run,
            user_id=identity,
        )
