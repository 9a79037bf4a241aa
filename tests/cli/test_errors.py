"""A fresh user's mistakes: each is one line on stderr saying what to do, never a traceback.

Every case runs the installed ``tetik`` script as a subprocess, as a user would.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

TETIK = str(Path(sys.executable).with_name("tetik"))
RULES = str(Path(__file__).parents[2] / "examples" / "demo" / "journeys.yaml")


def tetik(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``tetik ARGS`` with only the given TETIK_* variables set."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TETIK_")}
    return subprocess.run(
        [TETIK, *args], env={**clean, **env}, capture_output=True, text=True, timeout=60
    )


def one_line(done: subprocess.CompletedProcess[str], prefix: str) -> str:
    """The failure's one line; asserts it is alone, first-hand and not a traceback."""
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert [line for line in lines if line.startswith(prefix)] == lines[-1:], done.stderr
    return lines[-1]


def test_replay_missing_events_file(tmp_path: Path) -> None:
    done = tetik("replay", "--rules", RULES, "--events", str(tmp_path / "missing.jsonl"))
    line = one_line(done, "tetik replay:")
    assert line == f"tetik replay: {tmp_path / 'missing.jsonl'}: no such file or directory; " + (
        "check the path"
    )
    assert len(done.stderr.splitlines()) == 1


def test_produce_missing_file_fails_before_asking_kafka(tmp_path: Path) -> None:
    done = tetik("produce", str(tmp_path / "missing.jsonl"), TETIK_KAFKA_BOOTSTRAP="127.0.0.1:1")
    assert one_line(done, "tetik produce:").startswith(
        f"tetik produce: cannot read {tmp_path / 'missing.jsonl'}: No such file"
    )
    assert len(done.stderr.splitlines()) == 1  # no "waiting for Kafka", no librdkafka lines


def test_produce_with_kafka_unreachable(tmp_path: Path) -> None:
    log = tmp_path / "one.jsonl"
    log.write_text('{"event_id": "e1"}\n')
    done = tetik(
        "produce", str(log), TETIK_KAFKA_BOOTSTRAP="127.0.0.1:1", TETIK_KAFKA_TIMEOUT_S="1"
    )
    line = one_line(done, "tetik produce:")
    assert "Kafka at 127.0.0.1:1 did not answer" in line
    assert "TETIK_KAFKA_BOOTSTRAP" in line
    assert "rdkafka" not in done.stderr  # librdkafka's own lines stay out of the log


def test_state_with_redis_down() -> None:
    done = tetik("state", "u1", TETIK_REDIS_URL="redis://127.0.0.1:1")
    line = one_line(done, "tetik state:")
    assert line.startswith("tetik state: cannot reach Redis (")
    assert line.endswith("start it, or point TETIK_REDIS_URL (or --redis) at a running server")
    assert len(done.stderr.splitlines()) == 1


def test_state_with_a_redis_url_that_is_not_one() -> None:
    done = tetik("state", "u1", TETIK_REDIS_URL="notaurl")
    line = one_line(done, "tetik state:")
    assert "Redis URL must specify one of the following schemes" in line
    assert line.endswith("e.g. TETIK_REDIS_URL=redis://127.0.0.1:6379/0")


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("TETIK_LOG_LEVEL", "loud", "TETIK_LOG_LEVEL must be one of DEBUG, INFO"),
        ("TETIK_LOG_FORMAT", "xml", "TETIK_LOG_FORMAT must be 'json' or 'text'"),
    ],
)
def test_bad_log_settings(name: str, value: str, says: str) -> None:
    done = tetik("state", "u1", **{name: value})
    assert says in one_line(done, "tetik state:")


def test_version() -> None:
    from importlib.metadata import version

    done = tetik("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"tetik {version('tetik')}\n"


def test_every_subcommand_explains_itself_and_its_defaults() -> None:
    from cli.main import _parser

    def walk(parser: argparse.ArgumentParser, path: str) -> list[str]:
        found = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    found += [f"{path} {name}"] if not child.description else []
                    found += walk(child, f"{path} {name}")
        return found

    assert walk(_parser(), "tetik") == []
    done = tetik("replay", "--help")
    assert done.returncode == 0
    assert "Backtest rules on an event log" in done.stdout
    done = tetik("generate", "--help")
    assert "(default: 10000)" in done.stdout  # --events, which has no help line of its own
    assert "(default: None)" not in done.stdout
