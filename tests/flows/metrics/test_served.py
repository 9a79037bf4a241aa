"""``tetik run --metrics-port`` and ``tetik deliver --metrics-port``, scraped over HTTP.

Both jobs run as real processes on the session's servers; a few shoppers buy
(an email at once), one adds to a cart (a reminder an hour later: a timer
pending) and one record is not an event. The endpoints must show what
happened: events by outcome, actions with their labels, the latency
histogram, lag, timers pending, deliveries; and answer the probes.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from flows.servers.process import free_port
from tests.flows.live import Live, event, live, produce

pytestmark = pytest.mark.integration

RULES = """\
version: 1
consent: {email: opt_out}
templates:
  thanks: {email: {subject: "Thank you"}}
  cart: {email: {subject: "Your cart"}}
journeys:
  - id: thanks
    trigger: purchase
    steps:
      - send: email
        template: thanks
  - id: cart
    trigger: add_to_cart
    steps:
      - wait: 1h
      - send: email
        template: cart
"""

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def session(redis_url: str, kafka_bootstrap: str, unique: str, tmp_path: Path) -> Iterator[Live]:
    with live(redis_url, kafka_bootstrap, unique, tmp_path) as found:
        yield found


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(port: int) -> Samples:
    status, text = get(port, "/metrics")
    assert status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def until(port: int, done: Callable[[Samples], bool], timeout: float = 15) -> Samples:
    """Scrape until ``done`` holds (or the timeout: the last scrape, for the assertion)."""
    deadline = time.monotonic() + timeout
    found: Samples = {}
    while time.monotonic() < deadline:
        try:
            found = scrape(port)
        except OSError:  # not listening yet
            found = {}
        if done(found):
            break
        time.sleep(0.2)
    return found


def lags(found: Samples) -> Samples:
    return {k: v for k, v in found.items() if k[0] == "tetik_consumer_lag"}


def caught_up(found: Samples) -> bool:
    """A lag of 0 for each of the events topic's 4 partitions."""
    return len(lags(found)) == 4 and set(lags(found).values()) == {0.0}


def start_deliver(session: Live, port: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "cli.main", "deliver", "--metrics-port", str(port)]
    out = (session.workdir / "deliver.log").open("ab")
    env = {**session.env, "TETIK_DELIVER_GROUP": f"{session.name}-deliver"}
    proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    session.procs.append(proc)
    return proc


def test_run_and_deliver_serve_what_they_did(session: Live) -> None:
    engine_port, deliver_port = free_port(), free_port()
    engine = session.start(
        "--rules", str(session.rules_file(RULES)), "--metrics-port", str(engine_port)
    )
    deliver = start_deliver(session, deliver_port)
    now = int(time.time() * 1000)
    docs = [event(n, f"u{n}", "purchase", now) for n in range(3)]
    docs.append(event(9, "u9", "add_to_cart", now, product_id="p1", price=5.0))
    produce(session.bootstrap, session.events, docs, paced=False)
    produce(session.bootstrap, session.events, [{"type": "nonsense"}], paced=False)

    delivered = (
        "tetik_deliveries_total",
        (("channel", "email"), ("outcome", "delivered"), ("reason", "none")),
    )
    found = until(deliver_port, lambda s: s.get(delivered) == 3 and bool(lags(s)))
    assert found.get(delivered) == 3, session.log("deliver.log")
    assert set(lags(found).values()) == {0.0}  # the partitions it has read from
    assert get(deliver_port, "/readyz") == (200, "ok\n")

    sent = (
        "tetik_actions_total",
        (("channel", "email"), ("journey", "thanks"), ("reason", "none"), ("status", "sent")),
    )
    applied = ("tetik_events_total", (("outcome", "applied"),))
    timers = ("tetik_timers_pending", (("shard", str(_shard_of("u9"))),))
    # 4 events, and the 3 `delivered` engagement events tetik deliver fed back
    found = until(
        engine_port, lambda s: s.get(applied) == 7 and s.get(timers) == 1 and caught_up(s)
    )
    assert found.get(applied) == 7, session.log()
    assert found.get(("tetik_events_total", (("outcome", "invalid"),))) == 1
    assert found.get(sent) == 3
    assert found[("tetik_event_to_action_seconds_count", ())] == 3
    assert 0 < found[("tetik_event_to_action_seconds_sum", ())] < 30
    assert found.get(timers) == 1
    assert caught_up(found), lags(found)  # every partition of the events topic, read
    assert get(engine_port, "/healthz") == (200, "ok\n")
    assert get(engine_port, "/readyz") == (200, "ok\n")
    assert get(engine_port, "/nothing")[0] == 404
    assert session.stop(engine) == 0
    assert session.stop(deliver) == 0


def _shard_of(identity: str) -> int:
    from flows.stores.keys import DEFAULT_SHARDS, shard_of

    return shard_of(identity, DEFAULT_SHARDS)
