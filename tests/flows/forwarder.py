"""A plain TCP forwarder on loopback, for tests that put a broker behind another port.

A broker started with ``advertised_port=forwarder.port`` tells its clients to connect
there, so every client request goes through the forwarder: it proves the broker
advertises the given port rather than the one it listens on.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from flows.servers.process import HOST


class Forwarder:
    """Accept on ``HOST:port`` and pipe each connection to ``HOST:target`` both ways."""

    def __init__(self, port: int, target: int) -> None:
        self.port, self.target = port, target
        self.accepted = 0
        self._listener = socket.create_server((HOST, port))
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection((HOST, self.target))
            except OSError:  # the target is down (restarting): the client retries
                client.close()
                continue
            with self._lock:
                self.accepted += 1
                self._open += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for sock in self._open:
                # shutdown() wakes a thread blocked in recv() and ends the connection
                # for the peer; close() alone would leave both until that recv returns.
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def __enter__(self) -> Forwarder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
