"""``tetik bench segments-replay``: ``tetik segments`` over 1M purchase events (<= 30 s).

The goal (issue 13): ``tetik segments`` on 1M purchase events of 100k
shoppers takes at most 30 s. The log: 100,000 shoppers (quick: 10,000) and
ten purchases each on average (a geometric count, most shoppers buy a few
times, some many), spread over the two years before the report's moment,
each with one to three items in the guide's categories, a revenue, and a
``props.discount_pct`` on one purchase in four; one shopper in five also
signs up. The rules are the Black Friday guide's segments
(``examples/black_friday.yaml``: 25 segments, RFM among them).

Measured: :func:`flows.jobs.segment_report.run_segments` as ``tetik
segments --rules examples/black_friday.yaml --events LOG --at T --out F``
runs it (reading and validating the log, replaying it, computing RFM at
``T`` and evaluating every segment for every shopper), best of
``RUNS``; writing the log is not measured. Reported: seconds, events per
second, shoppers, and members per segment (a check that the segments find
people).
"""

from __future__ import annotations

import contextlib
import io
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from bench.tables import table
from engine.events import parse_ts
from flows.jobs.segment_report import run_segments
from flows.report import say

EVENTS = 1_000_000
QUICK_EVENTS = 100_000
PER_SHOPPER = 10  # purchases per shopper on average: 100k shoppers for 1M events
GOAL_S = 30.0
RUNS = 1
RULES = Path(__file__).resolve().parent.parent / "examples" / "black_friday.yaml"
AT = parse_ts("2024-11-15T12:00:00+03:00")
SPAN_MS = 730 * 86_400_000
CATEGORIES = ("shoes", "apparel/skirt", "electronics/phone", "home/kitchen", "beauty")


def write_log(path: Path, events: int, seed: int = 13) -> int:
    """Write ``events`` purchases (and some sign-ups) of ``events / PER_SHOPPER``
    shoppers, in time order; return the number of shoppers."""
    rng = random.Random(seed)
    shoppers = max(1, events // PER_SHOPPER)
    stamps = sorted(AT - rng.randrange(SPAN_MS) for _ in range(events))
    docs: list[tuple[int, bytes]] = []
    for n, ts in enumerate(stamps):
        user = f"u{min(shoppers - 1, int(rng.expovariate(1.0) * shoppers / 4)) % shoppers:06d}"
        prices = [round(rng.lognormvariate(4, 0.8), 2) for _ in range(rng.randint(1, 3))]
        items = [
            {"product_id": f"p{rng.randrange(5000)}", "category": rng.choice(CATEGORIES),
             "price": price, "quantity": 1}
            for price in prices
        ]  # fmt: skip
        doc: dict[str, Any] = {
            "event_id": f"o{n}", "type": "purchase", "ts": ts, "user_id": user,
            "order_id": f"o{n}", "items": items, "revenue": round(sum(prices), 2),
        }  # fmt: skip
        if rng.random() < 0.25:
            doc["props"] = {"discount_pct": rng.choice((10, 20, 30))}
        docs.append((ts, orjson.dumps(doc)))
    for k in range(0, shoppers, 5):
        ts = AT - SPAN_MS - 86_400_000 + k
        docs.append((ts, orjson.dumps({"event_id": f"s{k}", "type": "signup", "ts": ts,
                                       "user_id": f"u{k:06d}"})))  # fmt: skip
    docs.sort(key=lambda d: d[0])
    path.write_bytes(b"\n".join(line for _, line in docs) + b"\n")
    return shoppers


def bench_segments_replay(*, quick: bool = False, events: int = 0) -> dict[str, Any]:
    """Time ``tetik segments`` on the generated log; print and return the figures."""
    n = events or (QUICK_EVENTS if quick else EVENTS)
    with tempfile.TemporaryDirectory(prefix="tetik-bench-seg-") as tmp:
        log, out = Path(tmp) / "events.jsonl", Path(tmp) / "segments.jsonl"
        say(f"bench segments-replay: writing {n:,} purchase events")
        shoppers = write_log(log, n)
        best = float("inf")
        counts: dict[str, int] = {}
        for run in range(RUNS):
            say(f"bench segments-replay: tetik segments, run {run + 1}/{RUNS}")
            err = io.StringIO()
            started = time.perf_counter()
            with contextlib.redirect_stderr(err):
                code = run_segments(str(RULES), str(log), at=AT, out=str(out))
            best = min(best, time.perf_counter() - started)
            if code != 0:
                raise RuntimeError(f"tetik segments failed: {err.getvalue()[-500:]}")
            counts = _counts(err.getvalue())
        rows = sum(1 for _ in out.open("rb"))
    result = {
        "events": n,
        "shoppers": shoppers,
        "users_written": rows,
        "seconds": round(best, 2),
        "events_per_s": round(n / best),
        "goal_s": GOAL_S,
        "met": best <= GOAL_S if not quick else None,
        "members": counts,
    }
    print(segments_replay_table(result))
    return result


def segments_replay_table(result: dict[str, Any]) -> str:
    """The figures as a Markdown table."""
    verdict = {None: " (indicative: quick run)", True: " met", False: " MISSED"}[result["met"]]
    return table(
        ["events", "shoppers", "seconds", "events/s", "goal"],
        [[f"{result['events']:,}", f"{result['users_written']:,}", f"{result['seconds']:.1f}",
          f"{result['events_per_s']:,}", f"<= {GOAL_S:.0f} s{verdict}"]],
    )  # fmt: skip


def _counts(stderr: str) -> dict[str, int]:
    """``NAME: COUNT`` lines of ``tetik segments``' stderr."""
    found: dict[str, int] = {}
    for line in stderr.splitlines():
        name, _, count = line.partition(": ")
        if count.replace(",", "").isdigit() and " " not in name:
            found[name] = int(count.replace(",", ""))
    return found
