"""``tetik bench e2e`` end to end on the session's real servers, at a tiny load."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.e2e import SYSTEMS, Plan, bench_e2e, make_system
from bench.journey import RULES
from bench.report import write_results
from flows.servers.embedded import KAFKA_BOOTSTRAP_ENV, Endpoints
from flows.settings import from_env

TINY = Plan(
    step_s=1.0,
    first_rate=400,
    max_rate=400,
    warm_rate=200,
    warm_s=0.5,
    drain_s=30,
    users=2_000,
    restart_each_step=False,
    live_s=1.0,  # the settle before measuring: latency figures are not what these test
)


@pytest.fixture(scope="module")
def e2e(endpoints: Endpoints) -> dict:  # type: ignore[type-arg]
    """One tiny run for the module (about 20 s), on the session's servers."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TETIK_REDIS_URL", endpoints.redis_url)
        patch.setenv("TETIK_KAFKA_BOOTSTRAP", endpoints.kafka_bootstrap)
        return bench_e2e(plan=TINY)


@pytest.mark.integration
def test_each_system_processes_the_same_input(e2e: dict) -> None:  # type: ignore[type-arg]
    systems = e2e["systems"]
    assert list(systems) == list(SYSTEMS)
    for result in systems.values():
        (step,) = result["steps"]
        assert step["sent"] == 400
        assert not step["saturated"]
        assert 0.8 * 400 <= step["sustained_per_s"] <= 1.2 * 400
        assert step["drain_s"] is not None
        assert step["cpu_pct"]["system"] is not None
        half = max(TINY.warm_rate, step["sustained_per_s"] / 2)
        assert result["half_load"]["offered_per_s"] == pytest.approx(half)
    # One output per event for the passthrough; the same cart actions for the other two.
    assert systems["passthrough"]["steps"][0]["latency_ms"]["count"] == 400
    carts = [systems[n]["steps"][0]["latency_ms"]["count"] for n in ("tetik", "handwritten")]
    assert carts[0] == carts[1] > 0
    # The step's own enrollments' emails, each after the wait: counted once due, not cut off.
    fired = [systems[n]["steps"][0]["timer_lateness_ms"] for n in ("tetik", "handwritten")]
    assert fired[0]["count"] == fired[1]["count"] == carts[0]
    assert systems["passthrough"]["steps"][0]["timer_lateness_ms"]["count"] == 0


@pytest.mark.integration
def test_ratios_and_result_files(e2e: dict, endpoints: Endpoints, tmp_path: Path) -> None:  # type: ignore[type-arg]
    # The fixture's run had TETIK_KAFKA_BOOTSTRAP set: a broker of the user's, not one
    # the bench chose and started (tests/bench/test_broker.py has the other choices).
    bootstrap = endpoints.kafka_bootstrap
    assert e2e["broker"] == {"name": "external", "version": "", "bootstrap": bootstrap,
                             "why": KAFKA_BOOTSTRAP_ENV}  # fmt: skip
    ratios = e2e["ratios"]
    assert ratios["throughput_tetik_vs_passthrough"] is None  # nothing saturated at 400/s
    assert ratios["common_rate_per_s"] == 400
    assert ratios["p99_common_rate_tetik_vs_handwritten"] > 0
    paths = write_results(tmp_path, {"e2e": e2e}, {"what": "e2e"})
    assert [p.name for p in paths] == ["bench.json", "bench.md", "latency.png"]
    assert paths[2].read_bytes()[:4] == b"\x89PNG"
    assert "| tetik | >= " in paths[1].read_text()  # a lower bound: not saturated
    assert f"Broker: **external** at {bootstrap}" in paths[1].read_text()


def test_tetik_is_told_the_topic_layout_the_bench_creates_for_it(tmp_path: Path) -> None:
    """The bench creates tetik's topics before ``tetik run`` starts. Run's own set-up
    (Settings.topic_layout, from the environment the bench gives it) must ask for the
    same counts, or it runs on topics laid out otherwise than it was configured
    (it was: the bench made the actions topic with 1 partition, run's layout said 4)."""
    endpoints = Endpoints(redis_url="redis://127.0.0.1:1/0", kafka_bootstrap="127.0.0.1:1")
    system = make_system("tetik", endpoints, "layout", tmp_path)
    assert system.layout == from_env(system.env).topic_layout()
    assert system.layout[system.output] == 1  # bench.watch tails partition 0 of the output


def test_lateness_reaches_tetik_run_only_when_the_plan_sets_it(tmp_path: Path) -> None:
    endpoints = Endpoints(redis_url="redis://127.0.0.1:1/0", kafka_bootstrap="127.0.0.1:1")
    default = make_system("tetik", endpoints, "default", tmp_path)
    assert "--lateness-ms" not in default.argv
    late = make_system("tetik", endpoints, "late", tmp_path, run_args=("--lateness-ms", "20"))
    assert late.argv[-2:] == ["--lateness-ms", "20"]
    rules = late.argv[late.argv.index("--rules") + 1]
    assert Path(rules).read_text() == RULES
    other = make_system("tetik", endpoints, "other", tmp_path, rules="version: 1\n")
    assert Path(other.argv[other.argv.index("--rules") + 1]).read_text() == "version: 1\n"
