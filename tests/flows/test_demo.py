"""`tetik demo` end to end: real servers, real ingest child, clean exit."""

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


def test_demo_streams_events_and_leaves_nothing_running() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETIK_")}
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "demo", "--events", "800", "--rate", "4000"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    sent = _number(r"all ([\d,]+) records accounted for", output)
    assert sent == 800 + 800 // 50  # every 50th record is redelivered once
    dlq = _number(r"dead-letter topic events.dlq: (\d+) records", output)
    invalid = _number(r"invalid (\d+)", output)
    assert dlq == invalid > 0
    assert '"cart"' in output
    pids = [int(p) for p in re.findall(r"\(pid (\d+)", output)]
    assert len(pids) == 3  # valkey, tansu, ingest child
    assert not [pid for pid in pids if _alive(pid)]
