"""`tetik replay` and `tetik rules validate` as a user runs them (SPEC section 5)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from engine.events import parse_ts

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CART = EXAMPLES / "abandoned_cart.yaml"
CART_LOG = EXAMPLES / "abandoned_cart.events.jsonl"


def tetik(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args], capture_output=True, text=True, timeout=120
    )


def actions(stdout: str) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in stdout.splitlines()]


def test_validate_ok_prints_one_summary_line() -> None:
    done = tetik("rules", "validate", str(CART))
    assert done.returncode == 0
    assert done.stdout.count("\n") == 1
    assert "abandoned_cart.yaml: OK, 1 journey" in done.stdout


def test_validate_reports_every_error_with_position(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "version: 1\njourneys:\n  - id: x\n"
        '    trigger: {event: add_to_crt, if: "event.prize > 3"}\n'
        "    steps:\n      - send: emial\n"
    )
    done = tetik("rules", "validate", str(bad))
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert lines[0].startswith(f"{bad}:4:22: ")
    assert "did you mean 'add_to_cart'" in lines[0]
    assert lines[1].startswith(f"{bad}:4:45: ")
    assert "did you mean 'price'" in lines[1]
    assert lines[2].startswith(f"{bad}:6:15: ")
    assert "did you mean 'email'" in lines[2]


def test_replay_writes_sent_actions_in_spec_order(tmp_path: Path) -> None:
    out = tmp_path / "actions.jsonl"
    done = tetik(
        "replay", "--rules", str(CART), "--events", str(CART_LOG), "--drain", "--out", str(out)
    )
    assert done.returncode == 0, done.stderr
    found = actions(out.read_text())
    assert {a["status"] for a in found} == {"sent"}
    keys = [(a["at"], a["user_id"], a["action_id"]) for a in found]
    assert keys == sorted(keys)  # type: ignore[type-var]
    assert len(found) == 6
    assert set(found[0]) >= {
        "action_id",
        "at",
        "user_id",
        "journey",
        "step",
        "channel",
        "template",
        "status",
        "rules_version",
        "content",
    }


def test_include_suppressed_adds_the_suppressed_with_their_reason() -> None:
    done = tetik(
        "replay", "--rules", str(CART), "--events", str(CART_LOG), "--drain", "--include-suppressed"
    )
    found = actions(done.stdout)
    suppressed = [a for a in found if a["status"] == "suppressed"]
    assert len(found) == 10
    assert {a["reason"] for a in suppressed} == {"no_consent"}
    assert all("reason" not in a for a in found if a["status"] == "sent")


def test_the_clock_stops_at_the_last_event_unless_until_or_drain() -> None:
    base = ("replay", "--rules", str(CART), "--events", str(CART_LOG))
    stopped = actions(tetik(*base).stdout)  # last event 21:50 on day 0
    assert [a["step"] for a in stopped] == ["1", "1", "1", "3.else.0"]
    until = actions(tetik(*base, "--until", "2024-05-06T10:45:00+03:00").stdout)
    assert len(until) == 3
    assert max(a["at"] for a in until) <= parse_ts("2024-05-06T10:45:00+03:00")  # type: ignore[type-var]
    epoch = actions(tetik(*base, "--until", str(parse_ts("2024-05-06T10:45:00+03:00"))).stdout)
    assert epoch == until
    drained = actions(tetik(*base, "--drain").stdout)
    assert len(drained) == 6


def test_bad_event_lines_are_reported_and_skipped(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    lines = CART_LOG.read_text().splitlines()
    lines.insert(2, '{"event_id": "x", "type": "add_to_cart"}')
    lines.insert(5, "not json")
    log.write_text("\n".join(lines) + "\n")
    done = tetik("replay", "--rules", str(CART), "--events", str(log), "--drain")
    assert done.returncode == 0
    assert f"{log}:3: " in done.stderr
    assert "ts" in done.stderr
    assert f"{log}:6: not valid JSON" in done.stderr
    assert len(actions(done.stdout)) == 6  # the good lines give the same actions


@pytest.mark.parametrize(
    "args",
    [
        ("replay", "--rules", "nope.yaml"),  # --events missing
        ("replay", "--rules", str(CART), "--events", str(CART_LOG), "--drain", "--until", "1"),
        ("replay", "--rules", str(CART), "--events", str(CART_LOG), "--until", "yesterday"),
    ],
)
def test_usage_errors_exit_2(args: tuple[str, ...]) -> None:
    assert tetik(*args).returncode == 2


def test_a_bad_rules_file_exits_2_and_prints_the_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 2\njourneys: []\n")
    done = tetik("replay", "--rules", str(bad), "--events", str(CART_LOG))
    assert done.returncode == 2
    assert f"{bad}:1:" in done.stderr
    assert done.stdout == ""


HISTORY_RULES = """\
version: 1
timezone: Europe/Istanbul
consent: {email: opt_out, push: opt_out}
journeys:
  - id: late
    trigger: {event: login, if: "count(purchase, between(date('2023-01-15'), now)) > 0"}
    steps: [{send: email}]
  - id: browsed
    trigger: {event: login, if: "exists(view_product, it.product_id == 'a')"}
    steps: [{send: push}]
"""


def test_validate_prints_warnings_and_still_exits_0(tmp_path: Path) -> None:
    rules = tmp_path / "history.yaml"
    rules.write_text(HISTORY_RULES)
    done = tetik("rules", "validate", str(rules))
    assert done.returncode == 0, done.stderr
    assert "OK, 2 journeys" in done.stdout
    warnings = done.stderr.splitlines()
    assert len(warnings) == 2
    assert warnings[0].startswith(f"{rules}:6:58: warning: journey late trigger.if: between's FROM")
    assert warnings[1].startswith(f"{rules}:6:78: warning: journey late trigger.if: between's TO")


def test_replay_keeps_what_tetik_windows_says(tmp_path: Path) -> None:
    rules = tmp_path / "history.yaml"
    rules.write_text(HISTORY_RULES)
    log = tmp_path / "events.jsonl"
    events = [
        {"event_id": "v1", "type": "view_product", "ts": "2024-05-01T10:00:00Z", "product_id": "a"},
        {"event_id": "v2", "type": "view_product", "ts": "2024-05-02T20:00:00Z", "product_id": "b"},
        {"event_id": "l1", "type": "login", "ts": "2024-05-03T10:00:00Z"},
    ]
    log.write_bytes(b"".join(orjson.dumps({**e, "user_id": "u"}) + b"\n" for e in events))
    args = [sys.executable, "-m", "cli.main", "replay", "--rules", str(rules), "--events", str(log)]
    default = subprocess.run(args, capture_output=True, text=True, timeout=120, check=True)
    assert [a["journey"] for a in actions(default.stdout)] == ["browsed"]
    # Views kept one day: the first view is gone at the login, as the live engine would have it.
    env = {**os.environ, "TETIK_WINDOWS": '{"default": {"max_age": "1d"}}'}
    short = subprocess.run(args, capture_output=True, text=True, timeout=120, check=True, env=env)
    assert actions(short.stdout) == []
    env["TETIK_WINDOWS"] = "{not json"
    bad = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env)
    assert bad.returncode == 2
    assert "TETIK_WINDOWS is not JSON" in bad.stderr
