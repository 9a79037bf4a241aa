"""A circuit breaker per channel route: a dead target fails fast instead of slowly.

Rules of this interface:

* Closed (the normal state): every send goes through. ``failures``
  consecutive ``failed`` outcomes (transient problems that outlasted the
  adapter's retries: refused connections, timeouts, 5xx) open the circuit.
  A ``delivered`` or ``bounced`` outcome resets the count: the target
  answered.
* Open: for ``cooldown_s`` seconds no send is attempted; :meth:`admit`
  returns the reason, e.g. ``connection refused ... (circuit open 30s)``,
  and the caller fails the action with it at once (the deliver job
  dead-letters it, so it can be re-driven).
* Half-open: after the cool-down one trial send is let through (others
  still fail fast); its success closes the circuit, its failure opens it for
  another cool-down.
* ``failures`` 0 turns the breaker off. Thread-safe: the sends of one
  route's pool share one breaker. The clock is injectable for tests.

Hand-written rather than ``pybreaker``: the adapters report failures as
returned outcomes, not exceptions, and the reason a circuit is open (the
last failure's detail and the cool-down) must travel into the dead letter.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from channels.base import Delivery

CIRCUIT_OPEN = "circuit open"  # in the detail of every action the open circuit refused
DEFAULT_FAILURES = 5
DEFAULT_COOLDOWN_S = 30.0


@dataclass(frozen=True)
class BreakerPolicy:
    """When a route's circuit opens, and for how long."""

    failures: int = DEFAULT_FAILURES
    cooldown_s: float = DEFAULT_COOLDOWN_S


class CircuitBreaker:
    """Consecutive failures open the circuit for a cool-down; see the module docstring."""

    def __init__(
        self, policy: BreakerPolicy = BreakerPolicy(), clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._lock = threading.Lock()
        self._failed = 0
        self._opened_at: float | None = None
        self._trial = False
        self._last = ""

    def admit(self) -> str | None:
        """None when a send may go ahead; else why not, for the action's detail."""
        with self._lock:
            if self._opened_at is None:
                return None
            if self._clock() - self._opened_at >= self.policy.cooldown_s and not self._trial:
                self._trial = True  # half-open: this caller is the trial send
                return None
            return f"{self._last} ({CIRCUIT_OPEN} {self.policy.cooldown_s:g}s)"

    def record(self, result: Delivery) -> None:
        """Count a send's outcome (only sends that :meth:`admit` let through)."""
        with self._lock:
            if result.outcome != "failed":
                self._failed, self._opened_at, self._trial = 0, None, False
                return
            self._failed += 1
            self._last = result.detail
            tripped = self.policy.failures and self._failed >= self.policy.failures
            if self._trial or tripped:
                self._opened_at, self._trial = self._clock(), False

    @property
    def is_open(self) -> bool:
        with self._lock:
            return self._opened_at is not None
