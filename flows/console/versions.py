"""The rules versions page's data: the versions, a diff, and a rejected push's lines.

Rules of this interface:

* :func:`listing` is every version, newest first, with who pushed it, when, its
  activations and whether it is active; :func:`diff` is a unified diff
  (:mod:`difflib`) of one version against the one before it (or any other),
  as (kind, text) lines: ``add``, ``del``, ``hunk``, ``same``.
* :func:`annotate` places a :class:`~engine.errors.RulesError`'s
  ``FILE:LINE:COL: message`` problems next to the lines of the pushed text
  they name; problems without a line of that text (another file, line 0)
  are returned apart, so none is lost.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from flows.stores.rules import RulesStore, RulesVersion

PROBLEM = re.compile(r"^(?P<file>.*?):(?P<line>\d+):(?P<col>\d+): (?P<message>.*)$", re.S)


@dataclass(frozen=True)
class Row:
    """One version in the listing."""

    version: RulesVersion
    active: bool
    activations: list[str]  # "push by alice at ...", "rollback by bob at ..."


@dataclass
class Line:
    """One line of a rejected text, with the problems placed on it."""

    number: int
    text: str
    problems: list[tuple[int, str]] = field(default_factory=list)  # (column, message)


def listing(store: RulesStore, when: Callable[[int], str]) -> list[Row]:
    """Every version, newest first (``when`` formats epoch ms)."""
    active = store.active_version()
    by_version: dict[int, list[str]] = {}
    for entry in store.history():
        text = f"{entry.action} by {entry.who} at {when(entry.at)}"
        by_version.setdefault(entry.version, []).append(text)
    return [
        Row(version, version.version == active, by_version.get(version.version, []))
        for version in reversed(store.versions())
    ]


def diff(store: RulesStore, version: int, against: int | None = None) -> list[tuple[str, str]]:
    """``version`` against ``against`` (default: the version before it; none: all added)."""
    new = store.get(version)
    if new is None:
        return []
    old = store.get(against if against is not None else version - 1)
    before = old.text.splitlines() if old is not None else []
    name = f"version {old.version}" if old is not None else "nothing"
    lines = difflib.unified_diff(
        before, new.text.splitlines(), name, f"version {version}", lineterm="", n=3
    )
    return [(_kind(line), line) for line in lines]


def _kind(line: str) -> str:
    if line.startswith(("+++", "---")):
        return "hunk"
    return {"+": "add", "-": "del", "@": "hunk"}.get(line[:1], "same")


def annotate(text: str, problems: list[str]) -> tuple[list[Line], list[str]]:
    """The text's lines with their problems, and the problems no line of it takes."""
    lines = [Line(n, t) for n, t in enumerate(text.splitlines(), start=1)]
    loose = []
    for problem in problems:
        found = PROBLEM.match(problem)
        number = int(found["line"]) if found else 0
        if found and 1 <= number <= len(lines):
            lines[number - 1].problems.append((int(found["col"]), problem))
        else:
            loose.append(problem)
    return lines, loose
