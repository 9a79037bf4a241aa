"""The live side of segments and broadcasts (SPEC section 9): two visiting sweeps.

Replay runs each user's recheck and broadcast instants lazily, at the user's
next event or at the end of the log. Live, a shopper who sends no event would
never reach them, so every shard walks its shoppers (:mod:`flows.pipeline.sweep`)
with these two :class:`~flows.pipeline.sweep.Visiting` sweeps.

Rules of this interface:

* :class:`SegmentRecheck` (``segments.recheck``): while the current rules
  watch a segment that changes with time alone, a run starts at every recheck
  instant ``k * segment_recheck`` (epoch-aligned, the instants replay uses;
  after a stop, at the latest instant passed, not at each one missed: a visit
  runs every instant up to the watermark anyway). Each visit calls
  :meth:`engine.journeys.Engine.advance` to the watermark, which runs the
  shopper's due timers and its instants in time order, exactly as replay does
  at the shopper's next event. The state is written only when a membership,
  an enrollment, the re-entry history or an action changed.
* :class:`RulesSweep` (``segments.rules``): one run per activation of a rules
  version that watches a segment, has a broadcast or calls ``rfm()``
  (the run's id is the activation's moment, so a restart does not repeat it).
  Each visit re-baselines the shopper's memberships under the new definitions
  (silently, as the core does at a user's next event), advances it to the
  watermark, and *arms* its broadcasts: its state is written, with a next due
  time that includes its broadcast instant (:meth:`Engine.next_due`), so the
  shard's timer index fires each member at its own instant (for ``local:
  true``, in the shopper's zone), paced by the timer batches. A shopper
  written since the version took over is armed already. The run rewrites the
  shopper's stored memberships and RFM inputs (``full``).
* A crash halfway through either run cannot send twice: the sweep's mark is
  written with the page's states, and a broadcast's enrollment (keyed by its
  schedule) is in the state's re-entry history.
"""

from __future__ import annotations

from typing import Protocol

from engine.actions import Action
from engine.journeys import Engine
from engine.state import UserState


class _Runtime(Protocol):
    @property
    def engine(self) -> Engine: ...

    @property
    def activated_at(self) -> int | None: ...


def _mark(state: UserState) -> tuple[object, ...]:
    """What a visit may change that is worth a write (the clock alone is not)."""
    return (
        tuple(state.segments.items()),
        state.segment_defs,
        tuple((slot, e.pc, e.due) for slot, e in state.enrollments.items()),
        len(state.entered),
        len(state.sends),
    )


class SegmentRecheck:
    """Recheck instants for every shopper (see the module rules)."""

    name = "segments.recheck"
    full = False

    def __init__(self, runtime: _Runtime) -> None:
        self._runtime = runtime

    def next_run(self, last_run: int | None, now: int) -> int | None:
        engine = self._runtime.engine
        if engine.watch is None or not engine.watch.timed:
            return None
        step = engine.rules.segment_recheck
        latest = now - now % step
        if last_run is None:
            return latest
        return max(last_run + step, latest)

    def visit(self, engine: Engine, state: UserState, run: int, until: int) -> list[Action] | None:
        was = _mark(state)
        actions = engine.advance(state, until)
        return actions if actions or _mark(state) != was else None


class RulesSweep:
    """After a rules version takes over: re-baseline, advance and arm (module rules)."""

    name = "segments.rules"
    full = True

    def __init__(self, runtime: _Runtime) -> None:
        self._runtime = runtime

    def next_run(self, last_run: int | None, now: int) -> int | None:
        engine = self._runtime.engine
        at = self._runtime.activated_at
        wanted = engine.watch is not None or engine.broadcasts is not None or engine.uses_rfm
        if not wanted or at is None or (last_run is not None and last_run >= at):
            return None
        return at

    def visit(self, engine: Engine, state: UserState, run: int, until: int) -> list[Action] | None:
        if engine.watch is not None:
            engine.watch.prepare(state)
        elif state.segment_defs:  # no segment watched any more: drop the memberships
            state.segments.clear()
            state.segment_defs = ""
        return engine.advance(state, until)
