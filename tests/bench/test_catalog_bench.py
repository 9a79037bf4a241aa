"""``tetik bench catalog`` (issue 14) at tiny sizes: the figures' structure, and that
each measures what it says (every shopper fanned out to, every pair in Redis, every
lookup found), never how fast."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.catalog_fanout import bench_catalog_fanout
from bench.catalog_interest import TAOBAO, Scenario, entries, interest_memory, split
from bench.catalog_product import REPEATS, bench_catalog_product, catalog_rules
from bench.core import rules_text
from bench.report import write_results
from engine.journeys import Engine
from engine.rules.loader import load_rules
from flows.servers.embedded import Endpoints
from flows.stores.catalog import unpack_interest
from flows.stores.keys import shard_of

FANOUT_SHOPPERS = 300


@pytest.fixture(scope="module")
def fanout(endpoints: Endpoints) -> dict[str, Any]:
    """One tiny live run for the module, on the session's servers."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TETIK_REDIS_URL", endpoints.redis_url)
        patch.setenv("TETIK_KAFKA_BOOTSTRAP", endpoints.kafka_bootstrap)
        return bench_catalog_fanout(shoppers=FANOUT_SHOPPERS, rate=200, baseline_s=1.5, warm_s=0.5)


@pytest.mark.integration
def test_the_price_drop_reaches_every_interested_shopper_live(fanout: dict[str, Any]) -> None:
    assert fanout["complete"] is True
    assert fanout["applied"] == FANOUT_SHOPPERS
    assert fanout["counters"]["catalog.price_drop"] == FANOUT_SHOPPERS
    assert fanout["drop_actions"] == FANOUT_SHOPPERS  # one e-mail each, all on Kafka
    assert 0 <= fanout["taken_after_s"] <= fanout["seconds_from_sent"]
    assert fanout["seconds"] == pytest.approx(
        fanout["seconds_from_sent"] - fanout["taken_after_s"], abs=0.002
    )
    # the ordinary stream produced latency samples before and after the fan-out: the baseline
    lat = fanout["latency_ms"]
    baseline = lat["baseline"]
    assert lat["before"]["count"] > 0
    assert lat["after"]["count"] > 0
    assert baseline["count"] == lat["before"]["count"] + lat["after"]["count"]
    assert baseline["p50"] <= baseline["p99"]
    assert set(fanout["latency_ms"]["fanout"]) == set(baseline)
    assert fanout["drained"] is True
    assert fanout["broker"]["name"] == "external"  # the session's servers, from the env


@pytest.mark.integration
def test_the_interest_index_is_measured_pair_by_pair(redis_url: str) -> None:
    chosen = [Scenario("month", 400, 0.055)]
    if TAOBAO.exists():
        chosen.append(Scenario("deep", 40, 4.2, from_taobao=True))
    result = interest_memory(redis_url, chosen)
    assert result["bytes_per_pair"] == result["scenarios"][0]["memory_usage_bytes_per_pair"]
    for found, scenario in zip(result["scenarios"], chosen, strict=True):
        index = entries(scenario)
        assert found["pairs"] == sum(len(fields) for fields in index.values())
        assert found["keys"] == len(index)
        # Redis holds at least the bytes it was given
        assert found["memory_usage_bytes_per_pair"] > found["payload_bytes_per_pair"] > 10
        split = found["split"]
        assert sum(e["pairs"] for e in split["encodings"].values()) == found["pairs"]
        assert sum(s["pairs"] for s in split["sizes"]) == found["pairs"]
        assert sum(e["bytes"] for e in split["encodings"].values()) == pytest.approx(
            found["memory_usage_bytes_per_pair"] * found["pairs"]
        )


def test_the_split_separates_what_a_key_costs_from_what_an_entry_costs() -> None:
    listpacks = [(72 + 29 * n, n, "listpack") for n in (1, 3, 10, 40)]
    found = split([*listpacks, (60_000, 1_000, "hashtable")])
    assert found["encodings"]["listpack"]["per_key_bytes"] == 72
    assert found["encodings"]["listpack"]["per_entry_bytes"] == 29
    assert found["encodings"]["hashtable"]["per_key_bytes"] is None
    assert found["encodings"]["hashtable"]["per_entry_bytes"] == 60
    by_size = {s["entries"]: s for s in found["sizes"]}
    assert by_size["1"]["bytes_per_pair"] == 101
    assert by_size["2-4"]["pairs"] == 3
    assert by_size["513-"]["bytes_per_pair"] == 60


def test_the_generated_index_is_laid_out_as_the_shards_write_it() -> None:
    index = entries(Scenario("month", 2_000, 0.055))
    shoppers: set[str] = set()
    for (shard, pid), fields in index.items():
        assert pid.startswith("p")
        for identity, packed in fields.items():
            assert shard_of(identity, 8) == shard
            interest = unpack_interest(packed)
            assert interest.via in ("cart", "favorite", "view")
            shoppers.add(identity)
    pairs = sum(len(fields) for fields in index.values())
    # calibrated: 9.4 distinct products per shopper on average (fewer where a draw
    # exceeds the 110 products of so small a catalogue)
    assert 6 <= pairs / len(shoppers) <= 12
    per_product: dict[str, int] = {}
    for (_, pid), fields in index.items():
        per_product[pid] = per_product.get(pid, 0) + len(fields)
    counts = sorted(per_product.values())
    assert counts[-1] >= 4 * counts[0]  # Zipf: the most popular products have many more


def test_product_cost_runs_the_same_journeys_with_the_catalog_read(
    capsys: pytest.CaptureFixture[str],
) -> None:
    plain = Engine(load_rules(rules_text(10), "plain"))
    catalog = Engine(load_rules(catalog_rules(10), "catalog"))
    assert not plain.reads_products
    assert not plain.reads_together
    assert catalog.reads_products
    assert catalog.reads_together
    assert [j.id for j in plain.rules.journeys] == [j.id for j in catalog.rules.journeys]
    result = bench_catalog_product(events=3_000, journeys=(10,), instructions=0)
    row = result["journeys"]["10"]
    assert row["product_calls"] > 0.5 * result["events"]  # product() on most events
    assert row["product_found"] == row["product_calls"]  # the catalog knows every product
    assert row["actions_plain"] == row["actions_catalog"] > 0  # like with like
    assert result["ratio"] == row["ratio"] > 0
    assert row["ratio_cpu"] > 0
    assert len(row["ratio_runs"]) == REPEATS  # each repeat's own ratio, for the spread
    assert all(r > 0 for r in row["ratio_runs"])
    shown = capsys.readouterr().out
    assert "| 10 |" in shown
    assert result["instructions"] is None
    assert "Instructions (callgrind): not counted." in shown


def test_an_instruction_counting_process_runs_natively() -> None:
    """What callgrind runs three times (``bench.catalog_product MODE EVENTS``), here
    without valgrind: it sets up, replays with the catalog rules and exits 0."""
    argv = [sys.executable, "-m", "bench.catalog_product", "catalog", "500"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "generating 500 events" in done.stderr


@pytest.mark.integration
def test_the_report_lists_the_catalog_goals(fanout: dict[str, Any], tmp_path: Path) -> None:
    product = bench_catalog_product(events=2_000, journeys=(10,), instructions=0)
    interest = {"scenarios": [], "bytes_per_pair": 40.0, "goal_bytes": 120}
    results = {"catalog": {"fanout": fanout, "interest": interest, "product": product}}
    paths = write_results(tmp_path, results, {"what": "catalog", "quick": True})
    shown = paths[1].read_text()
    assert "## Catalog (issue 14)" in shown
    assert "| interest index: Redis bytes per (shopper, product) pair" in shown
    assert "40.00 | indicative |" in shown  # a quick run gives no verdict
    assert "| met |" not in shown
    assert "every derived event is applied" in shown
    assert f"| shoppers interested | {FANOUT_SHOPPERS} |" in shown
