"""``tetik run`` SIGKILLed in the middle of a product update's fan-out: each shopper once.

3,000 shoppers viewed a product; its price drops; the engine is killed while the
fan-out's derived events are being applied, restarted, and killed again while it
catches up. Every action must come once, and together they must be replay's.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from flows.stores.keys import Keys
from flows.stores.states import read_stats
from tests.flows.live import Live, expected_actions, live, produce, tally, wait_for_actions

# A kill scenario of a minute: `make chaos-short` runs it (in .ci/run), not `make test`.
pytestmark = [pytest.mark.integration, pytest.mark.scenario]

RULES = """\
version: 1
consent: {email: opt_out}
journeys:
  - id: drop
    trigger: price_drop
    key: product_id
    steps:
      - send: email
"""  # no template: a render's wall-time guard under a loaded machine is not under test
SHOPPERS = 3_000


@pytest.fixture
def session(redis_url: str, kafka_bootstrap: str, unique: str, tmp_path: Path) -> Iterator[Live]:
    with live(redis_url, kafka_bootstrap, unique, tmp_path) as found:
        yield found


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def stats(session: Live) -> dict[str, int]:
    return read_stats(redis.Redis.from_url(session.redis_url), Keys(session.name))


def wait_until(check: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_kill_during_a_fan_out_sends_each_shopper_once(session: Live) -> None:
    start = now_ms()
    catalog = {"event_id": "c1", "type": "product_update", "ts": start, "product_id": "p1",
               "price": 100.0, "name": "Shoe"}  # fmt: skip
    views = [
        {"event_id": f"v{n}", "type": "view_product", "ts": start + 1 + n // 100,
         "user_id": f"s{n:05d}", "product_id": "p1", "price": 100.0}
        for n in range(SHOPPERS)
    ]  # fmt: skip
    first = session.start("--rules", str(session.rules_file(RULES)))
    produce(session.bootstrap, session.events, [catalog, *views], paced=False)
    wait_until(lambda: stats(session).get("applied", 0) >= SHOPPERS)
    drop = {"event_id": "c2", "type": "product_update", "ts": now_ms(), "product_id": "p1",
            "price": 70.0}  # fmt: skip
    produce(session.bootstrap, session.events, [drop], paced=False)
    wait_until(lambda: stats(session).get("catalog.price_drop", 0) >= 300)  # under way
    first.kill()
    first.wait()
    halfway = stats(session).get("catalog.price_drop", 0)
    assert halfway < SHOPPERS, "the fan-out ended before the kill: nothing was tested"
    second = session.start()
    time.sleep(3.0)  # catching up (startup takes about 2 s)
    second.kill()
    second.wait()
    third = session.start()
    expected = expected_actions(RULES, [catalog, *views, drop])
    assert len(expected) == SHOPPERS
    emitted = wait_for_actions(session.bootstrap, session.actions, len(expected), timeout=90)
    assert session.stop(third) == 0, session.log()
    counts = tally(expected, emitted)
    print(f"kill during a fan-out (killed at {halfway} derived): {counts}")
    assert counts.duplicates == counts.missing == counts.unexpected == 0, counts
    assert {a["status"] for a in emitted} == {"sent"}
