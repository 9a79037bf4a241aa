"""Redis that loses its data under a running deployment: refused, then recovered without duplicates.

The issue this answers: after a Redis restart without persistence the engine
refused to start until the recovery folder was deleted by hand, and then sent
109 of 615 actions twice. Now the start is refused with one line, and
``--recover-redis`` rebuilds the action ledger from the actions topic and
resumes from the snapshots: every action once, compared with replay.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.servers.embedded import start_redis
from flows.servers.process import EmbeddedServer
from tests.flows.live import RULES, Live, expected_actions, live, produce, tally, wait_for_actions
from tests.flows.test_run import now_ms, shoppers

pytestmark = pytest.mark.integration


@pytest.fixture
def lost(
    kafka_bootstrap: str, unique: str, tmp_path: Path
) -> Iterator[tuple[Live, EmbeddedServer]]:
    server, url = start_redis()  # no persistence: a restart comes back empty
    try:
        with live(url, kafka_bootstrap, unique, tmp_path) as session:
            yield session, server
    finally:
        server.stop()


def test_a_redis_that_lost_its_data_is_refused_then_recovered_exactly_once(
    lost: tuple[Live, EmbeddedServer],
) -> None:
    session, server = lost
    rules = str(session.rules_file())
    # Snapshots every 30 s: the kill lands before the first one, so everything
    # the first run emitted is processed again after the restart.
    first = session.start("--rules", rules, "--snapshot-interval", "30")
    before = shoppers(now_ms() + 500, 24)
    produce(session.bootstrap, session.events, before)
    emitted_before = wait_for_actions(
        session.bootstrap, session.actions, len(expected_actions(RULES, before)) // 2, settle=0
    )
    assert emitted_before
    first.kill()  # actions newer than the last snapshot are in the topic
    first.wait()
    server.restart()  # Redis comes back empty: states, timers, outboxes, rules, marker gone

    refused = session.start("--rules", rules, log="refused.log")
    assert refused.wait(timeout=60) == 2
    said = session.log("refused.log")
    assert "Redis lost this deployment's data" in said
    assert "--recover-redis" in said
    assert "Traceback" not in said

    recovered = session.start("--rules", rules, "--recover-redis", log="recovered.log")
    after = shoppers(now_ms() + 1500, 10, first=100)
    produce(session.bootstrap, session.events, after)
    expected = expected_actions(RULES, sorted([*before, *after], key=lambda d: d["ts"]))
    emitted = wait_for_actions(session.bootstrap, session.actions, len(expected), timeout=40)
    time.sleep(0.5)
    assert session.stop(recovered) == 0, session.log("recovered.log")
    assert "sent action(s) remembered" in session.log("recovered.log")
    counts = tally(expected, emitted)
    print(f"redis lost and recovered: {counts}")
    assert counts.duplicates == counts.missing == counts.unexpected == 0, counts
