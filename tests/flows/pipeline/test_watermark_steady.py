"""A caught-up partition with steady traffic lets timers fire as soon as its events pass them."""

from __future__ import annotations

from flows.clock import TestClock
from flows.pipeline.watermark import Watermark


def test_a_caught_up_partition_holds_timers_only_as_long_as_it_must() -> None:
    clock = TestClock(1_000_000)
    mark = Watermark(["0-e"], lateness_ms=200, clock=clock, hold_unapplied=False)
    mark.stamp("0-e", 999_995)  # an event 5 ms old, then the partition's end
    mark.polled("0-e", 1, at_end=True)
    mark.polled("0-e", 0, at_end=True)
    assert mark.value() == 999_995  # not 999_800: nothing older can come from it
    clock.advance(1_000)
    assert mark.value() == 1_000_800  # quiet since: the wall clock minus the lateness


def test_a_partition_that_is_behind_holds_timers_at_what_it_read() -> None:
    clock = TestClock(1_000_000)
    mark = Watermark(["0-e"], lateness_ms=200, clock=clock, hold_unapplied=False)
    mark.stamp("0-e", 900_000)
    mark.polled("0-e", 1, at_end=False)
    assert mark.value() == 900_000


def test_applied_events_leave_nothing_behind() -> None:
    """Each stamped event is held until applied, then forgotten (no growth per event)."""
    mark = Watermark(["0-t"], clock=lambda: 10**13)
    for i in range(10_000):
        clock = mark.stamp("0-t", 1_700_000_000_000 + i)
        mark.applied([("0-t", clock)])
    progress = mark._mine["0-t"]
    assert (len(progress.inflight), len(progress.done)) == (0, 0)
