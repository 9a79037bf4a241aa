"""The one progress display: live on a terminal (rich), plain lines in a file."""

from __future__ import annotations

import io
import os
import select
import time

import pytest

from flows.jobs import progress
from flows.jobs.progress import Bar, Line, Monitor, Rate


def test_a_file_gets_plain_lines_at_most_every_interval() -> None:
    stream = io.StringIO()
    line = Line(stream, every_s=60.0)
    for n in range(1, 1001):
        line.update(f"done {n}")
    line.close()
    assert stream.getvalue() == "done 1\ndone 1000\n"  # the first, then the last at close


def test_close_does_not_repeat_a_line_already_shown() -> None:
    stream = io.StringIO()
    line = Line(stream, every_s=0.0)
    line.update("a")
    line.update("b")
    line.close()
    assert stream.getvalue() == "a\nb\n"


def test_a_bar_off_a_terminal_has_no_carriage_returns() -> None:
    stream = io.StringIO()
    bar = Bar("load", stream, every_s=0.0)
    bar.update(0.5, "half")
    bar.close("all")
    lines = stream.getvalue().splitlines()
    assert [line.split("[")[0] for line in lines] == ["tetik: load "] * 3
    assert lines[1].split("]")[1].split()[0] == "50%"
    assert lines[-1].endswith("all")
    assert "\r" not in stream.getvalue()
    assert "\x1b" not in stream.getvalue()


def test_a_terminal_gets_the_line_redrawn_in_place() -> None:
    master, slave = os.openpty()
    with os.fdopen(slave, "w") as stream:
        line = Line(stream)
        assert line.tty
        line.update("first")
        line.update("second", force=True)
        line.close()
    shown = b""
    while select.select([master], [], [], 0.2)[0]:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    assert b"second" in shown
    assert b"\r" in shown  # redrawn over the previous state, not a new line each time
    assert shown.count(b"\n") <= 2


def test_rate_is_over_the_last_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    rate = Rate()
    now[0] = 110.0
    assert rate.read(10_000) == 1000.0
    now[0] = 120.0
    assert rate.read(10_000) == 0.0  # stalled: since the start it would still say 500/s
    now[0] = 125.0
    assert rate.read(12_000) == 400.0


def test_monitor_writes_plain_lines_with_the_recent_rate() -> None:
    stream = io.StringIO()
    calls = [0]

    def stats() -> dict[str, int]:  # 100 events a reading for three readings, then a stall
        calls[0] += 1
        return {"applied": 100 * min(calls[0], 3)}

    monitor = Monitor(stats, interval=0.05, out=stream)
    monitor.start()
    while calls[0] < 6:
        time.sleep(0.05)
    monitor.stop()
    lines = stream.getvalue().splitlines()
    assert all(line.startswith("events ") and line.endswith(" ev/s") for line in lines)
    assert "\r" not in stream.getvalue()
    rates = [int(line.split()[-2].replace(",", "")) for line in lines]
    assert rates[0] > 0
    assert rates[-1] == 0  # stalled: a rate since the start would still be above 0


def test_off_a_terminal_with_json_logs_a_line_is_a_log_record(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import logging

    import orjson

    from flows import logs
    from flows.settings import LogConfig

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        logs.configure(LogConfig(json=True))
        line = Line(every_s=0.0)  # stderr: captured, so not a terminal
        line.update("tetik: replay: 50,000 lines")
        line.close()
        (record,) = [orjson.loads(text) for text in capsys.readouterr().err.splitlines()]
        assert (record["logger"], record["message"]) == ("tetik.progress", "replay: 50,000 lines")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
