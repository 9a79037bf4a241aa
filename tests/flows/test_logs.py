"""The log: levels, JSON lines, and no e-mail address or phone number in any of it."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from engine.errors import ConfigError
from flows import logs
from flows.logs import EMAIL, PHONE, redact
from flows.settings import LogConfig, log_config_from_env

TETIK = str(Path(sys.executable).with_name("tetik"))
RULES = str(Path(__file__).parents[2] / "examples" / "demo" / "journeys.yaml")


@pytest.fixture
def root() -> Iterator[logging.Logger]:
    """The root logger, given back as it was after the test."""
    logger = logging.getLogger()
    handlers, level = list(logger.handlers), logger.level
    yield logger
    logger.handlers[:] = handlers
    logger.setLevel(level)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("to ann@example.com now", "to <email> now"),
        ("first.last+tag@mail.example.co.uk", "<email>"),
        ("call +49 170 1234567 or +1 (415) 555-0100", "call <phone> or <phone>"),
        ("sms +447911123456.", "sms <phone>."),
        (
            "at 1796074022623, 12,345 events, user u00262",
            "at 1796074022623, 12,345 events, user u00262",
        ),
        ("p+5 and 3+4 and ev-42-0", "p+5 and 3+4 and ev-42-0"),
    ],
)
def test_redact(text: str, shown: str) -> None:
    assert redact(text) == shown


def test_every_record_is_redacted_message_args_extras_and_traceback(
    root: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.configure(LogConfig(level="INFO", json=True))
    log = logging.getLogger("some.library")  # not tetik's own: the handler redacts all
    log.info("sent to %s", "ann@example.com", extra={"to": "+14155550100", "n": 3})
    try:
        raise ValueError("bad recipient bob@example.com")
    except ValueError:
        log.exception("failed for %s", "+1 415 555 0199")
    lines = [orjson.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert lines[0]["message"] == "sent to <email>"
    assert (lines[0]["to"], lines[0]["n"]) == ("<phone>", 3)
    assert set(lines[0]) == {"ts", "level", "logger", "message", "to", "n"}
    assert (lines[0]["level"], lines[0]["logger"]) == ("info", "some.library")
    assert lines[1]["message"] == "failed for <phone>"
    assert "ValueError: bad recipient <email>" in lines[1]["exc"]


def test_levels_and_plain_text(root: logging.Logger, capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure(LogConfig(level="WARNING"))
    log = logging.getLogger("tetik")
    log.info("not shown")
    log.warning("shown")
    logs.configure(LogConfig(level="DEBUG"))  # again: replaces the handler, adds none
    log.debug("details")
    log.info("progress")
    assert (
        capsys.readouterr().err == "tetik: warning: shown\ntetik: debug: details\ntetik: progress\n"
    )


def test_settings_read_the_two_variables() -> None:
    assert log_config_from_env({}) == LogConfig(level="INFO", json=False)
    env = {"TETIK_LOG_LEVEL": "debug", "TETIK_LOG_FORMAT": "JSON"}
    assert log_config_from_env(env) == LogConfig(level="DEBUG", json=True)
    with pytest.raises(ConfigError, match="TETIK_LOG_LEVEL must be one of"):
        log_config_from_env({"TETIK_LOG_LEVEL": "chatty"})
    with pytest.raises(ConfigError, match="TETIK_LOG_FORMAT must be"):
        log_config_from_env({"TETIK_LOG_FORMAT": "yaml"})


@pytest.mark.parametrize("form", ["text", "json"])
def test_a_replay_logs_no_address(tmp_path: Path, form: str) -> None:
    """A replay of shoppers' profiles, with bad lines whose reasons quote addresses."""
    profile = {"type": "profile", "ts": 1796074022623}
    events = [
        {**profile, "event_id": "e1", "user_id": "u1",
         "attributes": {"email": "ann@example.com", "phone": "+14155550100"}},
        {**profile, "event_id": "e2", "user_id": "u2", "ts": "bob@example.com"},
        {**profile, "event_id": "e3", "user_id": "u3", "ts": "+14155550199"},
        {"event_id": "e4", "type": "add_to_cart", "ts": 1796074022623, "user_id": "u1",
         "product_id": "p1", "price": 10.0},
    ]  # fmt: skip
    log = tmp_path / "events.jsonl"
    log.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETIK_")}
    env.update(TETIK_LOG_LEVEL="DEBUG", TETIK_LOG_FORMAT=form)
    done = subprocess.run(
        [TETIK, "replay", "--rules", RULES, "--events", str(log), "--drain"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert f"{log}:2: ts '<email>' is not epoch" in done.stderr
    assert f"{log}:3: ts '<phone>' is not epoch" in done.stderr
    assert not EMAIL.search(done.stderr), done.stderr
    assert not PHONE.search(done.stderr), done.stderr
