"""The Markdown report of a ``tetik bench`` run: goals first, then every table."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.catalog_fanout import fanout_table
from bench.catalog_interest import interest_table
from bench.catalog_product import product_table
from bench.collect import collect_table
from bench.report import broker_label, table
from bench.rfm import rfm_table
from bench.scale import scale_tables
from bench.segments_live import segments_table
from bench.segments_replay import segments_replay_table

Goal = tuple[str, str, Callable[[dict[str, Any]], float | None], Callable[[float], bool], str]

GOALS: list[Goal] = [
    (
        "core",
        "core events/s, 100 journeys (one core)",
        lambda r: r["core"]["100"]["events_per_s"],
        lambda v: v >= 100_000,
        ">= 100,000",
    ),
    (
        "core",
        "core per-event time, 1,000 / 10 journeys",
        lambda r: r["ratio_1000_vs_10"],
        lambda v: v <= 2.0,
        "<= 2.0x",
    ),
    (
        "e2e",
        "live throughput, tetik / passthrough",
        lambda r: r["ratios"].get("throughput_tetik_vs_passthrough"),
        lambda v: v >= 0.6,
        ">= 0.6",
    ),
    (
        "e2e",
        "live throughput, tetik / hand-written",
        lambda r: r["ratios"].get("throughput_tetik_vs_handwritten"),
        lambda v: v >= 3.0,
        ">= 3.0x",
    ),
    (
        "e2e",
        "live p99 at half tetik's max, / the passthrough's p99 at the same load",
        lambda r: r["ratios"].get("p99_half_load_tetik_vs_passthrough_same_load"),
        lambda v: v <= 1.5,
        "<= 1.5x",
    ),
    (
        "e2e",
        "timer lateness p99 at half load (ms after due)",
        lambda r: r["systems"]["tetik"]["half_load"]["timer_lateness_ms"]["p99"],
        lambda v: v <= 50,
        "<= 50 ms",
    ),
    (
        "scale",
        "worker memory per pending enrollment (30k shoppers, 30-day waits, bytes)",
        lambda r: r["pending"]["bytes_per_enrollment"],
        lambda v: v <= 256,
        "<= 256",
    ),
    (
        "scale",
        "1M shoppers with pending waits (quick: 100k): engine peak RSS (MiB)",
        lambda r: r["base"]["rss_peak_mib"],
        lambda v: v <= 1024,
        "<= 1,024",
    ),
    (
        "scale",
        "1M shoppers with pending waits (quick: 100k): Redis bytes per shopper",
        lambda r: r["base"]["redis_bytes_per_shopper"],
        lambda v: v <= 2048,
        "<= 2,048",
    ),
    (
        "scale",
        "restart after kill -9, 100k pending (quick: 20k): processing again (s)",
        lambda r: r["restart"]["processing_s"],
        lambda v: v <= 10,
        "<= 10 s",
    ),
    (
        "rfm",
        "RFM boundaries over 1M shoppers (quick: 100k), the engine's implementation (s)",
        lambda r: r["bounds_s_engine"],
        lambda v: v <= 2.0,
        "<= 2 s",
    ),
    (
        "segments",
        "live recheck sweep of 1M shoppers' segments (quick: 100k), one worker (s)",
        lambda r: r["seconds"],
        lambda v: v <= 60,
        "<= 60 s (quick: 6 s)",
    ),
    (
        "segments-replay",
        "tetik segments on 1M purchase events / 100k shoppers (quick: 100k / 10k) (s)",
        lambda r: r["seconds"],
        lambda v: v <= 30,
        "<= 30 s",
    ),
    (
        "history",
        "all-time rollups of an active shopper with 2 years of history (msgpack bytes)",
        lambda r: r["added_bytes"],
        lambda v: v <= 1024,
        "<= 1,024",
    ),
    (
        "memory",
        "Redis bytes per active user (largest size)",
        lambda r: r["sizes"][-1]["used_memory_delta_per_user"],
        lambda v: v <= 2048,
        "<= 2,048",
    ),
]

# The segments issue: "the core's per-event cost with 10 segments defined <= 1.3x without",
# for 10 segments defined and unwatched, and watched, against both baselines
# (bench.core's docstring); `tetik bench core` and `tetik bench segments-core` measure them.
SEGMENT_GOALS: list[tuple[str, str]] = [
    ("ratio_defined", "10 segments defined, not watched / none"),
    ("ratio_watched", "10 segments watched by 10 more journeys / none"),
    ("ratio_watched_vs_journeys", "10 segments watched / the same 20 journeys without segments"),
]


def _segment_ratio(key: str) -> Callable[[dict[str, Any]], float]:
    """The reader of one segments-cost ratio in a core or segments-core result."""
    return lambda result: float(result["segments"][key])


GOALS += [
    (
        bench,
        f"core per-event time, {name}",
        _segment_ratio(key),
        lambda v: v <= 1.3,
        "<= 1.3x",
    )
    for bench in ("core", "segments-core")
    for key, name in SEGMENT_GOALS
]

# Issue 14 (catalog): `tetik bench catalog` runs the three; each also runs alone
# (catalog-fanout, catalog-interest, catalog-product), its result at the top level.
CATALOG_PARTS = {"fanout": "catalog-fanout", "interest": "catalog-interest",
                 "product": "catalog-product"}  # fmt: skip
CATALOG_GOALS: list[tuple[str, str, Callable[[dict[str, Any]], float | None], float, str]] = [
    (
        "fanout",
        "one price drop fanned out live, one worker: s until every derived event is applied, "
        "per 100k shoppers (measured at 100k; quick: at 10k, x10)",
        lambda r: r["seconds"] * 100_000 / r["shoppers"] if r["seconds"] is not None else None,
        10.0,
        "<= 10 s",
    ),
    (
        "fanout",
        "ordinary events' p99 during that fan-out / the same stream without it",
        lambda r: r["p99_ratio"],
        2.0,
        "<= 2x",
    ),
    (
        "interest",
        "interest index: Redis bytes per (shopper, product) pair (a month of shoppers)",
        lambda r: r["bytes_per_pair"],
        120.0,
        "<= 120 B",
    ),
    (
        "product",
        "core per-event time, journeys reading product() and bought_together() / without "
        "(10 journeys)",
        lambda r: r["ratio"],
        1.10,
        "<= 1.10x",
    ),
]


def _catalog_goal(
    part: str, figure: Callable[[dict[str, Any]], float | None], nested: bool
) -> Callable[[dict[str, Any]], float | None]:
    """The reader of one catalog figure in a ``catalog`` (nested) or part result."""
    return (lambda result: figure(result[part])) if nested else figure


def _at_most(limit: float) -> Callable[[float], bool]:
    return lambda value: value <= limit


GOALS += [
    (bench, name, _catalog_goal(part, figure, bench == "catalog"), _at_most(limit), target)
    for part, name, figure, limit, target in CATALOG_GOALS
    for bench in ("catalog", CATALOG_PARTS[part])
]


def catalog_section(results: dict[str, Any]) -> list[str]:
    """The catalog's tables, from ``catalog`` or from the parts run alone."""
    parts = []
    for part, bench in CATALOG_PARTS.items():
        result = results.get("catalog", {}).get(part) or results.get(bench)
        if result is None:
            continue
        if part == "fanout":
            parts += ["### Price drop fan-out, live", fanout_table(result)]
            if "broker" in result:
                parts.append(f"Broker: {broker_line(result['broker'])}.")
        elif part == "interest":
            parts += ["### Interest index memory", interest_table(result)]
        else:
            parts += ["### product() in the core", product_table(result)]
    return ["## Catalog (issue 14)", *parts] if parts else []


def render(doc: dict[str, Any]) -> str:
    """The whole report for a result document (see :func:`bench.report.write_results`)."""
    results = doc["results"]
    parts = ["# tetik bench", _machine(doc), "## Goals", goals_table(results)]
    if doc["params"].get("quick"):
        parts.append("A quick run: reduced sizes and steps, so the verdicts are indicative.")
    if "broker" in results.get("e2e", {}):
        parts.append(f"Live figures measured on {broker_line(results['e2e']['broker'])}.")
    if "core" in results:
        parts += ["## Core (pure engine, no I/O)", core_table(results["core"])]
    if "e2e" in results:
        parts += ["## Live, end to end", e2e_tables(results["e2e"])]
    if "memory" in results:
        parts += ["## Memory", memory_table(results["memory"])]
        if "broker" in results["memory"]:
            parts.append(f"Broker: {broker_line(results['memory']['broker'])}.")
    if "scale" in results:
        parts += ["## Scale (pending enrollments, one worker)", scale_section(results["scale"])]
    if "rfm" in results:
        parts += ["## RFM over the whole base", rfm_table(results["rfm"])]
    if "segments" in results:
        parts += ["## Segments, live", segments_table(results["segments"])]
    if "segments-replay" in results:
        parts += ["## tetik segments (replay)", segments_replay_table(results["segments-replay"])]
    if "segments-core" in results:
        parts += ["## Segments (pure engine)", segments_section(results["segments-core"])]
    parts += catalog_section(results)
    if "collect" in results:
        collect = results["collect"]
        parts += ["## tetik collect (one core)", collect_table(collect)]
        parts.append(
            f"{collect['connections']} keep-alive connections; batches of "
            f"{collect['batch_size']}; {collect['events_on_topic']:,} events read back."
        )
    return "\n\n".join(parts) + "\n"


def _machine(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    return (
        f"Python {m['python']} on {m['platform']}, {m['cpus']} CPUs ({m['cpu']}); {versions}. "
        f"Parameters: `{doc['params']}`."
    )


def goals_table(results: dict[str, Any]) -> str:
    """Every goal of the benchmark issue with the figure measured, where it was run."""
    rows = []
    for bench, name, figure, check, target in GOALS:
        if bench not in results:
            continue
        value = _figure(figure, results[bench])
        verdict = "-" if value is None else ("met" if check(value) else "missed")
        shown = "-" if value is None else _fmt(value)
        rows.append([name, target, shown, verdict])
    return table(["goal", "target", "measured", ""], rows)


def _figure(figure: Callable[[dict[str, Any]], float | None], result: dict[str, Any]) -> Any:
    try:
        return figure(result)
    except (KeyError, IndexError, TypeError):
        return None


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"


def core_table(core: dict[str, Any]) -> str:
    rows = [
        [n, f"{r['events_per_s']:,.0f}", f"{r['us_per_event']:.1f}", f"{r['actions']:,}"]
        for n, r in core["core"].items()
    ]
    head = table(["journeys", "events/s (best of 3)", "µs/event", "actions"], rows)
    return (
        f"{head}\n\n{core['events']:,} generated events. 1,000 / 10 journeys per-event time: "
        f"{core['ratio_1000_vs_10']:.2f}x. Replay end to end (JSONL -> sorted actions, "
        f"100 journeys): {core['replay_events_per_s']:,.0f} events/s."
        + _segments_line(core.get("segments"))
    )


def _segments_line(segments: dict[str, float] | None) -> str:
    """The cost of 10 segments over none (older results have no such figure)."""
    if not segments:
        return ""
    line = (
        f" 10 segments / none, per-event time (10 journeys): "
        f"{segments['ratio_defined']:.2f}x defined, {segments['ratio_watched']:.2f}x each "
        "watched by a journey"
    )
    if "ratio_watched_vs_journeys" in segments:  # older results have only the above
        line += (
            f"; {segments['ratio_watched_vs_journeys']:.2f}x the same 20 journeys without "
            "segments (the ten triggered by events with the segments' conditions)"
        )
    return line + "."


def segments_section(result: dict[str, Any]) -> str:
    """``tetik bench segments`` alone."""
    return f"{result['events']:,} generated events." + _segments_line(result["segments"])


def broker_line(broker: dict[str, str]) -> str:
    """``**apache-kafka 4.4.0** at 127.0.0.1:PORT (why it was chosen)``."""
    where = f" at {broker['bootstrap']}" if broker.get("bootstrap") else ""
    return f"**{broker_label(broker)}**{where} ({broker.get('why', '-')})"


def e2e_tables(e2e: dict[str, Any]) -> str:
    parts = [f"Broker: {broker_line(e2e['broker'])}."] if "broker" in e2e else []
    parts.append(_summary(e2e))
    if e2e.get("work"):
        parts.append(f"Not the same work: {e2e['work']}.")
    for name, result in e2e["systems"].items():
        parts.append(f"**{name}**: max sustained {_max(result)} events/s")
        parts.append(step_table(result["steps"] + [{**result["half_load"], "half": True}]))
    return "\n\n".join(parts)


def _summary(e2e: dict[str, Any]) -> str:
    rows = []
    for name, result in e2e["systems"].items():
        half = result["half_load"]
        rows.append(
            [
                name,
                _max(result),
                f"{half['offered_per_s']:,.0f}",
                _ms(half["latency_ms"]["p50"]),
                _ms(half["latency_ms"]["p99"]),
                _ms(half["latency_ms"]["p99.9"]),
            ]
        )
    head = table(
        ["system", "max sustained ev/s", "half load ev/s", "p50 ms", "p99 ms", "p99.9 ms"], rows
    )
    ratios = ", ".join(
        f"{k} {v:.2f}" for k, v in e2e.get("ratios", {}).items() if isinstance(v, float)
    )
    return f"{head}\n\nRatios: {ratios or '-'}."


def _max(result: dict[str, Any]) -> str:
    """The highest sustained rate; ">=" when the plan's top rate did not saturate it."""
    bound = "" if result.get("saturated", True) else ">= "
    return f"{bound}{result['max_sustained_per_s']:,.0f}"


def step_table(steps: list[dict[str, Any]]) -> str:
    rows = []
    for s in steps:
        lat, cpu = s["latency_ms"], s["cpu_pct"]
        label = f"{s['offered_per_s']:,.0f}" + (" (half)" if s.get("half") else "")
        rows.append(
            [
                label,
                f"{s['sustained_per_s']:,.0f}",
                f"{s['lag_events']:,}",
                *(_ms(lat[p]) for p in ("p50", "p95", "p99", "p99.9")),
                f"{lat['count']:,}",
                _lateness(s["timer_lateness_ms"]),
                " / ".join(_pct(cpu.get(k)) for k in ("system", "kafka", "redis", "load")),
                "yes" if s["saturated"] else "",
            ]
        )
    header = ["offered ev/s", "sustained ev/s", "backlog at end", "p50", "p95", "p99"]
    header += ["p99.9", "samples", "timer late p50 / p99 (n)", "CPU % sys/kafka/redis/load"]
    header += ["saturated"]
    return table(header, rows)


def _lateness(late: dict[str, Any]) -> str:
    if not late.get("count"):
        return "-"
    return f"{_ms(late['p50'])} / {_ms(late['p99'])} ({late['count']:,})"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def memory_table(memory: dict[str, Any]) -> str:
    """Redis bytes per user and the engine's RSS; each over its own users (see bench.memory)."""
    rows = []
    for r in memory["sizes"]:
        rss = r.get("rss_mib")
        rows.append(
            [
                f"{r['users']:,}",
                f"{r['events_per_user']:.1f}",
                f"{r['used_memory_delta_per_user']:,.0f}",
                f"{r['memory_usage_mean']:,.0f}",
                "-" if rss is None else f"{r['rss_users']:,}",
                "-" if rss is None else f"{r['rss_idle_mib']:,.0f} -> {rss:,.0f}",
                "-" if rss is None else f"{r['rss_per_user_bytes']:,.0f}",
            ]
        )
    header = ["Redis users", "events/user", "Redis B/user", "MEMORY USAGE B/key"]
    return table([*header, "engine users", "engine RSS MiB", "RSS B/user"], rows)


def scale_section(scale: dict[str, Any]) -> str:
    """The scale figures (see bench.scale), with the broker they were measured on."""
    parts = [scale_tables(scale)]
    if "broker" in scale:
        parts.append(f"Broker: {broker_line(scale['broker'])}.")
    return "\n\n".join(parts)
