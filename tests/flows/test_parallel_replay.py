"""flows.jobs.parallel_replay: a replay on several processes equals one replay, always."""

from __future__ import annotations

import zlib
from pathlib import Path

import msgspec
import orjson
import pytest

from bench.journey_report import RULES as EXPERIMENTS
from clickstream.generator import GeneratorConfig, generate_records
from engine.actions import Action
from engine.journeys import Engine
from engine.measurement import tally
from engine.replay import ReplayStats
from engine.rules.loader import load_rules, load_rules_file
from flows.jobs import parallel_replay
from flows.jobs.journey_report import replay_rows
from flows.jobs.parallel_replay import replay_parallel
from tests.engine.faulty import FaultyEngine
from tests.engine.test_replay_faults import RULES as FAULT_RULES
from tests.engine.test_replay_faults import line
from tests.tetik_cli import tetik

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
START = 1_714_557_600_000


def log(events: int = 6_000, *, seed: int = 7, invalid: float = 0.02) -> list[bytes]:
    """A generated clickstream: logins linking anonymous sessions, bad lines among them."""
    cfg = GeneratorConfig(
        users=events // 12,
        events=events,
        seed=seed,
        start_ms=START,
        span_ms=6 * 3_600_000,
        invalid_ratio=invalid,
    )
    return [value for _, value in generate_records(cfg)]


def run(
    engine: Engine, lines: list[bytes], workers: int, **kwargs: object
) -> tuple[list[Action], ReplayStats, object, list[tuple[int, str]]]:
    engine.measures = []
    stats, errors = ReplayStats(), []
    actions = replay_parallel(
        engine,
        lines,
        workers=workers,
        stats=stats,
        min_events=0,
        on_error=lambda n, reason: errors.append((n, reason)),
        **kwargs,  # type: ignore[arg-type]
    )
    return actions, stats, tally(actions, engine.measures), errors


@pytest.mark.parametrize("drain", [True, False])
def test_experiments_with_identity_links_give_the_same_actions_measures_and_counts(
    drain: bool,
) -> None:
    lines = log()
    one = run(Engine(load_rules(EXPERIMENTS, "rules.yaml")), lines, 1, drain=drain)
    # What the log exercises: identity links, bad lines, sends.
    assert one[1].merged > 0
    assert one[1].invalid > 0
    assert len(one[0]) > 100
    assert one[2]  # measures were counted
    for workers in (2, 3):
        assert (
            run(Engine(load_rules(EXPERIMENTS, "rules.yaml")), lines, workers, drain=drain) == one
        )


def test_a_clock_stopped_by_until_is_the_same_in_every_part() -> None:
    lines = log()
    until = START + 3 * 3_600_000
    one = run(Engine(load_rules(EXPERIMENTS, "rules.yaml")), lines, 1, until=until)
    two = run(Engine(load_rules(EXPERIMENTS, "rules.yaml")), lines, 2, until=until)
    assert two == one
    assert two[1].clock == until


@pytest.mark.parametrize("example", sorted(p.stem for p in EXAMPLES.glob("*.yaml")))
def test_every_example_replays_the_same_on_three_processes(example: str) -> None:
    lines = (EXAMPLES / f"{example}.events.jsonl").read_bytes().splitlines()
    rules = load_rules_file(EXAMPLES / f"{example}.yaml")
    one = run(Engine(rules), lines, 1, drain=True)
    assert run(Engine(rules), lines, 3, drain=True)[:3] == one[:3]


def test_the_examples_rules_on_a_long_log_replay_the_same() -> None:
    lines = log(9_000, seed=3, invalid=0.0)
    for example in ("abandoned_cart", "login_merge", "welcome_series", "browse_abandonment"):
        rules = load_rules_file(EXAMPLES / f"{example}.yaml")
        one = run(Engine(rules), lines, 1, drain=True)
        assert one[0], example  # the journey sends on this log
        assert run(Engine(rules), lines, 2, drain=True) == one, example


def test_the_work_is_shared_between_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    forked: list[int] = []
    real = parallel_replay._run_parts

    def counting(engine: Engine, parts: list, drain: bool, until: int | None) -> object:  # type: ignore[type-arg]
        forked.append(len(parts))
        return real(engine, parts, drain, until)

    monkeypatch.setattr(parallel_replay, "_run_parts", counting)
    run(Engine(load_rules(EXPERIMENTS, "rules.yaml")), log(2_000), 3)
    assert forked == [3]


def test_a_log_with_product_updates_replays_in_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parallel_replay, "_run_parts", _never)
    rules = load_rules_file(EXAMPLES / "favorite_on_sale.yaml")
    lines = (EXAMPLES / "favorite_on_sale.events.jsonl").read_bytes().splitlines()
    assert run(Engine(rules), lines, 4, drain=True)[0]


def _never(*_args: object) -> None:
    raise AssertionError("the parts of a log whose users are joined were run apart")


def test_a_poison_event_is_left_out_as_one_replay_leaves_it_out() -> None:
    # The rules and events of replay's own poison tests (tests/engine/test_replay_faults.py).
    lines = [line(f"e{i}", "signup", f"u{i}", START + i) for i in range(40)]
    lines[17] = line("poison-17", "signup", "u17", START + 17)
    one = run(FaultyEngine(load_rules(FAULT_RULES, "rules.yaml")), lines, 1, drain=True)
    three = run(FaultyEngine(load_rules(FAULT_RULES, "rules.yaml")), lines, 3, drain=True)
    assert three == one
    assert one[1].failed == ["poison-17: OverflowError: injected"]
    assert len(one[0]) == 39


def test_tetik_report_on_two_processes_prints_what_one_process_finds(tmp_path: Path) -> None:
    rules, events = tmp_path / "rules.yaml", tmp_path / "events.jsonl"
    rules.write_text(EXPERIMENTS)
    events.write_bytes(b"\n".join(log(parallel_replay.MIN_EVENTS, invalid=0.0)) + b"\n")
    two = tetik(
        "report", "--rules", str(rules), "--events", str(events), "--json", "--workers", "2"
    )
    assert two.returncode == 0, two.stderr
    assert "applied in 2 processes" in two.stderr
    one = replay_rows(str(rules), str(events), None, workers=1)
    assert orjson.loads(two.stdout) == orjson.loads(msgspec.json.encode(one))
    assert len(one or ()) > 6


CART = """\
version: 1
consent: {push: opt_out}
journeys:
  - id: cart
    trigger: add_to_cart
    exit: [purchase]
    steps:
      - wait: 30m
      - send: push
"""


def test_a_late_event_meets_the_timers_the_whole_logs_clock_has_passed() -> None:
    def at_minute(n: int, kind: str, user: str, minute: int) -> bytes:
        item = {"product_id": "p1", "price": 10.0} if kind != "purchase" else {}
        body = {"event_id": f"e{n}", "type": kind, "ts": START + minute * 60_000, "user_id": user}
        return orjson.dumps({**body, **item})

    # Shoppers whose part is never a's (engine.partition: crc32 of the id), so a's part
    # alone never sees the clock at 40 minutes.
    others = [
        f"b{i}" for i in range(200) if all(_part(f"b{i}", n) != _part("a", n) for n in (2, 3, 4))
    ]
    lines = [
        at_minute(1, "add_to_cart", "a", 0),
        *[at_minute(10 + i, "view_product", b, 40) for i, b in enumerate(others[:12])],
        at_minute(2, "purchase", "a", 10),  # late: the clock is at 40 min, a's push was due at 30
    ]
    one = run(Engine(load_rules(CART, "rules.yaml")), lines, 1, drain=True)
    assert [(a.user_id, a.status) for a in one[0]] == [("a", "sent")]  # fired before the purchase
    for workers in (2, 3, 4):
        assert run(Engine(load_rules(CART, "rules.yaml")), lines, workers, drain=True) == one


def _part(user: str, parts: int) -> int:
    return zlib.crc32(user.encode()) % parts
