"""The chaos run's final table (plain text) and its JSON file.

Rules of this interface: :func:`table` renders one row per scenario and, under
it, one line per scenario that did not pass saying why; :func:`write_json`
writes the run's parameters and every :class:`chaos.scenarios.Result` field.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from chaos.scenarios import Result

__all__ = ["table", "write_json"]

COLUMNS = (
    ("scenario", 14),
    ("verdict", 7),
    ("events", 7),
    ("expected", 8),
    ("emitted", 8),
    ("dup", 4),
    ("missing", 7),
    ("unexp", 5),
    ("diff", 4),
    ("excused", 7),
    ("dead-lettered", 13),
    ("exits", 5),
    ("faults", 6),
    ("recover s (worst, median)", 26),
    ("ratio", 5),
    ("time s", 6),
)


def _recover(result: Result) -> str:
    """``first/caught-up`` seconds after the slowest fault, ``never`` if one never recovered."""
    if not result.faults:
        return "-"
    first = "-" if result.recover_first_s is None else f"{result.recover_first_s:.1f}"
    caught = "-" if result.recover_caught_up_s is None else f"{result.recover_caught_up_s:.1f}"
    if result.unrecovered == result.faults:
        return "never"
    median = result.recover_median_s
    return f"{first}/{caught}" + ("" if median is None else f" (median {median:.1f})")


def _cells(result: Result) -> list[str]:
    if result.verdict == "skipped":
        return [result.scenario, result.verdict] + ["-"] * (len(COLUMNS) - 2)
    letters = f"{result.dead_lettered}/{result.poison_sent}" if result.poison_sent else "-"
    ratio = "-" if result.throughput_ratio is None else f"{result.throughput_ratio:.2f}"
    numbers = (
        result.events, result.expected, result.emitted, result.duplicate,
        result.missing, result.unexpected, result.different, result.excused,
    )  # fmt: skip
    return [
        result.scenario,
        result.verdict,
        *(f"{n:,}" for n in numbers),
        letters,
        str(result.engine_exits),
        str(result.faults),
        _recover(result),
        ratio,
        f"{result.seconds:.0f}",
    ]


def table(results: Sequence[Result]) -> str:
    """The final table, then why each failed or skipped scenario did."""
    rows = [[name for name, _ in COLUMNS], *(_cells(r) for r in results)]
    widths = [max(width, *(len(row[i]) for row in rows)) for i, (_, width) in enumerate(COLUMNS)]
    lines = ["  ".join(cell.rjust(w) if i > 1 else cell.ljust(w) for i, (cell, w) in
                       enumerate(zip(row, widths, strict=True))) for row in rows]  # fmt: skip
    lines.insert(1, "  ".join("-" * w for w in widths))
    for result in results:
        if result.why:
            lines.append(f"{result.scenario}: {result.verdict}: {result.why}")
        for line in result.exit_lines[:2]:
            lines.append(f"{result.scenario}: engine exit: {line}")
    return "\n".join(lines)


def write_json(path: Path, results: Sequence[Result], params: dict[str, Any]) -> None:
    """The run's parameters and results, for CI artefacts and the closing notes."""
    doc = {"params": params, "results": list(results)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(msgspec.json.format(msgspec.json.encode(doc), indent=2) + b"\n")
