"""`tetik segments --rules R --events E [--at T] [--out F]` as a user runs it (SPEC section 9)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import pytest

from engine.events import parse_ts

RULES = """
version: 1
segments:
  buyers: "count(purchase) >= 1"
  browsing: "exists(view_product, 1h)"
  big_spenders: "sum(purchase, revenue) > 100"
journeys: []
"""


def tetik(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args], capture_output=True, text=True, timeout=120
    )


def at(hm: str) -> int:
    return parse_ts(f"2024-05-06T{hm}:00Z")


def write_files(tmp: Path) -> tuple[Path, Path]:
    rules = tmp / "r.yaml"
    rules.write_text(textwrap.dedent(RULES))
    events = [
        {"event_id": "1", "type": "purchase", "ts": at("10:00"), "user_id": "zed", "revenue": 150},
        {
            "event_id": "2",
            "type": "view_product",
            "ts": at("10:30"),
            "user_id": "amy",
            "product_id": "p1",
        },
        {"event_id": "3", "type": "purchase", "ts": at("11:00"), "anon_id": "d-1", "revenue": 20},
        {"event_id": "4", "type": "login", "ts": at("11:10"), "user_id": "bob"},
    ]
    log = tmp / "e.jsonl"
    log.write_bytes(b"\n".join(orjson.dumps(e) for e in events) + b"\nnot json\n")
    return rules, log


def test_one_line_per_known_user_sorted_with_counts(tmp_path: Path) -> None:
    rules, log = write_files(tmp_path)
    done = tetik("segments", "--rules", str(rules), "--events", str(log))
    assert done.returncode == 0, done.stderr
    # At the last event (11:10): amy's view is 40 minutes old, still within 1h.
    # RFM over the two buyers: d-1 bought last (r 5) and spent less (m 1) than zed;
    # both bought once, so no frequency boundary lies strictly below either (f 1).
    assert done.stdout.splitlines() == [
        '{"user_id":"amy","segments":["browsing"],"rfm":null}',
        '{"user_id":"bob","segments":[],"rfm":null}',
        '{"user_id":"d-1","segments":["buyers"],"rfm":{"r":5,"f":1,"m":1}}',
        '{"user_id":"zed","segments":["big_spenders","buyers"],"rfm":{"r":1,"f":1,"m":5}}',
    ]
    lines = [line for line in done.stderr.splitlines() if line]  # (a \r ends progress)
    assert lines[0].startswith(f"{log}:5: ")  # the bad line, as replay reports it
    assert lines[1:4] == ["buyers: 2", "browsing: 1", "big_spenders: 1"]
    assert lines[4].startswith(f"segments: 4 users at {at('11:10')} ")


def test_at_replays_to_that_time_and_out_writes_a_file(tmp_path: Path) -> None:
    rules, log = write_files(tmp_path)
    out = tmp_path / "members.jsonl"
    done = tetik(
        "segments", "--rules", str(rules), "--events", str(log),
        "--at", "2024-05-06T11:45:00Z", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    rows = [orjson.loads(line) for line in out.read_text().splitlines()]
    # 11:45: amy's 10:30 view is older than 1h; at 10:45 only zed and amy existed.
    assert [(r["user_id"], r["segments"]) for r in rows] == [
        ("amy", []),
        ("bob", []),
        ("d-1", ["buyers"]),
        ("zed", ["big_spenders", "buyers"]),
    ]
    early = tetik("segments", "--rules", str(rules), "--events", str(log), "--at", str(at("10:45")))
    assert [orjson.loads(line)["user_id"] for line in early.stdout.splitlines()] == ["amy", "zed"]
    assert orjson.loads(early.stdout.splitlines()[0])["segments"] == ["browsing"]


def test_bad_files_are_one_line_errors(tmp_path: Path) -> None:
    rules, log = write_files(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text('version: 1\nsegments:\n  x: "event.price > 1"\njourneys: []\n')
    done = tetik("segments", "--rules", str(bad), "--events", str(log))
    assert done.returncode == 2
    assert done.stderr.startswith(f"{bad}:3:7: segment x: 'event' is not available in a segment")
    missing = tetik("segments", "--rules", str(rules), "--events", str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        f"tetik segments: cannot read the events file {tmp_path / 'nope.jsonl'} "
        "(No such file or directory)"
    ]
    when = tetik("segments", "--rules", str(rules), "--events", str(log), "--at", "tomorrow")
    assert when.returncode == 2
    assert when.stderr.startswith("tetik segments: --at: ")


def test_validate_warns_about_a_broadcast_already_past(tmp_path: Path) -> None:
    rules = tmp_path / "b.yaml"
    rules.write_text(
        "version: 1\njourneys:\n"
        '  - {id: old, trigger: {schedule: "2020-01-01T09:00"}, steps: [{send: email}]}\n'
        '  - {id: new, trigger: {schedule: "2099-01-01T09:00"}, steps: [{send: email}]}\n'
    )
    done = tetik("rules", "validate", str(rules))
    assert done.returncode == 0
    assert done.stdout.startswith(f"{rules}: OK, 2 journeys")
    assert done.stderr.splitlines() == [
        f"{rules}:3:35: warning: journey old: schedule 2020-01-01T09:00 has passed; a live "
        "engine does not send a broadcast whose time came before its rules were pushed (a "
        "backtest over a log that spans it still fires it)"
    ]


def test_a_segment_on_rfm_is_scored_against_the_base_at_the_time_asked(tmp_path: Path) -> None:
    rules, log = write_files(tmp_path)
    rules.write_text(
        textwrap.dedent(RULES).replace(
            'big_spenders: "sum(purchase, revenue) > 100"', 'recent: "rfm().r >= 4"'
        )
    )
    done = tetik("segments", "--rules", str(rules), "--events", str(log))
    assert done.returncode == 0, done.stderr
    members = {row["user_id"]: row["segments"] for row in map(orjson.loads, done.stdout.split())}
    assert members["d-1"] == ["buyers", "recent"]  # the latest buyer of the base
    assert members["zed"] == ["buyers"]


def test_the_compiled_whole_base_scorer_gives_each_users_scores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import random

    from engine.events import Event
    from engine.state import UserState, apply
    from flows.jobs import segment_report

    rng = random.Random(5)
    states: dict[str, UserState] = {}
    now = parse_ts("2024-05-06T12:00:00Z")
    for n in range(300):
        state = states.setdefault(f"u{n}", UserState(key=f"u{n}"))
        for k in range(rng.randrange(4)):  # a quarter never buy
            revenue = float(rng.choice((10, 20, 20, 55.5)))
            ts = now - rng.randrange(1, 200) * 3_600_000
            event = Event(event_id=f"{n}-{k}", type="purchase", ts=ts, user_id=f"u{n}",
                          revenue=revenue)  # fmt: skip
            apply(state, event, now)
    one_by_one = segment_report.base_scores(states, now)[1]
    monkeypatch.setattr(segment_report, "WHOLE_BASE_FROM", 1)
    whole_base = segment_report.base_scores(states, now)[1]
    assert whole_base == one_by_one
    assert sum(score is None for score in whole_base.values()) > 30  # non-buyers: no score
