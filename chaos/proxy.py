"""A delaying TCP proxy on loopback, to make a broker (or any server) answer late.

Rules of this interface:

* :class:`DelayProxy` listens on ``127.0.0.1`` and forwards every connection to
  a loopback target; it refuses a target that is not on loopback.
* Each direction has its own delay: ``to_server_ms`` for client -> server
  bytes, ``to_client_ms`` for server -> client bytes (e.g. 40 ms on every
  broker response). A delay is latency, not throughput: each chunk is held
  until its own arrival time plus the delay, and chunks keep their order.
* :meth:`DelayProxy.set_delay` changes the delays while it runs; chunks
  already held keep the delay they arrived with.
* Bounded: at most ``max_connections`` connections at once (more are closed
  at once), and at most ``max_held`` bytes held per direction of a
  connection (reading pauses until the held bytes drain).
* It runs an asyncio loop in one daemon thread; :meth:`start` returns once it
  listens, :meth:`stop` closes every connection and the listener. A Kafka
  broker advertises its address in metadata, so start the broker advertising
  the proxy's port (``flows.servers.embedded.start_kafka(advertised_port=...)``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import threading
import time
from dataclasses import dataclass

__all__ = ["DelayProxy"]

_CHUNK = 64 * 1024


@dataclass
class _Delays:
    to_server_ms: float = 0.0
    to_client_ms: float = 0.0


class DelayProxy:
    """Forward ``127.0.0.1:port`` to ``target_host:target_port`` with delays (module rules)."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        to_server_ms: float = 0.0,
        to_client_ms: float = 0.0,
        port: int = 0,
        max_connections: int = 64,
        max_held: int = 16 * 1024 * 1024,
    ) -> None:
        if not _loopback(target_host):
            raise ValueError(f"the proxy forwards to loopback only, not {target_host!r}")
        self.target = (target_host, target_port)
        self._delays = _Delays(to_server_ms, to_client_ms)
        self._wanted_port = port
        self._max_connections = max_connections
        self._max_held = max_held
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._listener: socket.socket | None = None
        self._acceptor: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self.port = 0
        self.accepted = 0  # connections accepted so far

    @property
    def address(self) -> str:
        """``127.0.0.1:port`` for clients."""
        return f"127.0.0.1:{self.port}"

    def set_delay(
        self, to_server_ms: float | None = None, to_client_ms: float | None = None
    ) -> None:
        """Change either delay (milliseconds) for the chunks that arrive from now on."""
        if to_server_ms is not None:
            self._delays.to_server_ms = to_server_ms
        if to_client_ms is not None:
            self._delays.to_client_ms = to_client_ms

    def start(self) -> DelayProxy:
        """Listen and forward in a background thread; return once listening."""
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the proxy did not start listening within 10 s")
        return self

    def stop(self) -> None:
        """Close every connection and the listener, then end the thread (idempotent)."""
        if self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._thread = None
        self._loop.close()

    def __enter__(self) -> DelayProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- the loop's side ---------------------------------------------------

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self._wanted_port))
        listener.listen(128)
        listener.setblocking(False)
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._acceptor = self._loop.create_task(self._serve(listener))
        ready.set()
        self._loop.run_forever()

    async def _serve(self, listener: socket.socket) -> None:
        while True:
            conn, _ = await self._loop.sock_accept(listener)
            if self._closing:
                conn.close()
                break
            if len(self._tasks) >= self._max_connections:
                conn.close()
                continue
            self.accepted += 1
            task = self._loop.create_task(self._handle(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        with contextlib.suppress(OSError):  # close what is still in the backlog
            while True:
                listener.accept()[0].close()

    async def _close(self) -> None:
        self._closing = True
        # Wake the acceptor with a connection of our own (cancelling it could lose
        # a socket it had just accepted), then end every forwarding task.
        waker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        waker.setblocking(False)
        with contextlib.suppress(OSError):
            await self._loop.sock_connect(waker, ("127.0.0.1", self.port))
        if self._acceptor is not None:
            await self._acceptor
        waker.close()
        if self._listener is not None:
            self._listener.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, conn: socket.socket) -> None:
        writers: list[asyncio.StreamWriter] = []
        try:
            reader, writer = await asyncio.open_connection(sock=conn)
            writers.append(writer)
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            writers.append(up_writer)
            await asyncio.gather(
                self._pump(reader, up_writer, "to_server_ms"),
                self._pump(up_reader, writer, "to_client_ms"),
            )
        except OSError:
            pass
        finally:
            for one in writers:
                one.close()
            if not writers:
                conn.close()
            await asyncio.sleep(0)  # let the transports close their sockets

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str
    ) -> None:
        """Copy ``reader`` to ``writer``, each chunk released at arrival + delay."""
        held: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        room = asyncio.Semaphore(max(self._max_held // _CHUNK, 1))
        sender = asyncio.ensure_future(self._release(held, writer, room))
        try:
            while True:
                await room.acquire()
                data = await reader.read(_CHUNK)
                if not data:
                    break
                delay = getattr(self._delays, direction) / 1000
                held.put_nowait((time.monotonic() + delay, data))
        except (ConnectionError, OSError):
            pass
        finally:
            held.put_nowait((0.0, b""))  # end of stream, after everything held
            with contextlib.suppress(ConnectionError, OSError):
                await sender

    @staticmethod
    async def _release(
        held: asyncio.Queue[tuple[float, bytes]],
        writer: asyncio.StreamWriter,
        room: asyncio.Semaphore,
    ) -> None:
        while True:
            due, data = await held.get()
            if not data:
                writer.close()
                return
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
            room.release()


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
        except OSError:
            return False
