"""``tetik bench catalog-interest``: Redis bytes per (shopper, product) of the interest index.

Goal (issue 14): the interest index takes at most 120 bytes of Redis per
(shopper, product) pair.

The index is laid out as the shards write it (:mod:`flows.stores.catalog`):
per shard and product one hash ``{P:S}:interest:PID`` (``ShardKeys.interest``),
identity -> :func:`flows.stores.catalog.pack_interest` of an
:class:`engine.interest.Interest`, each identity in the shard
:func:`flows.stores.keys.shard_of` gives it (8 shards, the default). The
entries are written in bulk (one ``HSET`` per key, pipelined) into a Valkey
of the bench's own, so ``INFO`` sees nothing else.

The shoppers (:class:`Scenario`), calibrated on the samples in
``/work/shared/datasets`` (read in place) and on their full datasets' sizes:

* ``month`` (the goal's figure): a month of a REES46-like shop. Distinct
  products a shopper showed interest in: log-normal with the REES46
  sample's shape (per-user distinct products: median 1, mean 2.45, so
  sigma = 1.34) scaled to a month's mean of 9.4 (REES46 Oct 2019: 42.4M
  events of 3.0M users, 14 per user, times the sample's 0.7 distinct
  products per event); 0.055 products per shopper (its 166,794 products).
* ``deep``: Taobao-like heavy shoppers. Distinct products per shopper drawn
  from the Taobao sample's own per-user counts (pv/cart/fav over its ~9
  days: median 57, mean 78); 4.2 products per shopper (UserBehavior's 4.16M
  items for 988k users): a large catalogue, so most products have few
  shoppers.

In both, which products: Zipf-Mandelbrot popularity (s = 1.1, q = 15, the
generator's calibration: the top product takes 1.5 % of views, REES46 1.2 %),
so a few products have many shoppers and most have few; via: cart 5 %,
favorite 3 %, else view (Taobao's mix); price seen: log-normal, median 140,
in cents (the generator's); the interest's end within the next 30 days;
identities as the generator names them (``u0001234``; 30 % anonymous
``a-`` + 12 hex digits).

Measured: ``MEMORY USAGE key SAMPLES 0`` summed over the interest keys, and
``INFO`` ``used_memory`` before and after, each divided by the pairs. The
split: per encoding (listpack up to ``hash-max-listpack-entries`` fields,
512 in Valkey 8, else hashtable), for listpacks a least-squares line of
``MEMORY USAGE`` against the entries of each key gives the per-key overhead
(intercept) and the per-entry cost (slope); for hashtables (whose bucket
array doubles in steps) the bytes per entry; and the pairs and bytes per
pair by key size.
"""

from __future__ import annotations

import bisect
import csv
import itertools
import math
import random
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.tables import table
from engine.interest import Interest
from flows.jobs.progress import Bar
from flows.report import say
from flows.retry import RedisClient, connect
from flows.servers.embedded import servers
from flows.stores.catalog import pack_interest
from flows.stores.keys import Keys, shard_of

GOAL_BYTES = 120
TAOBAO = Path("/work/shared/datasets/taobao_userbehavior_sample.csv")
SHARDS = 8
NOW = 1_750_000_000_000
DAY = 86_400_000
ZIPF_S, ZIPF_Q = 1.1, 15.0
VIAS = ("cart", "favorite", "view")
VIA_WEIGHTS = (0.05, 0.03, 0.92)
ANON_SHARE = 0.3
SIZES = (
    (1, 1),
    (2, 4),
    (5, 16),
    (17, 128),
    (129, 512),
    (513, 10**9),
)  # entries per key, for the split


@dataclass(frozen=True)
class Scenario:
    """A generated shopper base (see the module docstring)."""

    name: str
    shoppers: int
    products_per_shopper: float  # catalogue size / shoppers
    mean_products: float = 9.4  # log-normal draw (when not from the Taobao sample)
    sigma: float = 1.34
    from_taobao: bool = False

    @property
    def products(self) -> int:
        return max(1, round(self.shoppers * self.products_per_shopper))


def scenarios(quick: bool) -> list[Scenario]:
    scale = 10 if quick else 1
    return [
        Scenario("month", 200_000 // scale, 0.055),
        Scenario("deep", 20_000 // scale, 4.2, from_taobao=True),
    ]


def taobao_counts(path: Path = TAOBAO) -> list[int]:
    """Distinct products per user with a view, cart or favorite in the Taobao sample."""
    seen: dict[str, set[str]] = defaultdict(set)
    with path.open(newline="") as handle:
        for row in csv.reader(handle):
            if len(row) == 5 and row[3] in ("pv", "cart", "fav"):
                seen[row[0]].add(row[1])
    return sorted(len(items) for items in seen.values())


class _Zipf:
    """Product ranks drawn by Zipf-Mandelbrot popularity."""

    def __init__(self, n: int) -> None:
        weights = [1.0 / ((rank + ZIPF_Q) ** ZIPF_S) for rank in range(1, n + 1)]
        self.cum = list(itertools.accumulate(weights))
        self.n = n

    def distinct(self, rng: random.Random, k: int) -> set[int]:
        k = min(k, self.n)
        found: set[int] = set()
        total = self.cum[-1]
        while len(found) < k:
            found.add(min(self.n - 1, bisect.bisect_right(self.cum, rng.random() * total)))
        return found


def entries(scenario: Scenario, seed: int = 14) -> dict[tuple[int, str], dict[str, bytes]]:
    """(shard, product id) -> identity -> packed interest, for the scenario's shoppers."""
    rng = random.Random(seed)
    zipf = _Zipf(scenario.products)
    counts = taobao_counts() if scenario.from_taobao else None
    mu = math.log(scenario.mean_products) - scenario.sigma**2 / 2
    keys: dict[tuple[int, str], dict[str, bytes]] = defaultdict(dict)
    for n in range(scenario.shoppers):
        anonymous = rng.random() < ANON_SHARE
        identity = f"a-{rng.getrandbits(48):012x}" if anonymous else f"u{n:07d}"
        shard = shard_of(identity, SHARDS)
        if counts is not None:
            k = rng.choice(counts)
        else:
            k = max(1, round(rng.lognormvariate(mu, scenario.sigma)))
        for rank in zipf.distinct(rng, k):
            via = rng.choices(VIAS, VIA_WEIGHTS)[0]
            price = round(140 * rng.lognormvariate(0.0, 0.8), 2)
            expires = NOW + rng.randrange(30 * DAY)
            keys[(shard, f"p{rank:07d}")][identity] = pack_interest(Interest(via, price, expires))
    return keys


def _used(client: RedisClient) -> int:
    info: dict[str, Any] = client.info("memory")
    return int(info["used_memory"])


def write(client: RedisClient, keys: Keys, index: dict[tuple[int, str], dict[str, bytes]]) -> None:
    bar = Bar("catalog-interest: writing the index")
    items = list(index.items())
    chunk = 2_000
    for start in range(0, len(items), chunk):
        pipe = client.pipeline(transaction=False)
        for (shard, pid), fields in items[start : start + chunk]:
            pipe.hset(keys.shard(shard).interest(pid), mapping=fields)  # type: ignore[arg-type]
        pipe.execute()
        bar.update((start + chunk) / len(items))
    bar.close(f"{len(items):,} keys")


def usage(client: RedisClient, names: list[str]) -> list[tuple[int, int, str]]:
    """(MEMORY USAGE SAMPLES 0, HLEN, encoding) of each key."""
    found: list[tuple[int, int, str]] = []
    for start in range(0, len(names), 2_000):
        pipe = client.pipeline(transaction=False)
        for name in names[start : start + 2_000]:
            pipe.memory_usage(name, samples=0)
            pipe.hlen(name)
            pipe.object("encoding", name)
        got = pipe.execute()
        for i in range(0, len(got), 3):
            encoding = got[i + 2]
            encoding = encoding.decode() if isinstance(encoding, bytes) else str(encoding)
            found.append((int(got[i]), int(got[i + 1]), encoding))
    return found


def _line(points: list[tuple[int, int]]) -> tuple[float, float] | None:
    """Least-squares (intercept, slope) of bytes against entries; None without spread."""
    if len(points) < 2:
        return None
    xs = [x for x, _ in points]
    ys = [y for _, y in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx
    return my - slope * mx, slope


def _mean(points: list[tuple[int, int]]) -> float:
    """Bytes per entry over all ``(entries, bytes)`` points."""
    return round(sum(b for _, b in points) / max(1, sum(n for n, _ in points)), 1)


def split(measured: list[tuple[int, int, str]]) -> dict[str, Any]:
    """Per encoding: keys, pairs, bytes, and the per-key / per-entry line; per key size:
    pairs and bytes per pair."""
    by_encoding: dict[str, Any] = {}
    for encoding in sorted({e for _, _, e in measured}):
        mine = [(n, b) for b, n, e in measured if e == encoding]
        # A listpack grows by its entries' bytes: a line fits. A hashtable's bucket array
        # doubles in steps: no line; its cost per entry is its bytes over its entries.
        line = _line(mine) if encoding == "listpack" else None
        by_encoding[encoding] = {
            "keys": len(mine),
            "pairs": sum(n for n, _ in mine),
            "bytes": sum(b for _, b in mine),
            "per_key_bytes": None if line is None else round(line[0], 1),
            "per_entry_bytes": (
                round(line[1], 1) if line is not None else _mean(mine) if mine else None
            ),
        }
    by_size = []
    for low, high in SIZES:
        mine = [(n, b) for b, n, _ in measured if low <= n <= high]
        pairs = sum(n for n, _ in mine)
        by_size.append(
            {
                "entries": f"{low}" if low == high else f"{low}-{high if high < 10**9 else ''}",
                "keys": len(mine),
                "pairs": pairs,
                "bytes_per_pair": sum(b for _, b in mine) / pairs if pairs else None,
            }
        )
    return {"encodings": by_encoding, "sizes": by_size}


def measure(client: RedisClient, scenario: Scenario) -> dict[str, Any]:
    """Write the scenario's index, measure it, delete it; the figures."""
    say(f"bench catalog-interest: {scenario.name}: {scenario.shoppers:,} shoppers, "
        f"{scenario.products:,} products")  # fmt: skip
    index = entries(scenario)
    keys = Keys(f"bint{uuid.uuid4().hex[:6]}", SHARDS)
    names = [keys.shard(s).interest(pid) for s, pid in index]
    pairs = sum(len(fields) for fields in index.values())
    payload = sum(len(i) + len(v) for fields in index.values() for i, v in fields.items())
    before = _used(client)
    write(client, keys, index)
    after = _used(client)
    measured = usage(client, names)
    _unlink(client, names)
    assert sum(n for _, n, _ in measured) == pairs, "every pair is in Redis"
    total = sum(b for b, _, _ in measured)
    return {
        "scenario": scenario.name,
        "shoppers": scenario.shoppers,
        "products": scenario.products,
        "products_with_interest": len({pid for _, pid in index}),
        "keys": len(names),
        "pairs": pairs,
        "pairs_per_shopper": pairs / scenario.shoppers,
        "entries_per_key": pairs / len(names),
        "payload_bytes_per_pair": payload / pairs,
        "memory_usage_bytes_per_pair": total / pairs,
        "used_memory_bytes_per_pair": (after - before) / pairs,
        "split": split(measured),
        "listpack_max_entries": _listpack_max(client),
    }


def _listpack_max(client: RedisClient) -> int:
    """``hash-max-listpack-entries``: up to this many fields a hash stays a listpack."""
    config: dict[str, str] = client.config_get("hash-max-listpack-entries")  # type: ignore[assignment]
    return int(config.get("hash-max-listpack-entries", 0))


def _unlink(client: RedisClient, names: list[str]) -> None:
    for start in range(0, len(names), 10_000):
        client.unlink(*names[start : start + 10_000])


def interest_memory(redis_url: str, chosen: list[Scenario]) -> dict[str, Any]:
    client = connect(redis_url)
    results = [measure(client, scenario) for scenario in chosen]
    return {
        "scenarios": results,
        "bytes_per_pair": results[0]["memory_usage_bytes_per_pair"],
        "goal_bytes": GOAL_BYTES,
    }


def bench_catalog_interest(*, quick: bool = False, shoppers: int = 0) -> dict[str, Any]:
    """Measure each scenario on a Valkey of its own (module docstring); print the tables."""
    chosen = scenarios(quick)
    if shoppers:
        chosen = [
            Scenario(s.name, shoppers, s.products_per_shopper, from_taobao=s.from_taobao)
            for s in chosen
        ]
    with servers(kafka=False, progress=say) as endpoints:
        result = interest_memory(endpoints.redis_url, chosen)
    print(interest_table(result))
    return result


def interest_table(result: dict[str, Any]) -> str:
    rows = [
        [
            r["scenario"],
            f"{r['shoppers']:,}",
            f"{r['products_with_interest']:,} / {r['products']:,}",
            f"{r['pairs']:,}",
            f"{r['keys']:,}",
            f"{r['entries_per_key']:.1f}",
            f"{r['payload_bytes_per_pair']:.1f}",
            f"{r['memory_usage_bytes_per_pair']:.1f}",
            f"{r['used_memory_bytes_per_pair']:.1f}",
        ]
        for r in result["scenarios"]
    ]
    parts = [
        table(
            [
                "scenario",
                "shoppers",
                "products with interest / all",
                "pairs",
                "keys",
                "pairs per key",
                "field+value B/pair",
                "MEMORY USAGE B/pair",
                "used_memory B/pair",
            ],
            rows,
        )
    ]
    for r in result["scenarios"]:
        enc = [
            [
                name,
                f"{e['keys']:,}",
                f"{e['pairs']:,}",
                "-" if e["per_key_bytes"] is None else f"{e['per_key_bytes']:.0f}",
                "-" if e["per_entry_bytes"] is None else f"{e['per_entry_bytes']:.1f}",
                f"{e['bytes'] / e['pairs']:.1f}",
            ]
            for name, e in r["split"]["encodings"].items()
        ]
        sizes = [
            [
                s["entries"],
                f"{s['keys']:,}",
                f"{s['pairs']:,} ({s['pairs'] / r['pairs']:.0%})",
                "-" if s["bytes_per_pair"] is None else f"{s['bytes_per_pair']:.1f}",
            ]
            for s in r["split"]["sizes"]
        ]
        parts.append(
            f"**{r['scenario']}**, by encoding (listpack: per key and per entry from a line "
            "fitted to MEMORY USAGE against entries; hashtable: bytes per entry), then by "
            "key size:"
        )
        parts.append(
            table(["encoding", "keys", "pairs", "per key B", "per entry B", "B/pair"], enc)
        )
        parts.append(table(["entries per key", "keys", "pairs", "B/pair"], sizes))
    parts.append(f"Goal: <= {result['goal_bytes']} B per pair (the month scenario).")
    return "\n\n".join(parts)
