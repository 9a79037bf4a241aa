"""Result files and tables shared by the benchmarks."""

from __future__ import annotations

import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson

RESULTS = Path("bench/results")


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    versions = {}
    for name in ("tetik", "bytewax", "confluent-kafka", "redis", "msgspec"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "-"
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": _cpus(),
        "versions": versions,
    }


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


def save_result(name: str, result: dict[str, Any]) -> Path:
    """Write ``bench/results/<name>-<time>.json`` with the machine description."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    doc = {"bench": name, "at": time.time(), "machine": machine(), "result": result}
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    print(f"result written to {path}")
    return path


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
