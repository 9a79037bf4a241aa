"""`tetik generate --start`: the log's event time, by default ending about now."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson

from cli.main import _parser
from engine.events import parse_ts


def _generate(tmp_path: Path, *flags: str) -> tuple[int, list[int]]:
    tmp_path.mkdir(exist_ok=True)
    out = tmp_path / "events.jsonl"
    argv = ["generate", "--events", "300", "--users", "40", "--out", str(out), *flags]
    args = _parser().parse_args(argv)
    code = args.func(args)
    lines = out.read_bytes().splitlines() if code == 0 else []
    return code, [_ms(orjson.loads(line)["ts"]) for line in lines]


def _ms(ts: int | str) -> int:
    return ts if isinstance(ts, int) else parse_ts(ts)


def _now() -> int:
    return time.time_ns() // 1_000_000


def test_by_default_the_log_ends_about_now(tmp_path: Path) -> None:
    code, stamps = _generate(tmp_path)
    assert code == 0
    now = _now()
    assert now - 3_600_000 * 3 < min(stamps)  # not November 2023
    assert abs(max(stamps) - now) < 3_600_000  # ends within the hour of now
    assert max(stamps) - min(stamps) > 600_000  # still a span of sessions


def test_start_now_and_an_iso_date_time(tmp_path: Path) -> None:
    before = _now()
    code, stamps = _generate(tmp_path, "--start", "now")
    assert code == 0
    assert before <= min(stamps) <= _now()
    code, stamps = _generate(tmp_path, "--start", "2024-05-06T12:00:00+03:00")
    assert code == 0
    assert min(stamps) == parse_ts("2024-05-06T12:00:00+03:00")
    code, naive = _generate(tmp_path, "--start", "2024-05-06T09:00:00")  # UTC
    assert code == 0
    assert naive == stamps  # the same log, the same instants


def test_a_bad_start_is_one_line(tmp_path: Path, capsys: Any) -> None:
    code, _ = _generate(tmp_path, "--start", "yesterday")
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "tetik generate: --start 'yesterday' is not a date-time; write now, 2024-05-06 "
        "or 2024-05-06T12:00:00+03:00"
    )


def test_only_the_clock_moves(tmp_path: Path) -> None:
    """The same seed gives the same sessions, with the same gaps, at any start."""
    _, default = _generate(tmp_path / "a")
    _, fixed = _generate(tmp_path / "b", "--start", "2023-11-14T22:13:20Z")
    assert fixed[0] == 1_700_000_000_000
    assert [t - default[0] for t in default] == [t - fixed[0] for t in fixed]
