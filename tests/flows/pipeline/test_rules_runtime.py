"""The rules runtime on a real Redis: a pushed version compiles off the processing path."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from bench.core import rules_text
from engine.journeys import Engine
from engine.rules.loader import load_rules
from flows.pipeline.rules_runtime import RulesRuntime
from flows.stores.rules import RulesStore, RulesWatcher

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
CART = (EXAMPLES / "abandoned_cart.yaml").read_text()
WELCOME = (EXAMPLES / "welcome_series.yaml").read_text()
BROKEN = "version: 1\njourneys:\n  - id: x\n    trigger: {event: add_to_crt}\n    steps: [exit]\n"


@pytest.fixture(autouse=True)
def plain_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TETIK_RULES_SECRET", raising=False)


@pytest.fixture
def store(redis_client: redis.Redis, unique: str) -> RulesStore:
    return RulesStore(redis_client, unique)


def runtime_on(store: RulesStore, text: str, reports: list[str]) -> RulesRuntime:
    """A runtime running ``text`` (pushed as the active version), polling at every call."""
    store.push(text, "rules.yaml", who="test")
    watcher = RulesWatcher(store, interval_ms=0)
    watcher.poll()
    return RulesRuntime(Engine(load_rules(text, "rules.yaml")), watcher, report=reports.append)


def short(text: str) -> str:
    return load_rules(text, "rules.yaml").source_hash[:12]


def until_switched(runtime: RulesRuntime, switches: int, timeout: float = 20.0) -> list[float]:
    """Call ``current()`` until ``switches`` switches happened; the seconds each call took."""
    took = []
    deadline = time.monotonic() + timeout
    while runtime.switches < switches:
        assert time.monotonic() < deadline, "the new version never became current"
        started = time.perf_counter()
        runtime.current()
        took.append(time.perf_counter() - started)
        time.sleep(0.002)
    return took


def test_a_pushed_version_is_switched_to_after_it_compiled(store: RulesStore) -> None:
    reports: list[str] = []
    runtime = runtime_on(store, CART, reports)
    old = runtime.current()
    pushed = store.push(WELCOME, "welcome.yaml", who="test")
    # the call that sees the push starts the compile and returns the running engine
    assert runtime.current() is old
    until_switched(runtime, 1)
    assert runtime.current().version == short(WELCOME)
    assert runtime.current().retired[old.version] is old  # enrollments in flight keep theirs
    assert reports == [f"switched to rules version {pushed.version} ({pushed.hash})"]
    assert not runtime.compiling


def test_current_does_not_block_while_a_big_version_compiles(store: RulesStore) -> None:
    runtime = runtime_on(store, CART, [])
    big = rules_text(3000)
    store.push(big, "big.yaml", who="test")
    started = time.monotonic()
    took = until_switched(runtime, 1)
    compiling = time.monotonic() - started
    assert runtime.engine.version == short(big)
    assert len(runtime.engine.rules.journeys) == 3000
    assert compiling > 0.3  # a compile long enough for the check below to mean something
    assert max(took) < compiling / 4, (max(took), compiling)  # blocking would take it all
    assert len(took) > 10  # many batches ran on the old version meanwhile


def test_a_version_that_does_not_compile_is_reported_once_and_skipped(store: RulesStore) -> None:
    reports: list[str] = []
    runtime = runtime_on(store, CART, reports)
    running = runtime.current()
    tampered = store.push(WELCOME, "welcome.yaml", who="test")
    store.client.hset(store.text_key, str(tampered.version), BROKEN)  # a tampered store
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        assert runtime.current() is running
        time.sleep(0.005)
    assert not runtime.compiling
    (line,) = reports
    assert line == (
        f"rules version {tampered.version} does not compile; staying on {running.version}: "
        "welcome.yaml:4:22: unknown event type 'add_to_crt' (did you mean 'add_to_cart'?)"
    )
    # the skipped version does not wedge the runtime: the next push is switched to
    store.push(WELCOME + "\n# v3\n", "welcome.yaml", who="test")
    until_switched(runtime, 1)
    assert runtime.engine.version == short(WELCOME + "\n# v3\n")


def test_reactivating_the_running_version_cancels_a_pending_switch(store: RulesStore) -> None:
    runtime = runtime_on(store, CART, [])
    running = runtime.current()
    store.push(rules_text(2000), "big.yaml", who="test")
    assert runtime.current() is running  # compiling the big version now
    store.push(CART, "rules.yaml", who="test")  # the running text again, as a new version
    deadline = time.monotonic() + 20
    while runtime.compiling:
        assert time.monotonic() < deadline
        assert runtime.current() is running
        time.sleep(0.005)
    for _ in range(20):
        assert runtime.current() is running
    assert runtime.switches == 0


def test_each_version_knows_when_it_took_over(store: RulesStore) -> None:
    """The moment a version became active reaches its engine (broadcasts past it are not
    sent late), at start and after a push or a rollback."""
    store.push(CART, "cart.yaml", who="test")
    runtime = RulesRuntime.from_store(store, interval_ms=0)
    first = store.history()[-1]
    assert runtime.activated_at == first.at
    time.sleep(0.01)
    store.push(WELCOME, "welcome.yaml", who="test")
    until_switched(runtime, 1)
    pushed = store.history()[-1]
    assert pushed.at > first.at
    assert runtime.activated_at == pushed.at == runtime.current().activated_at
    time.sleep(0.01)
    store.rollback(who="test")
    until_switched(runtime, 2)
    assert runtime.activated_at == store.history()[-1].at > pushed.at
