"""The Markdown report of a ``tetik bench`` run: goals first, then every table."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.catalog_fanout import fanout_table
from bench.catalog_interest import interest_table
from bench.catalog_product import product_table
from bench.collect import collect_table
from bench.goals import CATALOG_PARTS, INDICATIVE_WHY, goal_rows
from bench.rfm import rfm_table
from bench.scale import scale_tables
from bench.segments_live import segments_table
from bench.segments_replay import segments_replay_table
from bench.tables import broker_label, table


def catalog_section(results: dict[str, Any]) -> str:
    """The catalog's tables, from ``catalog`` or from the parts run alone ("" if none ran)."""
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
    return "\n\n".join(parts)


def render(doc: dict[str, Any]) -> str:
    """The whole report for a result document (see :func:`bench.report.write_results`)."""
    results = doc["results"]
    quick = bool(doc["params"].get("quick"))
    parts = ["# tetik bench", _machine(doc), "## Goals", goals_table(results, quick=quick)]
    if quick:
        parts.append(f"Verdicts are indicative: {INDICATIVE_WHY}.")
    if "broker" in results.get("e2e", {}):
        parts.append(f"Live figures measured on {broker_line(results['e2e']['broker'])}.")
    for _, heading, body in sections(results):
        parts += [f"## {heading}", body]
    return "\n\n".join(parts) + "\n"


def sections(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The report's sections after its goals: (bench, heading, Markdown), in order; a
    bench without a section of its own gets a table of its figures."""
    found: list[tuple[str, str, str]] = []
    for bench, heading, body in SECTIONS:
        if bench in results:
            found.append((bench, heading, body(results[bench])))
    catalog = catalog_section(results)
    if catalog:
        found.append(("catalog", "Catalog (issue 14)", catalog))
    if "collect" in results:
        found.append(("collect", "tetik collect (one core)", collect_section(results["collect"])))
    covered = {bench for bench, _, _ in SECTIONS} | {"catalog", "collect", *CATALOG_PARTS.values()}
    for bench, result in results.items():
        if bench not in covered and isinstance(result, dict):
            found.append((bench, f"tetik bench {bench}", figures_table(result)))
    return found


def figures_table(result: dict[str, Any]) -> str:
    """A result's numbers as (figure, value) rows, nested ones named ``outer.inner``."""
    rows = [[name, figure_text(value)] for name, value in _numbers(result, "")]
    return table(["figure", "value"], rows)


def _numbers(result: dict[str, Any], prefix: str) -> list[tuple[str, float]]:
    found: list[tuple[str, float]] = []
    for key, value in result.items():
        if isinstance(value, dict):
            found += _numbers(value, f"{prefix}{key}.")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            found.append((f"{prefix}{key}", value))
    return found


def _with_broker(body: Callable[[dict[str, Any]], str]) -> Callable[[dict[str, Any]], str]:
    """``body`` followed by the line naming the broker the result was measured on."""

    def section(result: dict[str, Any]) -> str:
        text = body(result)
        if "broker" in result:
            text += f"\n\nBroker: {broker_line(result['broker'])}."
        return text

    return section


def collect_section(collect: dict[str, Any]) -> str:
    """``tetik bench collect``: its table and how it was loaded."""
    return (
        f"{collect_table(collect)}\n\n{collect['connections']} keep-alive connections; batches "
        f"of {collect['batch_size']}; {collect['events_on_topic']:,} events read back."
    )


def _machine(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    return (
        f"Python {m['python']} on {m['platform']}, {m['cpus']} CPUs ({m['cpu']}); {versions}. "
        f"Parameters: `{doc['params']}`."
    )


def goals_table(results: dict[str, Any], *, quick: bool = False) -> str:
    """Every goal of the benchmark issue with the figure measured, where it was run."""
    rows = [
        [row.goal, row.target, _measured(row.measured), row.verdict]
        for row in goal_rows(results, quick=quick)
    ]
    return table(["goal", "target", "measured", ""], rows)


def _measured(value: float | None) -> str:
    return "-" if value is None else figure_text(value)


def figure_text(value: float) -> str:
    """A goal's figure: an integer with thousands separators, a float to 2 decimals below
    100 (a ratio), else rounded."""
    if isinstance(value, int):
        return f"{value:,}"
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


# Every bench's section but the catalog's and collect's, in the report's order.
SECTIONS: list[tuple[str, str, Callable[[dict[str, Any]], str]]] = [
    ("core", "Core (pure engine, no I/O)", core_table),
    ("e2e", "Live, end to end", e2e_tables),
    ("memory", "Memory", _with_broker(memory_table)),
    ("scale", "Scale (pending enrollments, one worker)", scale_section),
    ("rfm", "RFM over the whole base", rfm_table),
    ("segments", "Segments, live", segments_table),
    ("segments-replay", "tetik segments (replay)", segments_replay_table),
    ("segments-core", "Segments (pure engine)", segments_section),
]
