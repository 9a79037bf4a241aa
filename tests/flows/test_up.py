"""``tetik up`` / ``tetik down``: servers kept between commands (flows.servers.up)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from flows.servers.up import running, start, stop
from tests.tetik_cli import tetik

pytestmark = pytest.mark.integration


def _exports(stdout: str) -> dict[str, str]:
    pairs = (line.removeprefix("export ").split("=", 1) for line in stdout.splitlines())
    return dict(pairs)  # type: ignore[arg-type]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    """The up folder; whatever a failed test left up is stopped."""
    yield tmp_path / "up"
    stop(tmp_path / "up")


def test_up_shares_servers_between_commands_and_down_stops_them(
    folder: Path, tmp_path: Path
) -> None:
    first = tetik("up", "--dir", str(folder))
    assert first.returncode == 0, first.stderr
    exports = _exports(first.stdout)
    assert set(exports) == {"TETIK_REDIS_URL", "TETIK_KAFKA_BOOTSTRAP", "TETIK_RECOVERY_DIR"}
    assert exports["TETIK_RECOVERY_DIR"] == str((folder / "recovery").resolve())
    up = running(folder)
    assert up is not None
    assert up.redis_url == exports["TETIK_REDIS_URL"]

    # A second `up` finds them: the same exports, no second keeper.
    again = tetik("up", "--dir", str(folder))
    assert again.returncode == 0
    assert _exports(again.stdout) == exports
    assert "already up" in again.stderr

    # One command writes to the servers, and others (this test) read what it wrote.
    log = tmp_path / "events.jsonl"
    log.write_text(
        '{"event_id":"e1","type":"view_product","user_id":"u1","ts":1700000000000,'
        '"product_id":"p1"}\n'
    )
    produced = tetik("produce", str(log), env=exports)
    assert produced.returncode == 0, produced.stderr
    consumer = Consumer(
        {"bootstrap.servers": exports["TETIK_KAFKA_BOOTSTRAP"], "group.id": "test-up"}
    )
    topic = consumer.list_topics("events", timeout=10).topics["events"]
    consumer.assign([TopicPartition("events", p, OFFSET_BEGINNING) for p in topic.partitions])
    deadline = time.monotonic() + 20
    values: list[bytes] = []
    while not values and time.monotonic() < deadline:
        message = consumer.poll(0.2)
        if message is not None and message.error() is None:
            values.append(message.value() or b"")
    consumer.close()
    assert values
    assert b'"e1"' in values[0]
    client = redis.Redis.from_url(exports["TETIK_REDIS_URL"])
    assert client.ping()
    client.close()

    down = tetik("down", "--dir", str(folder))
    assert down.returncode == 0, down.stderr
    assert "stopped" in down.stderr
    assert _gone(up.pid)
    assert not folder.exists()
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(exports["TETIK_REDIS_URL"], socket_connect_timeout=1).ping()
    nothing = tetik("down", "--dir", str(folder))
    assert nothing.returncode == 0
    assert "nothing was up" in nothing.stderr


def test_servers_die_with_a_killed_keeper_and_up_starts_new_ones(folder: Path) -> None:
    up, started = start(folder)
    assert started
    os.kill(up.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while running(folder) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert running(folder) is None
    client = redis.Redis.from_url(up.redis_url, socket_connect_timeout=1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # valkey dies with its keeper (PDEATHSIG)
        try:
            client.ping()
        except redis.ConnectionError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("valkey outlived its keeper")
    fresh, started = start(folder)
    assert started
    assert fresh.pid != up.pid
