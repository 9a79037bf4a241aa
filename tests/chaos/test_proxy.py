"""The delaying TCP proxy: delays per direction, changed while running, bounded, loopback."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from chaos.proxy import DelayProxy


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture
def echo() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _round_trip(port: int, payload: bytes = b"ping") -> tuple[float, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        start = time.monotonic()
        conn.sendall(payload)
        got = b""
        while len(got) < len(payload):
            got += conn.recv(65536)
        return time.monotonic() - start, got


def test_each_direction_has_its_delay_and_it_changes_while_running(echo: int) -> None:
    with DelayProxy("127.0.0.1", echo, to_client_ms=40) as proxy:
        took, got = _round_trip(proxy.port)
        assert got == b"ping"
        assert 0.040 <= took < 0.5
        proxy.set_delay(to_server_ms=30, to_client_ms=0)
        took, _ = _round_trip(proxy.port)
        assert 0.030 <= took < 0.5
        proxy.set_delay(to_server_ms=0)
        took, _ = _round_trip(proxy.port)
        assert took < 0.030


def test_a_delay_is_latency_and_chunks_keep_their_order(echo: int) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB, many chunks
    with DelayProxy("127.0.0.1", echo, to_client_ms=50) as proxy:
        took, got = _round_trip(proxy.port, payload)
    assert got == payload
    assert 0.050 <= took < 2.0  # not 50 ms per chunk


def test_connections_beyond_the_bound_are_closed(echo: int) -> None:
    with DelayProxy("127.0.0.1", echo, max_connections=1) as proxy:
        first = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        first.sendall(b"a")
        assert first.recv(1) == b"a"
        second = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        assert second.recv(1) == b""  # closed by the proxy
        second.close()
        first.close()


def test_only_loopback_targets_and_stop_closes_everything(echo: int) -> None:
    with pytest.raises(ValueError, match="loopback"):
        DelayProxy("8.8.8.8", 53)
    proxy = DelayProxy("127.0.0.1", echo).start()
    conn = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    proxy.stop()
    assert conn.recv(1) == b""
    conn.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=1)
