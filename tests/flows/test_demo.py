"""`tetik demo` end to end: real servers, real run and deliver children, clean exit."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _number(pattern: str, text: str) -> int:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in output:\n{text}"
    return int(match[1].replace(",", ""))


def test_demo_runs_the_live_engine_and_leaves_nothing_running() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETIK_")}
    args = ["demo", "--duration", "8", "--rate", "400", "--users", "150"]
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    summary = output[output.index("\nsummary") :]
    assert _number(r"sent by channel\s+email ([\d,]+)", summary) > 0
    assert _number(r"latency  event -> action on Kafka: p50 (\d+) ms", summary) >= 0
    dlq = _number(r"dead-letter topic events.dlq: (\d+) records", summary)
    invalid = _number(r"invalid ([\d,]+);", summary)
    assert dlq == invalid > 0
    assert _number(r"delivered: ([\d,]+) emails to the SMTP catcher", summary) > 0
    assert "jobs exited with codes run=0 deliver=0" in summary
    # The inboxes are found by the key layout's pattern and read back whole.
    assert _number(r"onsite inboxes: ([\d,]+);", summary) > 0
    assert _number(r"`tetik onsite [^`]+` shows (\d+) message", summary) > 0
    pids = [int(p) for p in re.findall(r"\(pid (\d+)", output)]
    assert len(pids) == 4  # valkey, tansu, run and deliver children
    assert not [pid for pid in pids if _alive(pid)]
