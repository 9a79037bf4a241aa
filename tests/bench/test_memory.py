"""``tetik bench memory`` measures what it says, on the real servers.

One tiny size (300 users) goes through :func:`bench.memory.measure_size`: the
states written to Redis cost a plausible number of bytes per user, and the
live ``tetik run`` child grows its resident set while it holds the users,
having processed every event it was sent.
"""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from bench.memory import EVENTS_PER_USER, SEED, measure_size, stamped
from clickstream.generator import GeneratorConfig, generate_records
from flows.servers.embedded import Endpoints

USERS = 300


def test_stamped_sets_ts_to_the_clock_and_collects_keys() -> None:
    cfg = GeneratorConfig(users=20, events=50, seed=1)
    keys: set[bytes | None] = set()
    before = time.time_ns() // 1_000_000
    out = list(stamped(generate_records(cfg), keys))
    after = time.time_ns() // 1_000_000
    original = list(generate_records(cfg))
    assert [k for k, _ in out] == [k for k, _ in original]
    assert keys == {k for k, _ in original}
    for (_, value), (_, old) in zip(out, original, strict=True):
        doc, old_doc = orjson.loads(value), orjson.loads(old)
        assert before <= doc.pop("ts") <= after
        old_doc.pop("ts")
        assert doc == old_doc


@pytest.mark.integration
def test_measure_size_on_the_real_servers(
    redis_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    endpoints = Endpoints(redis_url=redis_url, kafka_bootstrap=kafka_bootstrap)
    row = measure_size(endpoints, USERS, tmp_path)

    cfg = GeneratorConfig(users=USERS, events=USERS * EVENTS_PER_USER, seed=SEED)
    identities = {key for key, _ in generate_records(cfg)}
    assert row["size"] == USERS
    assert row["rss_users"] == len(identities)
    assert row["rss_events"] == USERS * EVENTS_PER_USER
    assert row["users"] > USERS / 2  # distinct identities of the Redis figure's run
    assert 100 <= row["used_memory_delta_per_user"] <= 4096
    assert 100 <= row["memory_usage_mean"] <= 4096
    assert 0 < row["rss_idle_mib"] < row["rss_mib"] <= row["rss_peak_mib"]
    assert row["rss_per_user_bytes"] > 0
    assert row["rss_per_user_bytes"] == pytest.approx(
        (row["rss_mib"] - row["rss_idle_mib"]) * 1024 * 1024 / row["rss_users"]
    )
