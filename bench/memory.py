"""Redis memory per active user with the default windows.

Users' states are built by the pure core from a generated clickstream (about
20 events per user, the calibrated mix), written to a fresh embedded Redis in
pipelined batches as the ingest flow writes them, and measured two ways:
``INFO memory`` used_memory delta per user (includes Redis' per-key overhead)
and the mean ``MEMORY USAGE`` of the keys.
"""

from __future__ import annotations

from typing import Any

import orjson
import redis

from bench.generator import GeneratorConfig, generate
from bench.report import save_result, table
from engine.events import decode_event
from engine.state import UserState, apply, dumps
from engine.windows import DEFAULT_CONFIG
from flows.embedded import servers
from flows.ingest import now_ms
from flows.jobs import say
from flows.store import StateStore, state_ttl_ms


def _states(users: int) -> dict[str, UserState]:
    cfg = GeneratorConfig(
        users=users, events=users * 20, seed=5, start_ms=now_ms() - 86_400_000, span_ms=86_400_000
    )
    states: dict[str, UserState] = {}
    now = now_ms()
    for doc in generate(cfg):
        event = decode_event(orjson.dumps(doc))
        state = states.setdefault(event.key, UserState(key=event.key))
        apply(state, event, now)
    return states


def _measure(client: redis.Redis, users: int) -> dict[str, Any]:
    states = _states(users)
    store = StateStore(client, prefix=f"mem{users}", ttl_ms=state_ttl_ms(DEFAULT_CONFIG))
    before = int(client.info("memory")["used_memory"])
    items = [(k, dumps(s)) for k, s in states.items()]
    for start in range(0, len(items), 1000):
        store.write(items[start : start + 1000], {})
    after = int(client.info("memory")["used_memory"])
    sample = [store.key(k) for k in list(states)[:2000]]
    usage = [int(client.memory_usage(k) or 0) for k in sample]
    return {
        "users": len(states),
        "used_memory_delta_per_user": (after - before) / len(states),
        "memory_usage_mean": sum(usage) / len(usage),
        "value_bytes_mean": sum(len(v) for _, v in items) / len(items),
        "events_per_user": sum(s.events for s in states.values()) / len(states),
    }


def bench_memory(*, quick: bool = False) -> dict[str, Any]:
    """Measure at 10k and 100k users (quick: 2k and 10k)."""
    sizes = (2_000, 10_000) if quick else (10_000, 100_000)
    with servers(kafka=False, progress=say) as endpoints:
        client = redis.Redis.from_url(endpoints.redis_url)
        rows = []
        for size in sizes:
            say(f"bench memory: {size:,} users")
            rows.append(_measure(client, size))
    print(
        table(
            ["users", "events/user", "value B", "MEMORY USAGE B", "used_memory delta B/user"],
            [
                [
                    f"{r['users']:,}",
                    f"{r['events_per_user']:.1f}",
                    f"{r['value_bytes_mean']:.0f}",
                    f"{r['memory_usage_mean']:.0f}",
                    f"{r['used_memory_delta_per_user']:.0f}",
                ]
                for r in rows
            ],
        )
    )
    result = {"sizes": rows}
    save_result("memory", result)
    return result
