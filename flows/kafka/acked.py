"""A Kafka producer whose sends an asyncio task awaits until the broker acknowledges.

Rules of this interface:

* :meth:`AckedProducer.send` hands every record of a request to librdkafka
  (non-blocking ``produce``; a full local queue is waited out without
  blocking the event loop) and returns once the broker acknowledged them all
  (``acks=all`` in the settings given), or raises :class:`NotDelivered` with
  the first error: a caller answers "taken" only for what Kafka holds.
* Acknowledgements arrive on one poller thread (``poll``), which wakes the
  waiting request once per request, not once per record; so many requests
  wait at once and throughput does not depend on one request's round trip.
* :meth:`start` starts the poller; :meth:`close` stops it and flushes what
  is still queued, for at most ``timeout`` seconds, and returns how many
  records were left unsent (0 when all went).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Producer

Headers = list[tuple[str, str | bytes | None]]


@dataclass(frozen=True, slots=True)
class Record:
    """One record to produce."""

    topic: str
    value: bytes
    key: bytes | None = None
    headers: Headers = field(default_factory=list)


class NotDelivered(Exception):
    """The broker did not take a record (its error), or the local queue stayed full."""


class _Pending:
    """One request's records in flight; resolves its future when the last one is settled."""

    def __init__(self, loop: asyncio.AbstractEventLoop, count: int) -> None:
        self.loop = loop
        self.future: asyncio.Future[str] = loop.create_future()
        self.remaining = count
        self.error = ""

    def settled(self, err: Any, _msg: Any) -> None:
        """The delivery callback (on the poller thread, the only one that calls it)."""
        if err is not None and not self.error:
            self.error = str(err)
        self.remaining -= 1
        if self.remaining == 0:
            # A closed loop (RuntimeError) has nobody waiting any more.
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        if not self.future.done():
            self.future.set_result(self.error)


class AckedProducer:
    """Produce records and await their acknowledgement (see the module rules)."""

    def __init__(self, config: Mapping[str, Any], queue_wait_s: float = 10.0) -> None:
        self._producer = Producer(dict(config))
        self._queue_wait_s = queue_wait_s
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="tetik-acks", daemon=True)

    def start(self) -> None:
        """Start the thread that receives acknowledgements."""
        self._poller.start()

    async def send(self, records: Sequence[Record]) -> None:
        """Produce ``records`` in order and wait until every one is acknowledged."""
        if not records:
            return
        pending = _Pending(asyncio.get_running_loop(), len(records))
        for record in records:
            await self._produce(record, pending)
        error = await pending.future
        if error:
            raise NotDelivered(error)

    async def _produce(self, record: Record, pending: _Pending) -> None:
        deadline = time.monotonic() + self._queue_wait_s
        while True:
            try:
                self._producer.produce(
                    record.topic,
                    record.value,
                    key=record.key,
                    headers=record.headers,
                    on_delivery=pending.settled,
                )
                return
            except BufferError:  # the local queue is full: let the broker catch up
                if time.monotonic() > deadline:
                    raise NotDelivered("the producer's queue stayed full") from None
                await asyncio.sleep(0.01)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.1)

    def close(self, timeout: float = 10.0) -> int:
        """Stop the poller, flush what is queued; the count of records left unsent."""
        self._stop.set()
        if self._poller.is_alive():
            self._poller.join()
        left: int = self._producer.flush(timeout)
        return left
