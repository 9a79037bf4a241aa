"""Two hosts on one machine (tests/flows/netns.py), and what runs across them.

Each host is a network namespace with its own address on a bridge of the root
namespace. The tests show that the hosts reach a server bound to the bridge address
and each other by their own addresses; that nothing is left after the block, also
after a failure; that the embedded valkey and tansu started on the bridge address
(``host=``) serve clients on both hosts, where the default loopback-bound ones
cannot; and a Bytewax dataflow of two processes, one per host, addressed by the
hosts' own IPs.
"""

from __future__ import annotations

import collections
import contextlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from flows.kafka.topics import ensure_topics
from flows.servers.embedded import start_kafka, start_redis
from tests.flows import two_host_flow
from tests.flows.netns import Host, TwoHosts, links, namespaces, two_hosts

pytestmark = pytest.mark.integration

PYTHON = sys.executable
REPO = Path(__file__).resolve().parents[2]
PORT = 2101  # every namespace is fresh: any port is free on its own address
TIMEOUT_S = 60.0

# A client run inside a host: connect to argv[1]:argv[2], send argv[3], print the echo.
ECHO_CLIENT = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10) as s:
    s.sendall(sys.argv[3].encode())
    s.shutdown(socket.SHUT_WR)
    print(s.makefile("rb").read().decode())
"""
# A one-connection echo server run inside a host on argv[1]:argv[2]; "ready" once listening.
ECHO_SERVER = """
import socket, sys
with socket.create_server((sys.argv[1], int(sys.argv[2]))) as srv:
    print("ready", flush=True)
    conn, peer = srv.accept()
    with conn:
        data = conn.makefile("rb").read()
        conn.sendall(b"echo from " + sys.argv[1].encode() + b" to " + peer[0].encode()
                     + b": " + data)
"""
# Inside a host: SET and GET one key on the Redis at argv[1], print the value.
REDIS_CLIENT = """
import sys, redis
client = redis.Redis.from_url(sys.argv[1], socket_connect_timeout=5, socket_timeout=5)
client.set(sys.argv[2], sys.argv[3])
print(client.get(sys.argv[2]).decode())
"""
# Inside a host: produce one record (value argv[3]) to topic argv[2] of the broker argv[1].
KAFKA_PRODUCER = """
import sys
from confluent_kafka import Producer
producer = Producer({"bootstrap.servers": sys.argv[1], "acks": "all"})
producer.produce(sys.argv[2], sys.argv[3].encode())
assert producer.flush(30) == 0, "not delivered"
print("delivered")
"""


@pytest.fixture(scope="module")
def hosts() -> Iterator[TwoHosts]:
    with two_hosts() as made:
        yield made


def python_in(host: Host, script: str, *args: str, timeout: float = TIMEOUT_S) -> str:
    """Run a Python ``script`` with ``args`` inside ``host``; its stdout, stripped."""
    return host.run([PYTHON, "-c", script, *args], timeout=timeout).strip()


@contextlib.contextmanager
def echo_server(ip: str) -> Iterator[int]:
    """A TCP echo server of this (root) process on ``ip``; yields its port."""
    listener = socket.create_server((ip, 0))
    port = int(listener.getsockname()[1])

    def serve() -> None:
        while True:
            try:
                conn, peer = listener.accept()
            except OSError:  # closed at the end of the block
                return
            with conn:
                data = conn.makefile("rb").read()
                conn.sendall(f"root echo to {peer[0]}: ".encode() + data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        listener.close()
        thread.join(5)


def test_both_hosts_reach_a_server_on_the_bridge_address(hosts: TwoHosts) -> None:
    with echo_server(hosts.bridge_ip) as port:
        for host in hosts.hosts:
            out = python_in(host, ECHO_CLIENT, hosts.bridge_ip, str(port), f"hi from {host.name}")
            assert out == f"root echo to {host.ip}: hi from {host.name}"


def test_the_hosts_reach_each_other_by_their_own_addresses(hosts: TwoHosts) -> None:
    for server, client in (hosts.hosts, hosts.hosts[::-1]):
        proc = server.popen(
            [PYTHON, "-c", ECHO_SERVER, server.ip, str(PORT)], stdout=subprocess.PIPE
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == b"ready\n"
            out = python_in(client, ECHO_CLIENT, server.ip, str(PORT), "ping")
            assert out == f"echo from {server.ip} to {client.ip}: ping"
            assert proc.wait(TIMEOUT_S) == 0
        finally:
            proc.kill()
            proc.wait()


def test_the_hosts_are_separate_machines(hosts: TwoHosts) -> None:
    """Each host has only its own address: loopback of one is not that of another."""
    a, b = (host.run(["ip", "-4", "-o", "addr"]) for host in hosts.hosts)
    assert f"inet {hosts.a.ip}/24" in a
    assert hosts.b.ip not in a
    assert f"inet {hosts.b.ip}/24" in b
    assert hosts.a.ip not in b


def test_nothing_is_left_after_the_block_even_after_a_failure() -> None:
    with pytest.raises(RuntimeError, match="fails inside"), two_hosts() as made:  # noqa: PT012
        sleeper = made.a.popen(["sleep", "600"])  # still running at the failure
        assert set(made.links) <= set(links())
        raise RuntimeError("the test fails inside the block")
    assert sleeper.wait(5) == -9  # SIGKILLed: a namespace outlives its last process
    assert made.a.name not in namespaces()
    assert made.b.name not in namespaces()
    assert not set(made.links) & set(links())
    route = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=True)
    assert f"inet {made.bridge_ip}/" not in route.stdout


# --- the embedded servers, bound to the bridge address ---------------------------------


@contextlib.contextmanager
def bridge_servers(ip: str) -> Iterator[tuple[str, str]]:
    """The embedded valkey and tansu bound to ``ip``; yields the Redis URL and bootstrap."""
    valkey, url = start_redis(host=ip)
    with valkey:
        tansu, bootstrap = start_kafka(host=ip)
        with tansu:
            yield url, bootstrap


def _read(bootstrap: str, topic: str, count: int) -> list[bytes]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{topic}-reader"})
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        values: list[bytes] = []
        deadline = time.monotonic() + TIMEOUT_S
        while len(values) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            value = None if msg is None or msg.error() else msg.value()
            if value is not None:
                values.append(value)
        return values
    finally:
        consumer.close()


def test_default_embedded_valkey_is_out_of_reach_of_the_hosts(hosts: TwoHosts) -> None:
    """By default the embedded servers bind 127.0.0.1: inside a host, its own loopback."""
    server, url = start_redis()
    with server:
        assert redis.Redis.from_url(url).ping()  # from the root namespace: fine
        with pytest.raises(RuntimeError, match=r"Connection refused|Error 111"):
            python_in(hosts.a, REDIS_CLIENT, url, "k", "v")


def test_valkey_and_tansu_on_the_bridge_serve_both_hosts(hosts: TwoHosts, unique: str) -> None:
    with bridge_servers(hosts.bridge_ip) as (url, bootstrap):
        assert url.startswith(f"redis://{hosts.bridge_ip}:")
        assert bootstrap.startswith(f"{hosts.bridge_ip}:")
        topic = f"{unique}-two-hosts"
        ensure_topics(bootstrap, {topic: 1})
        for host in hosts.hosts:
            key = f"{unique}:{host.name}"
            assert python_in(host, REDIS_CLIENT, url, key, host.ip) == host.ip
            assert python_in(host, KAFKA_PRODUCER, bootstrap, topic, host.ip) == "delivered"
        client = redis.Redis.from_url(url)
        assert client.get(f"{unique}:{hosts.a.name}") == hosts.a.ip.encode()
        assert client.get(f"{unique}:{hosts.b.name}") == hosts.b.ip.encode()
        assert sorted(_read(bootstrap, topic, 2)) == [h.ip.encode() for h in hosts.hosts]


# --- a Bytewax cluster of two processes, one per host ----------------------------------


def _flow_argv(out: Path, process_id: int, addresses: Sequence[str]) -> list[str]:
    return [PYTHON, "-m", "tests.flows.two_host_flow", str(out), str(process_id), *addresses]


def test_a_two_process_bytewax_dataflow_runs_one_process_per_host(
    hosts: TwoHosts, tmp_path: Path
) -> None:
    addresses = [f"{host.ip}:{PORT}" for host in hosts.hosts]
    procs = [
        host.popen(
            _flow_argv(tmp_path, i, addresses),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for i, host in enumerate(hosts.hosts)
    ]
    try:
        outputs = [proc.communicate(timeout=TIMEOUT_S)[0].decode() for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    per_worker = [_counts(tmp_path / f"worker-{i}.txt") for i in (0, 1)]
    assert all(per_worker), f"each process owns some keys: {per_worker}"
    assert not set(per_worker[0]) & set(per_worker[1])  # each key counted in one place
    combined = {**per_worker[0], **per_worker[1]}
    assert combined == dict(collections.Counter(two_host_flow.ITEMS))


def _counts(path: Path) -> dict[str, int]:
    pairs = (line.split() for line in path.read_text().splitlines())
    return {key: int(count) for key, count in pairs}
