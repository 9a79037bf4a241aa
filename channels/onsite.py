"""The onsite adapter: a per-user inbox in Redis that the storefront reads.

Layout (one inbox per identity key; ``user`` is ``action.user_id``). The keys
are named by the caller's :class:`InboxKeys` -- tetik's key layout,
:class:`flows.stores.keys.Keys` -- so nothing here spells a key:

* ``keys.inbox(user)`` -- a hash ``action_id -> message JSON`` (the SPEC
  section 4 action object, so the storefront renders ``content``);
  ``{P:onsite:USER}`` with prefix ``P``;
* ``keys.inbox_order(user)`` -- a sorted set of the same action ids, scored
  by the action's ``at``, so the inbox reads newest first;
  ``{P:onsite:USER}:order``.

Both keys of one inbox share a hash tag (the script below writes them
together, which a Redis Cluster allows only within one slot); different
inboxes have different tags, so they spread over a cluster's nodes.

Rules:

* Idempotent: one Lua script adds the message only if the hash has no field
  for that ``action_id`` (``HSETNX``), so sending the same action twice, or
  from two deliverers at once, leaves one entry. The hash is the dedupe
  record and the content at once, so nothing can grow beside the inbox.
* Bounded: after an add, entries beyond ``max_items`` are dropped oldest
  (lowest ``at``) first, from both keys, in the same script. A late repeat of
  an action already trimmed away is re-added and, being the oldest, trimmed
  again at once.
* Expiring: each send refreshes both keys' time-to-live (``ttl_ms``), so an
  inbox nobody writes to for that long disappears.
* A Redis connection problem is retried with backoff, then ``failed``.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

import msgspec
import redis

from channels.base import Attempt, Delivery, RetryPolicy, delivery, with_retries
from engine.actions import Action, to_json
from engine.durations import DAY

DEFAULT_TTL_MS = 7 * DAY
DEFAULT_MAX_ITEMS = 50

# KEYS: inbox hash, order zset. ARGV: action_id, message, at, max_items, ttl_ms.
# Returns 1 when the message was added, 0 when the inbox already had it.
_ADD = """
local added = redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
if added == 1 then
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
  local extra = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
  if extra > 0 then
    local old = redis.call('ZRANGE', KEYS[2], 0, extra - 1)
    redis.call('ZREMRANGEBYRANK', KEYS[2], 0, extra - 1)
    redis.call('HDEL', KEYS[1], unpack(old))
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return added
"""


class InboxKeys(Protocol):
    """Where a user's inbox lives: the two keys must share a Redis Cluster slot."""

    def inbox(self, user: str) -> str:
        """The hash of one user's inbox messages."""
        ...

    def inbox_order(self, user: str) -> str:
        """The sorted set that orders one user's inbox."""
        ...


class OnsiteChannel:
    """Writes actions into the users' Redis inboxes."""

    name = "onsite"

    def __init__(
        self,
        client: redis.Redis,
        keys: InboxKeys,
        *,
        ttl_ms: int = DEFAULT_TTL_MS,
        max_items: int = DEFAULT_MAX_ITEMS,
        retry: RetryPolicy | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        if ttl_ms < 1 or max_items < 1:
            raise ValueError(f"ttl_ms and max_items must be >= 1, got {ttl_ms}, {max_items}")
        self.client = client
        self.keys = keys
        self.ttl_ms = ttl_ms
        self.max_items = max_items
        self.retry = retry or RetryPolicy()
        self._stop = stop
        self._add = client.register_script(_ADD)

    def send(self, action: Action) -> Delivery:
        result, tries = with_retries(lambda: self._attempt(action), self.retry, self._stop)
        return delivery(action, self.name, result, tries)

    def _attempt(self, action: Action) -> Attempt:
        keys = [self.keys.inbox(action.user_id), self.keys.inbox_order(action.user_id)]
        args: list[bytes | str | int] = [
            action.action_id,
            to_json(action),
            action.at,
            self.max_items,
            self.ttl_ms,
        ]
        try:
            added = self._add(keys=keys, args=args)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            return Attempt("retry", f"redis unavailable: {exc}")
        except redis.RedisError as exc:
            return Attempt("fatal", f"redis refused the inbox write: {exc}")
        return Attempt("delivered", "added to inbox" if added else "already in inbox")

    def close(self) -> None:
        """The client belongs to the caller (it is shared with the ledger)."""


_message = msgspec.json.Decoder(dict[str, Any])


def read_inbox(client: redis.Redis, keys: InboxKeys, user: str) -> list[dict[str, Any]]:
    """A user's inbox messages, newest first (empty when there is none)."""
    pipe = client.pipeline(transaction=True)
    pipe.zrevrange(keys.inbox_order(user), 0, -1)
    pipe.hgetall(keys.inbox(user))
    ids, messages = pipe.execute()
    return [_message.decode(messages[i]) for i in ids if i in messages]
