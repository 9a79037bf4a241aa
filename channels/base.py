"""The one interface between the delivery job and the outside world.

A :class:`Channel` adapter takes one :class:`~engine.actions.Action` and hands
it to a target (an SMTP server, a webhook, a Kafka topic, a Redis inbox, a
file). Rules of this interface, which every adapter keeps and
``tests/channels/test_contract.py`` checks:

* ``send`` never raises for a delivery problem. It returns a :class:`Delivery`
  whose ``outcome`` is ``delivered`` (the target accepted the action),
  ``bounced`` (the target refused it for good: no address, a permanent 4xx/5xx,
  no content for the channel; retrying cannot help) or ``failed`` (a transient
  problem -- connection refused, timeout, 5xx, 429 -- that outlasted the
  adapter's retries; the caller parks the action in a dead-letter topic so it
  can be re-driven). ``detail`` says why, in one line, for humans.
* ``send`` is safe to call twice with the same action: where the target can
  deduplicate, the second call delivers nothing new (the onsite inbox keeps one
  entry per ``action_id``; a webhook gets the same ``Idempotency-Key``); where
  it cannot (SMTP, Kafka, a file), the ``action_id`` travels with the delivery
  so a reader can, and the caller's ledger keeps repeats to crash windows.
* Actions with status ``suppressed`` are never given to ``send``: the caller
  filters them (they are a record of a decision, not something to deliver).
* ``close`` releases connections and files; the adapter is not used after it.
* An adapter is used from one thread at a time.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import msgspec
import tenacity

from engine.actions import Action

Outcome = Literal["delivered", "bounced", "failed"]


class Delivery(msgspec.Struct, frozen=True, kw_only=True):
    """What happened to one action at one adapter."""

    action_id: str
    channel: str
    adapter: str
    outcome: Outcome
    detail: str = ""
    attempts: int = 1


class Channel(Protocol):
    """A delivery adapter; see the module docstring for the rules."""

    name: str

    def send(self, action: Action) -> Delivery: ...

    def close(self) -> None: ...


# What one attempt at the target came to: "retry" is a transient problem,
# "fatal" one that retrying right away cannot fix (bad credentials) but a later
# re-drive may, so it ends as `failed` without using up the retries.
Verdict = Literal["delivered", "bounced", "retry", "fatal"]


class Attempt(msgspec.Struct, frozen=True):
    """The verdict of one attempt and why; ``wait`` is a server's Retry-After (s)."""

    verdict: Verdict
    detail: str = ""
    wait: float = 0.0


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff and jitter.

    Attempt ``n`` (0-based) waits between half and all of
    ``min(cap, base * 2**n)`` seconds before the next try ("equal jitter"), so
    adapters that failed together do not retry in lockstep, yet each wait has
    a floor. ``retries`` counts the tries after the first one.
    """

    retries: int = 3
    base: float = 0.2
    cap: float = 5.0

    def delay(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        ceiling = min(self.cap, self.base * 2.0**attempt)
        return ceiling / 2 + rng() * ceiling / 2


class _Stopped(Exception):
    """The caller's stop event was set during a backoff."""


def with_retries(
    attempt: Callable[[], Attempt],
    policy: RetryPolicy,
    stop: threading.Event | None = None,
) -> tuple[Attempt, int]:
    """Run ``attempt`` until it is not ``retry`` or the retries are spent (tenacity).

    Returns the last attempt and how many were made. Each wait is the
    policy's :meth:`RetryPolicy.delay`, or the server's ``Retry-After``
    (:attr:`Attempt.wait`) when longer, never past the policy's cap. A set
    ``stop`` event cuts a backoff short and ends with the last verdict (the
    caller sees it as ``failed``), so a shutdown never waits for a long backoff.
    """
    made: list[Attempt] = []

    def once() -> Attempt:
        made.append(attempt())
        return made[-1]

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_result(lambda result: result.verdict == "retry"),
        stop=tenacity.stop_after_attempt(policy.retries + 1) | _stop_set(stop),
        wait=lambda state: _pause(policy, state),
        sleep=_sleeper(stop),
        retry_error_callback=lambda _state: made[-1],
    )
    try:
        result = retrying(once)
    except _Stopped:
        result = made[-1]
    return result, len(made)


def _pause(policy: RetryPolicy, state: tenacity.RetryCallState) -> float:
    """The policy's delay, or the server's Retry-After when longer; capped."""
    outcome = state.outcome
    asked = outcome.result().wait if outcome is not None and not outcome.failed else 0.0
    return min(max(policy.delay(state.attempt_number - 1), asked), policy.cap)


def _stop_set(stop: threading.Event | None) -> tenacity.stop.stop_base:
    return tenacity.stop_when_event_set(stop) if stop is not None else tenacity.stop_never


def _sleeper(stop: threading.Event | None) -> Callable[[float], None]:
    if stop is None:
        return time.sleep

    def sleep(seconds: float) -> None:
        if stop.wait(seconds):
            raise _Stopped

    return sleep


def outcome_of(verdict: Verdict) -> Outcome:
    """The public outcome of a final verdict."""
    if verdict == "delivered":
        return "delivered"
    return "bounced" if verdict == "bounced" else "failed"


def delivery(action: Action, adapter: str, result: Attempt, attempts: int = 1) -> Delivery:
    """The :class:`Delivery` for ``action`` after its final attempt."""
    return Delivery(
        action_id=action.action_id,
        channel=action.channel,
        adapter=adapter,
        outcome=outcome_of(result.verdict),
        detail=result.detail,
        attempts=attempts,
    )
