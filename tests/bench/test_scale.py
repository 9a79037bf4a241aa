"""``tetik bench scale`` measures what it says, on the real servers, at tiny sizes.

One run of the quick plan's shape (a warm-up, pending signups, more up to the
base, then a restart after kill -9) on a few hundred shoppers: every shopper
fed is pending in Redis, the outboxes are confirmed, the memory figures are
the arithmetic of what was read, the restarted engine applies the probe and
emits its action, and the actions topic holds each action once.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench.markdown import goals_table
from bench.report import write_results
from bench.scale import MIB, QUICK, ScalePlan, Signups, bench_scale, scale_tables
from flows.servers.embedded import Endpoints
from flows.settings import from_env

TINY = ScalePlan(
    warmup=100,
    first=40,
    pending=400,
    shoppers=1_000,
    restart=300,
    samples=50,
    lead=500,
    chunk=100,
    timeout_s=120,
    restart_timeout_s=60,
)


def test_signups_are_distinct_and_stamped_as_they_are_made() -> None:
    signups = Signups("run")
    before = time.time_ns() // 1_000_000
    records = signups.take(3) + signups.take(2)
    after = time.time_ns() // 1_000_000
    docs = [orjson.loads(value) for _, value in records]
    assert [key for key, _ in records] == [signups.identity(i).encode() for i in range(5)]
    assert [doc["user_id"] for doc in docs] == [signups.identity(i) for i in range(5)]
    assert len({doc["event_id"] for doc in docs}) == 5
    assert all(doc["type"] == "signup" and before <= doc["ts"] <= after for doc in docs)
    assert signups.count == 5


def test_the_quick_plan_is_the_full_one_with_fewer_shoppers() -> None:
    assert (QUICK.warmup, QUICK.first, QUICK.pending) == (16_000, 2_000, 30_000)
    # The warm-up outgrows the bounded shopper cache and the feed's lead.
    assert QUICK.warmup > from_env({}).cache_shoppers + QUICK.lead
    assert (QUICK.shoppers, QUICK.restart) == (100_000, 20_000)
    assert ScalePlan().shoppers == 1_000_000
    assert ScalePlan().restart == 100_000


@pytest.fixture(scope="module")
def scale(endpoints: Endpoints) -> dict[str, Any]:
    """One tiny run for the module (about 20 s), on the session's servers."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TETIK_REDIS_URL", endpoints.redis_url)
        patch.setenv("TETIK_KAFKA_BOOTSTRAP", endpoints.kafka_bootstrap)
        return bench_scale(plan=TINY)


@pytest.mark.integration
def test_every_shopper_fed_is_pending_in_redis(scale: dict[str, Any]) -> None:
    pending, base = scale["pending"], scale["base"]
    assert pending["shoppers_fed"] == TINY.warmup + TINY.pending
    assert pending["pending_in_redis"] == pending["shoppers_fed"]
    assert pending["pending_ok"]
    assert base["shoppers"] == TINY.shoppers
    assert base["pending_in_redis"] == TINY.shoppers
    assert base["pending_ok"]
    assert base["outbox_left"] == 0
    assert base["feeding"]["fed"] == TINY.shoppers - TINY.warmup - TINY.pending
    assert base["feeding"]["events_per_s"] > 0


@pytest.mark.integration
def test_memory_figures_are_what_was_read(scale: dict[str, Any]) -> None:
    pending, base = scale["pending"], scale["base"]
    assert 0 < pending["rss_idle_mib"] <= pending["rss_peak_mib"]
    assert pending["rss_mib"] <= pending["rss_peak_mib"] <= base["rss_peak_mib"]
    grown = (pending["rss_mib"] - pending["rss_idle_mib"]) * MIB
    assert pending["bytes_per_enrollment"] == pytest.approx(grown / TINY.pending)
    cold = (pending["rss_mib"] - pending["rss_first_mib"]) * MIB
    assert pending["cold_bytes_per_enrollment"] == pytest.approx(cold / TINY.pending)
    assert 0 < pending["rss_first_mib"] <= pending["rss_peak_mib"]
    after, before = base["redis_after"]["used_memory"], base["redis_before"]["used_memory"]
    assert base["redis_bytes_per_shopper"] == pytest.approx((after - before) / TINY.shoppers)
    # A state (msgpack, one enrollment) plus its timer and shopper index entries.
    assert 100 <= base["usage"]["state_usage_mean"] <= 4096
    assert 0 < base["usage"]["state_value_mean"] < base["usage"]["state_usage_mean"]
    assert base["usage"]["sampled_states"] == TINY.samples
    assert 10 <= base["index_bytes_per_shopper"] <= 1024


@pytest.mark.integration
def test_restart_after_kill_applies_the_probe_and_emits_each_action_once(
    scale: dict[str, Any],
) -> None:
    restart = scale["restart"]
    assert restart["shoppers"] == TINY.restart
    assert restart["pending_at_kill"] == TINY.restart
    assert restart["pending_ok"]
    assert 0 < restart["processing_s"] <= restart["action_s"] < TINY.restart_timeout_s
    assert restart["actions"] == restart["distinct"] == TINY.restart + 1
    assert restart["actions_ok"]
    lines = [line["line"] for line in restart["startup"]]
    assert any(line.startswith("tetik: running:") for line in lines)
    seconds = [line["s"] for line in restart["startup"]]
    assert seconds == sorted(seconds)


@pytest.mark.integration
def test_report_has_the_scale_goals_and_tables(scale: dict[str, Any], tmp_path: Path) -> None:
    paths = write_results(tmp_path, {"scale": scale}, {"what": "scale", "quick": True})
    text = paths[1].read_text()
    assert "## Scale (pending enrollments, one worker)" in text
    assert "indicative" in text
    assert "| restart: actions (distinct) = fed + probe | 301 (301) |" in text
    assert json.loads(paths[0].read_text())["results"]["scale"]["plan"]["restart"] == 300
    assert scale_tables(scale) in text


def _scale(per_enrollment: float, peak: float, per_shopper: float, restart: float) -> Any:
    return {
        "pending": {"bytes_per_enrollment": per_enrollment},
        "base": {"rss_peak_mib": peak, "redis_bytes_per_shopper": per_shopper},
        "restart": {"processing_s": restart},
    }


def test_scale_goals_met_and_missed() -> None:
    text = goals_table({"scale": _scale(541.0, 90.0, 746.0, 2.39)})
    lines = {line.split(" | ")[0].strip("| "): line for line in text.splitlines()}
    assert lines[
        "worker memory per pending enrollment (30k shoppers, 30-day waits, bytes)"
    ].endswith("| <= 256 | 541 | missed |")
    assert lines["1M shoppers with pending waits (quick: 100k): engine peak RSS (MiB)"].endswith(
        "| <= 1,024 | 90.00 | met |"
    )
    assert lines["1M shoppers with pending waits (quick: 100k): Redis bytes per shopper"].endswith(
        "| <= 2,048 | 746 | met |"
    )
    assert lines["restart after kill -9, 100k pending (quick: 20k): processing again (s)"].endswith(
        "| <= 10 s | 2.39 | met |"
    )


def test_an_engine_line_rewritten_in_place_is_one_cell_of_its_last_state() -> None:
    from bench.scale import _cell

    assert _cell("events 1 applied\revents 301 | sent 3\r") == "events 301 / sent 3"
    assert "\r" not in _cell("a\rb\rc")
