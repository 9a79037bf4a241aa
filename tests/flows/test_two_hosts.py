"""``tetik run`` as a Bytewax cluster across two hosts (issue 12, section 6).

Two network namespaces made on this machine (tests/flows/netns.py) are the two
hosts; embedded valkey and tansu listen on the bridge address of the root
namespace (``start_redis(host=...)``, ``start_kafka(host=...)``), which both hosts
reach. Each host runs its own ``tetik run --process-id I --addresses A,B``, A and B
being the hosts' own addresses; both processes share one recovery directory (here
a temp dir; across real hosts, shared storage). The actions they emit together must
be those of ``tetik replay`` on the same log, each exactly once, and both processes
must have done part of the work: Redis MONITOR shows from which host each shard's
states were written, and each host wrote some shards, no shard from both.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.main import main as tetik
from flows.kafka.topics import ensure_topics
from flows.servers.embedded import start_kafka, start_redis
from flows.settings import from_env
from tests.flows.live import (
    RULES,
    Live,
    comparable,
    event,
    expected_actions,
    produce,
    tally,
    wait_for_actions,
)
from tests.flows.netns import Host, TwoHosts, two_hosts

PYTHON = sys.executable
REPO = Path(__file__).resolve().parents[2]
PORT = 2101  # each host is a fresh namespace: any port is free on its own address
STOP_S = 30.0


@pytest.fixture(scope="module")
def hosts() -> Iterator[TwoHosts]:
    with two_hosts() as made:
        yield made


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def shoppers(start: int, users: int) -> list[dict[str, object]]:
    """Carts (a third bought), repeated views: actions now and after waits of 2-3 s."""
    docs: list[dict[str, object]] = []
    for i in range(users):
        user, ts, n = f"u{i}", start + i * 50, 1000 * i
        docs.append(event(n, user, "add_to_cart", ts, product_id=f"p{i % 3}", price=30.0))
        if i % 3 == 0:
            docs.append(event(n + 1, user, "purchase", ts + 900))
        if i % 4 == 1:
            docs.append(event(n + 2, user, "view_product", ts + 100, product_id="p1"))
            docs.append(event(n + 3, user, "view_product", ts + 200, product_id="p2"))
    return sorted(docs, key=lambda d: int(str(d["ts"])))


class ShardWriters:
    """Redis MONITOR in a thread: which client addresses wrote the states of which shards.

    Every batch write of shard ``s`` is one script call whose first key is
    ``{PREFIX:s}:timers`` (flows.stores.states.ShardStore.commit); MONITOR prints
    each command with its client's address.
    """

    def __init__(self, host: str, port: int, prefix: str) -> None:
        self._sock = socket.create_connection((host, port), timeout=5)
        self._sock.sendall(b"MONITOR\r\n")
        self._line = re.compile(
            rb'\[\d+ ([\d.]+):\d+\] "EVAL(?:SHA)?" "(?:[^"\\]|\\.)*" "\d+" "\{'
            + re.escape(prefix.encode())
            + rb':(\d+)\}:timers"'
        )
        self.by_host: dict[str, set[int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        self._sock.settimeout(0.2)
        buffer = b""
        while not self._stop.is_set():
            try:
                chunk = self._sock.recv(1 << 16)
            except TimeoutError:
                continue
            if not chunk:
                return
            *lines, buffer = (buffer + chunk).split(b"\r\n")
            for line in lines:
                found = self._line.search(line)
                if found:
                    self.by_host.setdefault(found[1].decode(), set()).add(int(found[2]))

    def close(self) -> dict[str, set[int]]:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()
        return self.by_host


@contextlib.contextmanager
def bridge_servers(ip: str) -> Iterator[tuple[str, str]]:
    """Embedded valkey and tansu listening on ``ip``: their URL and bootstrap."""
    valkey, url = start_redis(host=ip)
    with valkey:
        tansu, bootstrap = start_kafka(host=ip)
        with tansu:
            yield url, bootstrap


def start_process(
    host: Host, env: dict[str, str], index: int, addresses: str, log: Path, *extra: str
) -> subprocess.Popen[bytes]:
    """``tetik run --process-id index --addresses addresses`` inside ``host``."""
    command = [
        PYTHON, "-m", "cli.main", "run", "--snapshot-interval", "0.5",
        "--process-id", str(index), "--addresses", addresses, *extra,
    ]  # fmt: skip
    with log.open("wb") as out:
        return host.popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


@pytest.mark.integration
def test_a_cluster_across_two_hosts_emits_what_replay_does(
    hosts: TwoHosts, tmp_path: Path, unique: str
) -> None:
    started = time.monotonic()
    with bridge_servers(hosts.bridge_ip) as (url, bootstrap):
        session = Live(url, bootstrap, unique, tmp_path)
        env = {**session.env, "TETIK_RECOVERY_DIR": str(tmp_path / "recovery")}
        ensure_topics(bootstrap, from_env(env).topic_layout())
        docs = shoppers(now_ms() + 2000, 24)
        expected = expected_actions(RULES, docs)
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        writers = ShardWriters(hosts.bridge_ip, port, unique)
        addresses = ",".join(f"{host.ip}:{PORT}" for host in hosts.hosts)
        logs = [tmp_path / f"process-{i}.log" for i in (0, 1)]
        rules = ("--rules", str(session.rules_file()))
        procs = [
            start_process(hosts.a, env, 0, addresses, logs[0], *rules),
            start_process(hosts.b, env, 1, addresses, logs[1]),
        ]
        try:
            produce(bootstrap, session.events, docs)
            emitted = wait_for_actions(bootstrap, session.actions, len(expected), timeout=40)
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            codes = [proc.wait(STOP_S) for proc in procs]
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()
            by_host = writers.close()
    outputs = [log.read_text(errors="replace") for log in logs]
    print(
        f"two hosts: {tally(expected, emitted)}; shards by host {by_host}; "
        f"{time.monotonic() - started:.1f} s"
    )
    assert codes == [0, 0], outputs
    assert sorted(map(comparable, emitted)) == sorted(map(comparable, expected)), outputs
    counts = tally(expected, emitted)
    assert counts.duplicates == counts.missing == counts.unexpected == 0, counts
    assert all("running:" in out for out in outputs), outputs
    assert set(by_host) == {hosts.a.ip, hosts.b.ip}, by_host  # each host wrote states
    assert not by_host[hosts.a.ip] & by_host[hosts.b.ip], by_host  # each shard from one host


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--process-id", "0"], "go together"),
        (["--addresses", "10.0.0.2:2101,10.0.0.3:2101"], "go together"),
        (["--process-id", "2", "--addresses", "10.0.0.2:2101,10.0.0.3:2101"], "0 to 1"),
        (["--process-id", "0", "--addresses", "a:1,b:1", "--processes", "2"], "spans hosts"),
    ],
)
def test_run_refuses_a_half_given_cluster(
    args: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert tetik(["run", *args]) == 2
    err = capsys.readouterr().err
    assert says in err
    assert len(err.strip().splitlines()) == 1
