"""`tetik demo` end to end: real servers, real run and deliver children, clean exit."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from flows.logs import EMAIL, PHONE

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


def _numbers(pattern: str, text: str) -> list[int]:
    """Every number ``pattern`` captures: the groups of its first match, or with one
    group, that group in every match."""
    found = re.findall(pattern, text)
    assert found, f"{pattern!r} not in output:\n{text}"
    groups = found[0] if isinstance(found[0], tuple) else found
    return [int(n.replace(",", "")) for n in groups]


def test_demo_runs_the_live_engine_and_leaves_nothing_running(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETIK_")}
    args = ["demo", "--duration", "8", "--rate", "400", "--users", "150"]
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
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
    # The view reads every partition of the actions topic: all the shards emitted.
    read, emitted = _numbers(r"actions: ([\d,]+) read .* the shards emitted ([\d,]+)", summary)
    assert read == emitted > 0
    # The catalog's feed: every product's latest update taken, drops and restocks
    # derived for the shoppers who had seen the products, and their journeys sent.
    held, streamed, latest = _numbers(
        r"the catalog holds ([\d,]+) of the ([\d,]+) products streamed, ([\d,]+) at the last",
        summary,
    )
    assert held == streamed == latest > 0
    updates, drops, restocks = _numbers(
        r"product updates sent ([\d,]+)  derived price_drop ([\d,]+)  back_in_stock ([\d,]+)",
        summary,
    )
    assert updates > streamed  # a first price for each, then changes
    assert drops + restocks > 0
    journeys = re.search(r"catalog journeys +(.*)", summary)
    assert journeys, summary
    assert sum(_numbers(r"([\d,]+)", journeys[1])) > 0
    # The inboxes are found by the key layout's pattern and read back whole.
    assert _number(r"onsite inboxes: ([\d,]+);", summary) > 0
    assert _number(r"`tetik onsite [^`]+` shows (\d+) message", summary) > 0
    # The logs stay in the folder named at the start and the end.
    (folder,) = (tmp_path / ".tetik" / "demo").iterdir()
    assert f"logs in {folder}" in output
    assert f"logs kept in {folder}" in output
    assert (folder / "run.log").stat().st_size > 0
    # The shoppers' profiles carry e-mail addresses and phone numbers (the generator's);
    # none reaches a log: the demo's own lines, the engine's and the delivery job's.
    for name, text in (
        ("demo", output),
        ("run.log", (folder / "run.log").read_text()),
        ("deliver.log", (folder / "deliver.log").read_text()),
    ):
        assert not EMAIL.search(text), f"an e-mail address in {name}"
        assert not PHONE.search(text), f"a phone number in {name}"
    assert "timezone: " in (folder / "journeys.yaml").read_text()
    pids = [int(p) for p in re.findall(r"\(pid (\d+)", output)]
    assert len(pids) == 4  # valkey, tansu, run and deliver children
    assert not [pid for pid in pids if _alive(pid)]
