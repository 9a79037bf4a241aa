"""Redis faults on a private, real valkey: frozen (SIGSTOP) and down, retried, never a traceback."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from flows.retry import RedisUnavailable, connect, retrying
from flows.servers.embedded import start_redis
from flows.servers.process import EmbeddedServer
from flows.stores.keys import Keys
from flows.stores.states import ShardStore, ShardWrite

pytestmark = pytest.mark.integration


@pytest.fixture
def private_redis() -> Iterator[tuple[EmbeddedServer, str]]:
    server, url = start_redis()
    try:
        yield server, url
    finally:
        os.kill(server.pid, signal.SIGCONT)
        server.stop()


def freeze(server: EmbeddedServer, seconds: float) -> threading.Thread:
    """SIGSTOP the server now and SIGCONT it ``seconds`` later (in a thread)."""
    os.kill(server.pid, signal.SIGSTOP)
    thread = threading.Thread(
        target=lambda: (time.sleep(seconds), os.kill(server.pid, signal.SIGCONT))
    )
    thread.start()
    return thread


def test_a_step_waits_through_a_frozen_redis_and_says_so(
    private_redis: tuple[EmbeddedServer, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, url = private_redis
    monkeypatch.setattr("flows.retry.SOCKET_TIMEOUT_S", 0.5)
    client = connect(url)
    client.set("k", "v")
    lines: list[str] = []
    backs: list[bool] = []
    thread = freeze(server, 2.0)
    started = time.monotonic()
    value = retrying("reading k", lambda: client.get("k"), report=lines.append,
                     on_back=lambda: backs.append(True))  # fmt: skip
    thread.join()
    assert value == b"v"
    assert time.monotonic() - started >= 1.5
    assert lines
    assert lines[0].startswith("Redis unavailable while reading k (TimeoutError")
    assert "retrying in" in lines[0]
    assert lines[-1].startswith("Redis is back")
    assert backs == [True]


def test_start_up_gives_up_after_its_deadline_with_one_line() -> None:
    client = connect("redis://127.0.0.1:1/0")  # nothing listens on port 1
    lines: list[str] = []
    with pytest.raises(RedisUnavailable) as info:
        retrying("starting", client.ping, deadline_s=1.0, report=lines.append)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("Redis did not answer within 1 s while starting")
    assert "TETIK_REDIS_URL" in message
    assert lines  # it said it was waiting


def test_a_shard_write_retried_through_a_freeze_is_neither_lost_nor_doubled(
    private_redis: tuple[EmbeddedServer, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, url = private_redis
    monkeypatch.setattr("flows.retry.SOCKET_TIMEOUT_S", 0.3)
    store = ShardStore(connect(url), Keys("t", 4).shard(1), ttl_ms=60_000)
    outbox = {f"id{i}": f"record {i}".encode() for i in range(50)}
    write = ShardWrite(
        states=[("u1", b"state bytes", 5_000)], outbox=outbox, offsets={"0-events": 41}
    )
    thread = freeze(server, 1.5)
    due = retrying("storing states and their actions", lambda: store.commit(write, 0))
    thread.join()
    # Whether or not the first attempt ran inside the frozen server, it is all there, once.
    assert due.first == 5_000
    assert store.read(["u1"]) == [b"state bytes"]
    assert store.outbox() == outbox
    assert store.offsets() == {"0-events": 41}
