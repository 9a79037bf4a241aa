"""Checks of the experiment parts of a rules file (SPEC section 11), for the loader.

Rules of this interface:

* Each check takes YAML nodes and returns the value, or raises
  :class:`NodeProblem` naming the node to point at and a one-line message with
  what to write instead; :mod:`engine.rules.loader` turns it into a
  ``FILE:LINE:COL`` problem.
* ``holdout: 10%``: a percentage from 0 to 99.99 with at most two decimals,
  as basis points (``10%`` -> 1000).
* ``split: {a: 50, b: 50}``: two to :data:`MAX_ARMS` arms; arm names match
  ``[a-z0-9_-]+`` and are not ``holdout`` (the held-out entrants' variant) nor
  a step keyword; weights are whole percentages from 1 to 99 adding up to 100.
"""

from __future__ import annotations

import re
from typing import Final

from yaml.nodes import MappingNode, Node, ScalarNode

MAX_ARMS: Final = 26
GOAL_KEYS: Final = ("event", "within", "if")
RESERVED: Final = frozenset(
    {"holdout", "split", "wait", "send", "if", "then", "else", "template", "fallback", "exit"}
)
ARM_RULE: Final = "[a-z0-9_-]+"
_ARM = re.compile(r"^[a-z0-9_-]+\Z")
_PERCENT = re.compile(r"^(\d{1,2})(?:\.(\d{1,2}))?\s*%\Z")
_WEIGHT = re.compile(r"^\d{1,3}\Z")


class NodeProblem(Exception):
    """A problem at one YAML node."""

    def __init__(self, node: Node, message: str) -> None:
        super().__init__(message)
        self.node = node
        self.message = message


def _scalar(node: Node, what: str) -> str:
    if not isinstance(node, ScalarNode) or node.value == "":
        raise NodeProblem(node, f"{what} must be a single value")
    return str(node.value)


def holdout_share(node: Node) -> int:
    """``holdout: 10%`` as basis points."""
    text = _scalar(node, "holdout").strip()
    match = _PERCENT.match(text)
    if match is None:
        raise NodeProblem(
            node, f"holdout {text!r} must be a percentage below 100 such as 10% or 2.5%"
        )
    whole, decimals = match.group(1), (match.group(2) or "").ljust(2, "0")
    return int(whole) * 100 + int(decimals)


def arm_name(key: Node, name: str) -> str:
    """A split arm's name (it becomes the actions' ``variant``)."""
    if not _ARM.match(name):
        raise NodeProblem(key, f"split arm {name!r} must match {ARM_RULE} (it is the variant)")
    if name in RESERVED:
        raise NodeProblem(
            key, f"split arm {name!r} is a reserved word; name arms such as a, b or control"
        )
    return name


def split_weights(node: Node, weights: list[tuple[str, Node, Node]]) -> None:
    """Check the weights of ``split: {a: 50, b: 50}``: whole percentages adding to 100."""
    if not isinstance(node, MappingNode) or len(weights) < 2:
        raise NodeProblem(node, "a split needs two or more arms with weights, e.g. {a: 50, b: 50}")
    if len(weights) > MAX_ARMS:
        raise NodeProblem(weights[MAX_ARMS][1], f"a split has at most {MAX_ARMS} arms")
    total = 0
    for name, _, value in weights:
        text = _scalar(value, f"split arm {name!r}'s weight")
        if not _WEIGHT.match(text) or not 1 <= int(text) <= 99:
            hint = " (drop the %)" if text.endswith("%") else ""
            raise NodeProblem(
                value, f"split arm {name!r}'s weight {text!r} must be a whole number 1-99{hint}"
            )
        total += int(text)
    if total != 100:
        raise NodeProblem(node, f"split weights add up to {total}; make them add up to 100")


def weight(node: Node) -> int:
    """A weight :func:`split_weights` accepted (0 where it did not)."""
    text = str(node.value) if isinstance(node, ScalarNode) else ""
    return int(text) if _WEIGHT.match(text) else 0
