"""The storefront of a chaos run: a thread that sends the workload to ``events`` at a pace.

Rules of this interface:

* Each record's ``ts`` is the wall clock when it is sent, never less than the
  previous record's (so the log's time never runs backwards, as replay
  assumes). What was sent, in order, is kept: :meth:`Feed.valid_lines` is the
  log that replay runs on, :meth:`Feed.poison` the records that must end in
  ``events.dlq``. Only records the broker acknowledged count.
* Each record's delay from its ``ts`` to the broker's acknowledgement is
  measured: a shopper whose event reached the broker later than the engine's
  lateness allows is named by :meth:`Feed.late_events` (a loaded machine can
  hold a record back for seconds; no engine can order a timer after an event
  it has not been given).
* One request in flight per connection: a retried batch (a broker restart)
  cannot overtake the next one, so each partition keeps the ``ts`` order.
* ``rate`` > 0 paces the records (records/s) until :meth:`Feed.finish` or
  ``limit`` valid records; ``rate`` 0 sends ``limit`` valid records (and the
  poison among them) as fast as the broker takes them: a backlog.
  ``hold_after`` > 0 stops after that many valid records until :attr:`Feed.go`
  is set (a warm-up before a measured burst).
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator

from confluent_kafka import KafkaError, Message, Producer

from chaos.compare import Poison
from chaos.workload import Outgoing
from flows.kafka.connection import client_config
from flows.kafka.producer import send_record

__all__ = ["Feed"]

PRODUCER_CONFIG = {
    "linger.ms": 5,
    "acks": "all",
    "max.in.flight.requests.per.connection": 1,
    "message.timeout.ms": 300_000,  # ride out a broker restart
    "log.connection.close": False,  # a server stopped on purpose is no news
}


# Acknowledgements later than this after the record's ts are remembered (for
# :meth:`Feed.late_events`); the engine's lateness is never below it.
LATE_NOTE_MS = 20


class Feed(threading.Thread):
    """Sends ``records`` to ``topic`` on ``bootstrap`` (see the module rules)."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        records: Iterator[Outgoing],
        *,
        rate: float,
        limit: int | None = None,
        hold_after: int = 0,
    ) -> None:
        super().__init__(daemon=True, name="chaos-feed")
        if rate <= 0 and limit is None:
            raise ValueError("an unpaced feed needs a limit")
        self._config = client_config(bootstrap, PRODUCER_CONFIG)
        self._topic, self._records, self._rate, self._limit = topic, records, rate, limit
        self._halt = threading.Event()
        self._sent: list[tuple[bytes, str]] = []  # (value, poison kind or "")
        self._acked: list[bool] = []
        self._keys: list[bytes] = []
        self._stamps: list[int] = []  # each record's ts (ms), for the acknowledgement delay
        self._late: list[tuple[bytes, int, int]] = []  # (key, ts, delay ms) over LATE_NOTE_MS
        self.worst_ack_ms = 0  # the longest ts -> acknowledged delay seen (a slow broker)
        self.worst_ack_at = 0  # the ts of that record
        self.failures: list[str] = []
        self.last_ts = 0
        self.valid_sent = 0
        self._hold_after = hold_after
        self.go = threading.Event()  # releases a feed held after ``hold_after`` records

    @property
    def sent(self) -> int:
        return len(self._sent)

    def run(self) -> None:
        # Made and dropped here: a producer left behind would log the servers' stop.
        producer = Producer(self._config)
        start = time.monotonic()
        for record in self._records:
            if self._halt.is_set() or (self._limit is not None and self.valid_sent >= self._limit):
                break
            self._send(producer, record)
            if self.valid_sent == self._hold_after:
                producer.flush(30)
                self.go.wait()
                start = time.monotonic()
            if self._rate > 0:
                ahead = self.sent / self._rate - (time.monotonic() - start)
                if ahead > 0.002:
                    time.sleep(ahead)
        producer.flush(120)

    def _send(self, producer: Producer, record: Outgoing) -> None:
        now = max(self.last_ts, time.time_ns() // 1_000_000)
        value = record.value(now)
        index = len(self._sent)
        self._sent.append((value, record.kind))
        self._acked.append(False)
        self._stamps.append(now)
        self._keys.append(record.key)
        if not record.kind:
            self.last_ts = now
            self.valid_sent += 1
        send_record(producer, self._topic, record.key, value, functools.partial(self._ack, index))

    def _ack(self, index: int, err: KafkaError | None, _msg: Message) -> None:
        if err is None:
            self._acked[index] = True
            delay = time.time_ns() // 1_000_000 - self._stamps[index]
            if delay > self.worst_ack_ms:
                self.worst_ack_ms, self.worst_ack_at = delay, self._stamps[index]
            if delay > LATE_NOTE_MS:
                self._late.append((self._keys[index], self._stamps[index], delay))
        else:
            self.failures.append(str(err))

    def late_events(self, lateness_ms: int, return_ms: int) -> dict[str, list[tuple[int, int]]]:
        """Per shopper, ``(ts, reached)`` of each event that reached the broker more than
        ``lateness_ms`` after its ts (``reached``: its acknowledgement less the answer's
        ``return_ms``). The engine cannot order a timer after an event it has not been
        given (ARCHITECTURE, the clock)."""
        late: dict[str, list[tuple[int, int]]] = {}
        for key, ts, delay in self._late:
            if delay - return_ms > lateness_ms:
                shopper = key.decode(errors="replace")
                late.setdefault(shopper, []).append((ts, ts + delay - return_ms))
        return late

    def finish(self, timeout: float = 150) -> None:
        """Stop sending and wait until every record is acknowledged (or failed)."""
        self._halt.set()
        self.join(timeout)

    def valid_lines(self) -> list[bytes]:
        """The valid records the broker acknowledged, in the order they were sent."""
        return [v for (v, kind), ok in zip(self._sent, self._acked, strict=True) if ok and not kind]

    def poison(self) -> list[Poison]:
        """The poison records the broker acknowledged."""
        return [
            Poison(kind=kind, value=v)
            for (v, kind), ok in zip(self._sent, self._acked, strict=True)
            if ok and kind
        ]

    def unacked(self) -> int:
        return self._acked.count(False)
