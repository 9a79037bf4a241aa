"""The live clock: event stamps and the watermark that holds timers back."""

from __future__ import annotations

import pytest

from flows.pipeline.watermark import SharedProgress, Watermark
from flows.retry import RedisClient
from flows.stores.keys import Keys


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def test_an_event_is_applied_at_its_own_time_never_backwards_never_ahead() -> None:
    clock = Clock(10_000)
    mark = Watermark(["0-e"], clock=clock)
    assert mark.stamp("0-e", 9_000) == 9_000
    assert mark.stamp("0-e", 8_000) == 9_000  # the partition's time does not go back
    assert mark.stamp("0-e", 50_000) == 10_000  # a clock running ahead is capped by ours


def test_no_timer_fires_before_every_partition_has_reported() -> None:
    clock = Clock(10_000)
    mark = Watermark(["0-e", "1-e"], clock=clock, lateness_ms=200)
    mark.polled("0-e", 0)
    assert mark.value() == 0
    mark.polled("1-e", 0)
    assert mark.value() == 9_800


def test_a_partition_behind_holds_the_watermark_at_its_event_time() -> None:
    clock = Clock(100_000)
    mark = Watermark(["0-e", "1-e"], clock=clock, lateness_ms=200)
    mark.polled("0-e", 0)
    mark.polled("1-e", 500)  # a backlog
    mark.stamp("1-e", 40_000)
    assert mark.value() == 40_000
    mark.applied([("1-e", 40_000)])
    mark.polled("1-e", 0)  # caught up
    assert mark.value() == 100_000 - 200


def test_an_empty_poll_short_of_the_end_is_not_caught_up() -> None:
    clock = Clock(100_000)
    mark = Watermark(["0-e"], clock=clock, lateness_ms=200, idle_timeout_ms=5_000)
    mark.polled("0-e", 0, at_end=False)  # a slow broker: no fetch response yet
    assert mark.value() == 0  # held at the partition's clock (none read yet)
    mark.polled("0-e", 3, at_end=False)
    mark.stamp("0-e", 60_000)
    mark.applied([("0-e", 60_000)])
    mark.polled("0-e", 0, at_end=False)
    assert mark.value() == 60_000
    mark.polled("0-e", 0, at_end=True)  # the position reached the high watermark
    assert mark.value() == 100_000 - 200


def test_a_partition_silent_for_the_idle_timeout_stops_holding_timers_back() -> None:
    clock = Clock(100_000)
    mark = Watermark(["0-e"], clock=clock, lateness_ms=200, idle_timeout_ms=5_000)
    mark.polled("0-e", 2, at_end=False)
    mark.stamp("0-e", 60_000)
    mark.applied([("0-e", 60_000)])
    clock.now += 4_999
    mark.polled("0-e", 0, at_end=False)
    assert mark.value() == 60_000
    clock.now += 1
    mark.polled("0-e", 0, at_end=False)  # 5 s without a message: idle, as Flink's
    assert mark.value() == clock.now - 200
    mark.polled("0-e", 1, at_end=False)  # a message again: behind again
    assert mark.value() == 60_000


def test_an_event_stamped_but_not_applied_holds_its_partition_back() -> None:
    """A batch is stamped as it leaves the source; until its events are applied,
    no timer may fire past them (a reminder ahead of a purchase already read)."""
    clock = Clock(100_000)
    mark = Watermark(["0-e", "1-e"], clock=clock, lateness_ms=200)
    mark.polled("0-e", 0)
    mark.polled("1-e", 3)
    for ts in (59_000, 59_800, 99_500):  # one batch: a purchase among later events
        mark.stamp("1-e", ts)
    mark.polled("1-e", 0)  # the source already stands at the end
    assert mark.value() == 59_000  # the first unapplied event holds the partition
    mark.applied([("1-e", 59_800), ("1-e", 59_000)])  # applied in any order
    assert mark.value() == 99_500
    mark.applied([("1-e", 99_500)])
    assert mark.value() == 100_000 - 200


def test_a_restored_clock_comes_back_and_never_runs_backwards() -> None:
    clock = Clock(100_000)
    mark = Watermark(["0-e", "1-e"], clock=clock)
    assert mark.reached("0-e") == 0
    mark.restore("0-e", 70_000)
    mark.restore("1-e", 80_000)
    assert mark.value() == 70_000  # no partition polled yet, both restored
    assert mark.stamp("0-e", 50_000) == 70_000  # an older event is applied at the clock
    mark.restore("0-e", 10_000)
    assert mark.reached("0-e") == 70_000


@pytest.mark.integration
def test_processes_share_progress_and_ignore_stale_reports(
    store_client: RedisClient, unique: str
) -> None:
    clock = Clock(100_000)
    shared = SharedProgress(store_client, Keys(unique).watermark, stale_ms=3000)  # type: ignore[arg-type]
    one = Watermark(["0-e", "1-e"], clock=clock, shared=shared, share_ms=0)
    two = Watermark(["0-e", "1-e"], clock=clock, shared=shared, share_ms=0)
    one.polled("0-e", 10)
    one.stamp("0-e", 70_000)
    two.polled("1-e", 0)
    assert one.value() == 70_000  # hears that partition 1 is caught up
    assert two.value() == 70_000  # hears that partition 0 is behind
    clock.now += 5_000  # process one stops reporting: its report goes stale
    two.polled("1-e", 0)
    assert two.value() == 0
