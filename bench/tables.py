"""Markdown tables and broker names, shared by every benchmark's section of ``bench.md``.

Rules: a benchmark module formats its own section with :func:`table` and imports
nothing else of the report; :mod:`bench.report` writes the files and
:mod:`bench.markdown` assembles the sections, so the arrows run one way.
"""

from __future__ import annotations


def broker_label(broker: dict[str, str]) -> str:
    """``apache-kafka 4.4.0``, ``tansu 0.6.0``, ``external``: a broker's name and version."""
    return f"{broker['name']} {broker.get('version', '')}".strip()


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
