"""A template over its rendering budget suppresses only its own send (``template_error``)."""

from __future__ import annotations

import time

import orjson
import pytest

from engine.journeys import Engine
from engine.replay import replay
from engine.rules.loader import load_rules

HOSTILE = {
    "nested range loops": "{% for i in range(100000) %}{% for j in range(100000) %}"
    "{{ i }}{% endfor %}{% endfor %}",
    "1 MB of output": "{{ 'x' * 10000 }}" * 110,
    "string multiplication": "{{ 'a' * 1000000000 }}",
}

RULES = """\
version: 1
consent: {email: opt_out, sms: opt_out}
caps:
  - {channel: email, max: 1, per: 1d}
templates:
  greedy:
    email: {subject: "Hi {{ profile.first_name }}", body: BODY}
  fine:
    email: {subject: "Hello", body: "{{ cart.count }} items"}
journeys:
  - id: greedy
    trigger: signup
    steps:
      - send: email
        template: greedy
      - send: email
        template: fine
  - id: other
    trigger: signup
    steps:
      - send: sms
"""


def lines(users: int) -> list[bytes]:
    return [
        orjson.dumps({"event_id": f"e{i}", "type": "signup", "ts": 1_000 + i, "user_id": f"u{i}"})
        for i in range(users)
    ]


@pytest.mark.parametrize("body", HOSTILE.values(), ids=HOSTILE.keys())
def test_the_send_is_suppressed_and_everything_else_goes_on(body: str) -> None:
    text = RULES.replace("BODY", orjson.dumps(body).decode())
    engine = Engine(load_rules(text, "r.yaml"))
    started = time.monotonic()
    actions = replay(engine, lines(5), drain=True)
    seconds = time.monotonic() - started
    rows = sorted((a.user_id, a.journey, a.step, a.status, a.reason) for a in actions)
    assert rows == sorted(
        row
        for i in range(5)
        for row in (
            (f"u{i}", "greedy", "0", "suppressed", "template_error"),
            (f"u{i}", "greedy", "1", "sent", None),  # the cap was not used by the failed send
            (f"u{i}", "other", "0", "sent", None),
        )
    )
    fine = [a for a in actions if a.journey == "greedy" and a.status == "sent"]
    assert {orjson.dumps(a.content).decode() for a in fine} == {
        '{"subject":"Hello","body":"0 items"}'
    }
    assert all(a.content is None for a in actions if a.status == "suppressed")
    assert seconds < 2.0  # five budgets of ~10 ms each; unbounded, one render took minutes
