"""The live clock: event stamps and the watermark that holds timers back."""

from __future__ import annotations

import pytest
import redis

from flows.watermark import SharedProgress, Watermark


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
    mark = Watermark(["0-e", "1-e"], clock=clock)
    mark.polled("0-e", 0)
    mark.polled("1-e", 500)  # a backlog
    mark.stamp("1-e", 40_000)
    assert mark.value() == 40_000
    mark.polled("1-e", 0)  # caught up
    assert mark.value() == 100_000 - 200


@pytest.mark.integration
def test_processes_share_progress_and_ignore_stale_reports(
    redis_client: redis.Redis, unique: str
) -> None:
    clock = Clock(100_000)
    shared = SharedProgress(redis_client, f"{unique}:wm", stale_ms=3000)
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
