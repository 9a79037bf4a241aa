"""The hand-written baseline of ``tetik bench e2e``: the journey of :mod:`bench.journey`, by hand.

What a competent team would write without tetik: one consumer-group process
with a confluent-kafka ``Consumer`` and ``Producer``, orjson, and two Lua
scripts in Redis. Run it as::

    python -m bench.handwritten --bootstrap HOST:PORT --redis URL \\
        --events TOPIC --actions TOPIC --prefix PREFIX [--group GROUP]

It runs until SIGTERM or SIGINT, then flushes the producer, closes the
consumer (committing its offsets) and exits 0.

Rules (the same journey tetik runs from :data:`bench.journey.RULES`):

* A record is usable when it is a JSON object with ``event_id``, ``type``, an
  identity (``user_id``, else ``anon_id``) and ``ts`` (epoch ms, or RFC 3339
  with an offset); anything else is skipped and counted.
* Every record read, usable or not and duplicates included, adds one to
  ``{prefix}:hw:processed`` (the harness reads it to measure throughput).
* Each usable event costs exactly one Redis round trip (:data:`EVENT_LUA`):
  dedupe by ``event_id``, the counter, then what the event means:

  - ``add_to_cart`` with ``price >= MIN_PRICE``: enrol (identity, product)
    unless it was ever enrolled; send ``onsite`` (step ``"0"``) at once, at
    the event's ``ts``, and schedule ``email`` (step ``"2"``) at
    ``ts + WAIT_MS``;
  - ``purchase``: end every pending enrollment of the user;
    ``remove_from_cart``: end the one of that product;
  - ``consent`` for ``email``/``onsite``, and an ``engagement`` of kind
    ``unsubscribed`` (which revokes consent, SPEC section 1): the user's
    decision for the channel; the decision with the latest event time wins.

* Consent is opt-out, checked when the send happens: a channel whose latest
  decision is ``granted: false`` gives a ``suppressed`` action with reason
  ``no_consent``.
* Timers: at most every :data:`TICK_MS`, one round trip (:data:`FIRE_LUA`)
  pops the emails due by the wall clock, checking email consent then.
* Actions go to the actions topic (key = identity) as SPEC section 4 JSON;
  event-caused ones carry ``ingested_at`` (the consumed record's Kafka
  timestamp), timer-fired ones do not.

* No identity stitching (SPEC section 7): a record's shopper is its
  ``user_id``, else its ``anon_id``; a login does not merge the device's
  enrollments or consent into the user's. tetik does, so the two emit the
  same actions only on logs without anonymous sessions
  (``tests/bench/test_handwritten.py``), and in ``tetik bench e2e`` tetik
  does more work per event (the report says so).

Redis keys, all under ``{prefix}:hw:`` and all with a TTL of :data:`TTL_S`
(from the last write; for ``processed``, from its creation):
``processed`` (counter), ``seen:{event_id}`` (dedupe), ``consent:{identity}``
(hash: channel -> ``1``/``0`` and ``{channel}:ts``), ``enrolled:{identity}``
(hash: product -> entry ts; enrolled ever), ``active:{identity}`` (set of the
user's pending ``due`` members) and ``due`` (sorted set of pending emails,
member ``["identity","product"]``, score the due time). The fire script
builds per-user key names from the prefix, so it needs a single Redis (not
a cluster).
"""

from __future__ import annotations

import argparse
import hashlib
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any

import orjson
import redis
from confluent_kafka import Consumer, Message, Producer

from bench.journey import JOURNEY, MIN_PRICE, WAIT_MS

TTL_S = 30 * 24 * 3600  # keys expire 30 days after their last write
TICK_MS = 100  # the timer round trip runs at most this often
FIRE_LIMIT = 1000  # due emails popped per timer round trip
POLL_S = 0.05
RULES_VERSION = "handwritten"
CONSENT_CHANNELS = ("email", "onsite")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)

# KEYS: processed, seen, consent, due, active, enrolled
# ARGV: op, ttl, extra (skipped records to count too), ts, subject, flag, due, member
# Returns {1, onsite_allowed} when the event enrolled the user, else {0}.
EVENT_LUA = """
local ttl = tonumber(ARGV[2])
local add = 1 + tonumber(ARGV[3])
if redis.call('INCRBY', KEYS[1], add) == add then redis.call('EXPIRE', KEYS[1], ttl) end
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ttl) then return {0} end
local op, ts, subject = ARGV[1], ARGV[4], ARGV[5]
if op == 'enter' then
  if redis.call('HSETNX', KEYS[6], subject, ts) == 0 then return {0} end
  redis.call('EXPIRE', KEYS[6], ttl)
  redis.call('ZADD', KEYS[4], ARGV[7], ARGV[8])
  redis.call('EXPIRE', KEYS[4], ttl)
  redis.call('SADD', KEYS[5], ARGV[8])
  redis.call('EXPIRE', KEYS[5], ttl)
  return {1, redis.call('HGET', KEYS[3], 'onsite') == '0' and 0 or 1}
elseif op == 'exit_one' then
  redis.call('ZREM', KEYS[4], ARGV[8])
  redis.call('SREM', KEYS[5], ARGV[8])
elseif op == 'exit_all' then
  local members = redis.call('SMEMBERS', KEYS[5])
  if #members > 0 then redis.call('ZREM', KEYS[4], unpack(members)) end
  redis.call('DEL', KEYS[5])
elseif op == 'consent' then
  local last = tonumber(redis.call('HGET', KEYS[3], subject .. ':ts') or '-1')
  if tonumber(ts) >= last then
    redis.call('HSET', KEYS[3], subject, ARGV[6], subject .. ':ts', ts)
    redis.call('EXPIRE', KEYS[3], ttl)
  end
end
return {0}
"""

# KEYS: due, processed
# ARGV: now, limit, prefix, extra (skipped records to count), ttl
# Returns a flat list: member, due, email_allowed (1/0) per popped entry.
FIRE_LUA = """
local extra = tonumber(ARGV[4])
if extra > 0 and redis.call('INCRBY', KEYS[2], extra) == extra then
  redis.call('EXPIRE', KEYS[2], ARGV[5])
end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, ARGV[2])
local out = {}
for i = 1, #due, 2 do
  local member = due[i]
  local identity = cjson.decode(member)[1]
  redis.call('ZREM', KEYS[1], member)
  redis.call('SREM', ARGV[3] .. ':hw:active:' .. identity, member)
  local email = redis.call('HGET', ARGV[3] .. ':hw:consent:' .. identity, 'email')
  out[#out + 1] = member
  out[#out + 1] = due[i + 1]
  out[#out + 1] = email == '0' and 0 or 1
end
return out
"""


@dataclass(frozen=True)
class Options:
    """Command-line settings."""

    bootstrap: str
    redis_url: str
    events: str
    actions: str
    prefix: str
    group: str


@dataclass(frozen=True, slots=True)
class Plan:
    """What one usable event means for the journey (``op`` as in :data:`EVENT_LUA`)."""

    identity: str
    event_id: str
    ts: int
    op: str = "none"
    subject: str = ""  # the product (enter, exit_one) or the channel (consent)
    flag: str = ""  # consent: "1" granted, "0" revoked


def now_ms() -> int:
    """The wall clock, epoch ms."""
    return time.time_ns() // 1_000_000


def parse_ts(value: object) -> int | None:
    """Epoch ms from an int, or from an RFC 3339 string with an offset; None if neither."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if value >= 0 else None
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return (moment - _EPOCH) // _MS


def plan(raw: bytes | None) -> Plan | None:
    """The plan for one record value; None when the record is not usable."""
    try:
        doc = orjson.loads(raw or b"")
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    identity = doc.get("user_id") or doc.get("anon_id")
    event_id, kind, ts = doc.get("event_id"), doc.get("type"), parse_ts(doc.get("ts"))
    if not (isinstance(identity, str) and isinstance(event_id, str) and event_id):
        return None
    if not isinstance(kind, str) or ts is None:
        return None
    op, subject, flag = _meaning(doc, kind)
    return Plan(identity, event_id, ts, op, subject, flag)


def _meaning(doc: dict[str, Any], kind: str) -> tuple[str, str, str]:
    """``(op, subject, flag)``: entry, exit or consent change; ``none`` for anything else."""
    product, channel = doc.get("product_id"), doc.get("channel")
    if kind == "add_to_cart" and isinstance(product, str) and _price_ok(doc.get("price")):
        return "enter", product, ""
    if kind == "remove_from_cart" and isinstance(product, str):
        return "exit_one", product, ""
    if kind == "purchase":
        return "exit_all", "", ""
    if not isinstance(channel, str) or channel not in CONSENT_CHANNELS:
        return "none", "", ""
    granted = doc.get("granted")
    if kind == "consent" and isinstance(granted, bool):
        return "consent", channel, "1" if granted else "0"
    if kind == "engagement" and doc.get("kind") == "unsubscribed":
        return "consent", channel, "0"
    return "none", "", ""


def _price_ok(price: object) -> bool:
    """The entry condition ``price >= MIN_PRICE`` (a missing price never enters)."""
    return isinstance(price, int | float) and not isinstance(price, bool) and price >= MIN_PRICE


def due_member(identity: str, product: str) -> bytes:
    """The member of the ``due`` sorted set (and ``active`` set) for one enrollment."""
    return orjson.dumps([identity, product])


def action(
    identity: str,
    product: str,
    step: str,
    channel: str,
    at: int,
    allowed: bool,
    ingested_at: int | None = None,
) -> dict[str, Any]:
    """One SPEC section 4 action; ``action_id`` hashes identity, journey, product, step."""
    raw = "\x1f".join((identity, JOURNEY, product, step)).encode()
    doc: dict[str, Any] = {
        "action_id": hashlib.sha1(raw).hexdigest()[:32],
        "at": at,
        "user_id": identity,
        "journey": JOURNEY,
        "step": step,
        "channel": channel,
        "template": None,
        "status": "sent" if allowed else "suppressed",
    }
    if not allowed:
        doc["reason"] = "no_consent"
    doc["rules_version"] = RULES_VERSION
    doc["content"] = None
    if ingested_at is not None:
        doc["ingested_at"] = ingested_at
    return doc


class Service:
    """The consume -> Redis -> produce loop of the baseline."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.hw = f"{opts.prefix}:hw"
        self.redis = redis.Redis.from_url(opts.redis_url)
        self.on_event = self.redis.register_script(EVENT_LUA)
        self.fire = self.redis.register_script(FIRE_LUA)
        self.consumer = Consumer(_consumer_config(opts))
        self.producer = Producer({"bootstrap.servers": opts.bootstrap})
        self.unreported = 0  # skipped records not yet added to the processed counter
        self.read = self.skipped = self.emitted = 0
        self.next_tick = 0

    def run(self, stop: threading.Event) -> None:
        """Poll one record at a time until ``stop``; fire due emails every tick."""
        self.consumer.subscribe([self.opts.events], on_assign=_assigned)
        while not stop.is_set():
            message = self.consumer.poll(POLL_S)
            if message is not None:
                self.handle(message)
            now = now_ms()
            if now >= self.next_tick:
                full = self.tick(now)
                self.next_tick = now if full else now + TICK_MS

    def handle(self, message: Message) -> None:
        """One consumed record: count it; for a usable event, one script call."""
        if message.error() is not None:
            say(f"consumer error: {message.error()}")
            return
        self.read += 1
        event = plan(message.value())
        if event is None:
            self.skipped += 1
            self.unreported += 1
            return
        product = event.subject if event.op in ("enter", "exit_one") else ""
        member = due_member(event.identity, product)
        extra, self.unreported = self.unreported, 0
        due = event.ts + WAIT_MS
        args: list[str | int | bytes] = [event.op, TTL_S, extra, event.ts, event.subject]
        args += [event.flag, due, member]
        result = self.on_event(keys=self._event_keys(event), args=args)
        if int(result[0]) == 1:
            allowed, ingested = int(result[1]) == 1, _kafka_ms(message)
            self.emit(action(event.identity, product, "0", "onsite", event.ts, allowed, ingested))

    def _event_keys(self, event: Plan) -> list[str]:
        hw, who = self.hw, event.identity
        return [
            f"{hw}:processed",
            f"{hw}:seen:{event.event_id}",
            f"{hw}:consent:{who}",
            f"{hw}:due",
            f"{hw}:active:{who}",
            f"{hw}:enrolled:{who}",
        ]

    def tick(self, now: int) -> bool:
        """Pop the emails due by ``now`` and emit them; True when the batch was full."""
        extra, self.unreported = self.unreported, 0
        flat: list[Any] = self.fire(
            keys=[f"{self.hw}:due", f"{self.hw}:processed"],
            args=[now, FIRE_LIMIT, self.opts.prefix, extra, TTL_S],
        )
        for i in range(0, len(flat), 3):
            identity, product = orjson.loads(flat[i])
            due = int(float(flat[i + 1]))
            self.emit(action(identity, product, "2", "email", due, int(flat[i + 2]) == 1))
        return len(flat) // 3 >= FIRE_LIMIT

    def emit(self, doc: dict[str, Any]) -> None:
        """Produce one action (key = identity); no flush per message."""
        key, value = doc["user_id"].encode(), orjson.dumps(doc)
        while True:
            try:
                self.producer.produce(self.opts.actions, value=value, key=key)
                break
            except BufferError:  # local queue full: let deliveries drain
                self.producer.poll(0.1)
        self.producer.poll(0)
        self.emitted += 1

    def close(self) -> None:
        """Count what is still uncounted, flush the producer, close the consumer."""
        if self.unreported:
            self.tick(0)  # counts them; fires nothing (nothing is due at time 0)
        left = self.producer.flush(10)
        self.consumer.close()
        self.redis.close()
        say(f"read {self.read}, skipped {self.skipped}, emitted {self.emitted}, unsent {left}")


def _consumer_config(opts: Options) -> dict[str, Any]:
    """Group settings tansu needs to join fast, and a short fetch wait."""
    return {
        "bootstrap.servers": opts.bootstrap,
        "group.id": opts.group,
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 500,
        "max.poll.interval.ms": 10000,
        "fetch.wait.max.ms": 20,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": True,
    }


def _assigned(_consumer: Consumer, partitions: list[Any]) -> None:
    say(f"assigned {len(partitions)} partitions")


def _kafka_ms(message: Message) -> int:
    """The consumed record's Kafka timestamp (epoch ms); the wall clock if it has none."""
    _kind, stamp = message.timestamp()
    return int(stamp) if stamp and stamp > 0 else now_ms()


def say(text: str) -> None:
    """A log line on stderr."""
    print(f"handwritten: {text}", file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None = None) -> Options:
    """The command line of ``python -m bench.handwritten``."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.handwritten",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--bootstrap", required=True, help="Kafka HOST:PORT")
    parser.add_argument("--redis", required=True, help="Redis URL")
    parser.add_argument("--events", required=True, help="events topic to consume")
    parser.add_argument("--actions", required=True, help="actions topic to produce to")
    parser.add_argument("--prefix", required=True, help="Redis key prefix ({prefix}:hw:...)")
    parser.add_argument("--group", default="bench-handwritten", help="consumer group id")
    ns = parser.parse_args(argv)
    return Options(ns.bootstrap, ns.redis, ns.events, ns.actions, ns.prefix, ns.group)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the baseline until SIGTERM or SIGINT; 0 after a clean close."""
    opts = parse_args(argv)
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    service = Service(opts)
    try:
        service.run(stop)
    finally:
        service.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
