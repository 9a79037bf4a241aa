"""``tetik console`` in a real browser (issue 16 item 4): playwright-core (npm, in
tests/browser/) drives Debian's Chromium through tests/browser/console.mjs against the console
served on loopback over the session's Redis and Kafka: the login form, the journey graph with
counts, a rejected push with its inline FILE:LINE:COL error, a push that switches the version,
a backtest and a shopper. Screenshots land in the test's directory (``console-shots``).

Missing Chromium, node or ``npm ci`` is a failure saying what to install, never a skip."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.flows.console.served import EVENTS, RULES, TOKENS, Served, seeded, serving

pytestmark = pytest.mark.integration

BROWSER = Path(__file__).parents[2] / "browser"
SCRIPT = BROWSER / "console.mjs"
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture
def served(redis_url: str, kafka_bootstrap: str) -> Iterator[Served]:
    with serving(seeded(redis_url, kafka_bootstrap)) as found:
        yield found


def drive(served: Served, shots: Path, **extra: str) -> dict[str, Any]:
    """Run the browser script; what it saw."""
    if not CHROMIUM.is_file():
        pytest.fail("no /usr/bin/chromium: apt-get install --no-install-recommends chromium")
    node = shutil.which("node")
    if node is None:
        pytest.fail("no node on PATH: apt-get install --no-install-recommends nodejs npm")
    if not (BROWSER / "node_modules" / "playwright-core").is_dir():
        pytest.fail(
            "no playwright-core in tests/browser/node_modules: run `npm ci` in tests/browser"
        )
    shots.mkdir(parents=True, exist_ok=True)
    given = {"url": f"http://127.0.0.1:{served.port}", "shots": str(shots), **extra}
    done = subprocess.run(
        [node, str(SCRIPT), orjson.dumps(given).decode()],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=BROWSER,
    )
    lines = done.stdout.strip().splitlines()
    assert lines, f"node exited {done.returncode} without a result: {done.stderr[-2000:]}"
    seen: dict[str, Any] = orjson.loads(lines[-1])
    assert "error" not in seen, seen
    return seen


def test_a_marketer_logs_in_pushes_backtests_and_looks_up_a_shopper(
    served: Served, tmp_path: Path
) -> None:
    text = RULES.read_text()
    bad = text.replace("- send: email\n", "- send: emial\n", 1)
    good = text.replace("holdout: 10%", "holdout: 15%")
    seen = drive(
        served,
        tmp_path / "console-shots",
        token=TOKENS[0][1],
        bad=bad,
        good=good,
        events=EVENTS.read_text(),
        shopper="u2",
    )
    assert seen["first_status"] == 401
    assert seen["login_form"] == 1
    assert seen["graphs"] == 1
    assert seen["trigger"].startswith("send_time_test: on signup")
    assert any(count.startswith("entered ") for count in seen["counts"])
    assert any(count.startswith("sent ") for count in seen["counts"])
    line = next(n for n, t in enumerate(bad.splitlines(), start=1) if t.endswith("send: emial"))
    assert seen["inline_line"] == str(line)
    assert f"{RULES.name}:{line}:" in seen["inline_error"]
    assert "unknown channel 'emial'" in seen["inline_error"]
    assert "version 1 stays active" in seen["bad_message"]
    assert seen["active_before"].startswith("1")
    assert seen["good_message"].startswith("pushed version 2")
    assert seen["active_after"].startswith("2")
    assert seen["active_who"] == "alice"
    assert "+    holdout: 15%" in seen["diff_added"]
    assert served.store.active_version() == 2
    assert "actions would be sent from 8 events" in seen["backtest"]
    assert seen["backtest_rows"] > 1
    assert seen["shopper"] == "u2"
    assert seen["shopper_actions"] > 1
    shots = sorted(p.name for p in (tmp_path / "console-shots").iterdir())
    assert shots == [
        "1-login.png",
        "2-journeys.png",
        "3-push-rejected.png",
        "4-pushed.png",
        "5-backtest.png",
        "6-shopper.png",
    ]
