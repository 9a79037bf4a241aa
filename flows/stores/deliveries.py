"""The delivery ledger: which actions already reached an outcome (``tetik deliver``).

Rules of this interface:

* One key per action, :meth:`flows.stores.keys.Keys.delivered` (``{P:delivered:A}``:
  a tag of its own, so on a Redis Cluster the ledger spreads over every node):
  ``SET key "<outcome> <adapter> <ms>" NX PX <ttl>``. :meth:`DeliveryLedger.record`
  is written right after the adapter returns ``delivered`` or ``bounced``;
  :meth:`DeliveryLedger.seen` is read before sending, so an action in the ledger is
  never sent again (see :mod:`flows.jobs.deliver` for what that guarantees, and where
  it stops).
* NX: the first outcome recorded stays; a later one changes nothing.
* Redis faults are retried until Redis answers (:func:`flows.retry.retrying`, one
  line per wait): both calls are idempotent, and the client comes from
  :func:`flows.retry.connect`, which leaves retrying to it.
* The retention (default :data:`LEDGER_TTL_MS`, 30 days) must outlast the actions
  topic's, or an action re-read after its key expired is sent again.
"""

from __future__ import annotations

from typing import Final

import redis

from channels.base import Delivery
from engine.durations import DAY
from flows.clock import Clock, wall_ms
from flows.retry import retrying
from flows.stores.keys import Keys

__all__ = ["LEDGER_TTL_MS", "DeliveryLedger"]

LEDGER_TTL_MS: Final = 30 * DAY


class DeliveryLedger:
    """Which actions already reached an outcome (see the module docstring)."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        ttl_ms: int = LEDGER_TTL_MS,
        clock: Clock = wall_ms,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl_ms = ttl_ms
        self.clock = clock
        self._keys = Keys(prefix)

    def key(self, action_id: str) -> str:
        return self._keys.delivered(action_id)

    def seen(self, action_id: str) -> str | None:
        """The recorded outcome of an action, or None when it was never delivered."""
        value = retrying(
            "reading the delivery ledger", lambda: self.client.get(self.key(action_id))
        )
        return None if value is None else bytes(value).decode().split(" ", 1)[0]  # type: ignore[arg-type]

    def record(self, result: Delivery) -> None:
        """Note ``result``'s outcome, unless the action has one already."""
        value = f"{result.outcome} {result.adapter} {self.clock()}"
        key = self.key(result.action_id)
        retrying(
            "writing the delivery ledger",
            lambda: self.client.set(key, value, nx=True, px=self.ttl_ms),
        )
