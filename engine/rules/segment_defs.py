"""Segment definitions (SPEC section 9): what a segment may say, in which order they
compile, and what each one's value can change with.

Rules of this interface:

* :func:`check_segment_tree` refuses what a segment cannot use: ``event.F`` and
  ``entry.F`` (a segment is about the user, not one event) and ``engaged()``
  (it reads an enrollment's actions; a segment has none). Each refusal is an
  :class:`~engine.errors.ExpressionError` at the offending name, with the
  window function to use instead.
* :func:`compile_order` orders segments so that each one compiles after the
  segments it names with ``in_segment`` (file order otherwise) and finds the
  cycles, each reported once, at the ``in_segment`` call that closes it (walking
  depth first from the first segment in file order), with the path
  (``a -> b -> a``).
* :func:`analyse` is a conservative dependency analysis of a segment's syntax
  tree (:class:`~engine.rules.model.Deps`): the event types whose arrival can
  change its value (``cart.*``/``in_cart`` depend on cart events,
  ``favorites``/``favorited`` on favorite events, ``profile.F`` on ``profile``,
  window functions on their TYPE, ``sum_items`` on ``purchase``), and how it
  changes with time alone: a WITHIN window when its oldest record leaves it
  (``agings``), ``since(TYPE)``
  or ``now`` compared with a number literal when it passes that number, and
  ``exists(TYPE, WITHIN)`` when its newest record leaves the window
  (``thresholds``, ``moments``), ``count(TYPE, WITHIN) OP number`` when the
  K-th newest record leaves the window, K found from OP and the number
  (``ranks``: ``>= 3`` and ``< 3`` flip with the 3rd newest, ``> 3`` and
  ``<= 3`` with the 4th), anything else that reads the clock
  (``since`` in other positions, ``now``, ``between``, ``since_first``) at any
  moment (``continuous``); and which way the whole value can move with time
  (``drift``, :mod:`engine.rules.segment_drift`). A function this module does
  not know (added by a later part of the language, such as ``rfm()``) counts
  as depending on every event type and on time, continuously: never too
  little.
* A record leaving a window for age (``count(view_product)`` without WITHIN,
  after 30 days) is not a change with time here: the window's retention is
  seen at the user's next event. SPEC section 9 names ``since``, WITHIN
  windows and ``now`` as the conditions that change with time alone.
* :func:`fingerprint` changes when a segment's text, the rules' time zone or a
  segment it uses changes: the engine re-baselines a membership whose
  fingerprint changed instead of calling it an entry or an exit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Final

from engine.errors import ExpressionError
from engine.rules.functions import event_type
from engine.rules.model import Deps
from engine.rules.nodes import Binary, Call, Literal, Name, Node, Unary, children
from engine.rules.segment_drift import drift
from engine.rules.segment_refs import FUNCTION as IN_SEGMENT
from engine.rules.segment_refs import referenced

CART_TYPES: Final = frozenset({"add_to_cart", "remove_from_cart", "purchase"})
FAVORITE_TYPES: Final = frozenset({"add_favorite", "remove_favorite"})
PROFILE_TYPES: Final = frozenset({"profile"})
_RANGED: Final = frozenset({"count", "exists", "sum"})
_TYPED: Final = frozenset({"last", "first"})  # TYPE then nothing that reads the clock
_CLOCKED: Final = frozenset({"since", "since_first"})
_PLAIN: Final = frozenset({"date"})  # constants: depend on nothing
_SHRINKING: Final = frozenset({"count", "exists"})  # over WITHIN: fewer records with time
_STATE_TYPES: Final = {"cart": CART_TYPES, "favorites": FAVORITE_TYPES, "profile": PROFILE_TYPES}
_COMPARISONS: Final = frozenset({"<", "<=", ">", ">=", "==", "!="})
EVERYTHING: Final = Deps(every_type=True, continuous=True)
# count(...) OP N is true while the (N + shift)-th newest record is in the window, or
# false while it is (for < and <=): either way it flips when that record leaves.
_RANK_SHIFT: Final = {">=": 0, ">": 1, "<": 0, "<=": 1}
_MIRRORED: Final = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}


def check_segment_tree(root: Node) -> None:
    """Raise ExpressionError at the first name a segment may not use (module rules)."""
    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, Name) and node.parts[0] in ("event", "entry"):
            raise ExpressionError(_no_event(node), node.offset)
        if isinstance(node, Call) and node.name == "engaged":
            raise ExpressionError(
                "engaged() is about one enrollment's actions and a segment has none; "
                "count the engagement events instead, e.g. "
                "exists(engagement, 30d, it.channel == 'email' and it.kind == 'clicked')",
                node.offset,
            )
        stack.extend(reversed(children(node)))


def _no_event(node: Name) -> str:
    root = node.parts[0]
    field = node.parts[1] if len(node.parts) > 1 else "product_id"
    return (
        f"'{root}' is not available in a segment: a segment is about the user, not one event; "
        f"read the stored events instead, e.g. last(view_product, {field}) or "
        f"exists(view_product, 24h, it.{field} == ...)"
    )


def compile_order(
    refs: Mapping[str, Sequence[tuple[str, Call]]],
) -> tuple[list[str], list[tuple[str, Call, list[str]]]]:
    """(names in compile order, cycles as (segment, its call, path)); see the module rules.

    ``refs`` maps each segment, in file order, to the segments it names; names
    that are not segments are left to the compiler (it reports them).
    """
    order: list[str] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[tuple[str, Call, list[str]]] = []
    reported: set[frozenset[str]] = set()

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for ref, call in refs[name]:
            if ref not in refs:
                continue
            if state.get(ref) == 1:
                loop = [*path[path.index(ref) :], ref]
                key = frozenset(loop)
                if key not in reported:
                    reported.add(key)
                    cycles.append((name, call, loop))
            elif ref not in state:
                visit(ref, [*path, ref])
        state[name] = 2
        order.append(name)

    for name in refs:
        if name not in state:
            visit(name, [name])
    return order, cycles


def in_cycle(cycles: Iterable[tuple[str, Call, list[str]]]) -> set[str]:
    """Every segment on a cycle (they are not compiled)."""
    return {name for _, _, loop in cycles for name in loop}


def analyse(root: Node, known: Mapping[str, Deps]) -> Deps:
    """What ``root``'s value can change with; ``known`` holds the segments it names."""
    parts = _Collect(known)
    parts.visit(root)
    return replace(parts.deps(), drift=drift(root, {n: d.drift for n, d in known.items()}))


class _Collect:
    """Walks a tree once, gathering the parts of its :class:`Deps`."""

    def __init__(self, known: Mapping[str, Deps]) -> None:
        self.known = known
        self.types: set[str] = set()
        self.every_type = False
        self.continuous = False
        self.agings: set[tuple[str, int]] = set()
        self.thresholds: set[tuple[str, int]] = set()
        self.moments: set[int] = set()
        self.ranks: set[tuple[str, int, int]] = set()
        # Types read otherwise than by count/exists over WITHIN (see Deps.delays).
        self.otherwise: set[str] = set()

    def deps(self) -> Deps:
        return Deps(
            types=frozenset(self.types),
            every_type=self.every_type,
            continuous=self.continuous,
            agings=frozenset(self.agings),
            thresholds=frozenset(self.thresholds),
            moments=frozenset(self.moments),
            ranks=frozenset(self.ranks),
            delays=frozenset() if self.every_type else frozenset(self.types - self.otherwise),
        )

    def merge(self, deps: Deps) -> None:
        self.types |= deps.types
        self.every_type |= deps.every_type
        self.continuous |= deps.continuous
        self.agings |= deps.agings
        self.thresholds |= deps.thresholds
        self.moments |= deps.moments
        self.ranks |= deps.ranks
        self.otherwise |= deps.types - deps.delays

    def visit(self, node: Node) -> None:
        if self._comparison(node):
            return
        if isinstance(node, Name):
            self._name(node)
        elif isinstance(node, Call):
            self._call(node)
            return
        for child in children(node):
            self.visit(child)

    def _name(self, node: Name) -> None:
        root = node.parts[0]
        if root == "now":
            self.continuous = True
        elif root in _STATE_TYPES:
            self.types |= _STATE_TYPES[root]
            self.otherwise |= _STATE_TYPES[root]

    def _comparison(self, node: Node) -> bool:
        """A comparison whose moments of change are known (then its parts are done)."""
        if not (isinstance(node, Binary) and node.op in _COMPARISONS):
            return False
        return self._threshold(node) or self._rank(node)

    def _threshold(self, node: Binary) -> bool:
        """``since(T) OP number`` or ``now OP number``: a known moment of change."""
        for side, other in ((node.left, node.right), (node.right, node.left)):
            limit = _number(other)
            if limit is None:
                continue
            if isinstance(side, Call) and side.name == "since" and len(side.args) == 1:
                type_ = event_type(side.args[0], "since")
                self.types.add(type_)
                self.otherwise.add(type_)  # null before the first record: not monotone
                self.thresholds.add((type_, limit))
                return True
            if isinstance(side, Name) and side.parts == ("now",):
                self.moments.add(limit)
                return True
        return False

    def _rank(self, node: Binary) -> bool:
        """``count(T, WITHIN) OP number``: it changes when the K-th newest record of T
        leaves the window (``count >= K``), or never when K <= 0."""
        sides = ((node.left, node.right, node.op), (node.right, node.left, _MIRRORED[node.op]))
        for call, limit, op in sides:
            if not (isinstance(call, Call) and call.name == "count" and len(call.args) == 2):
                continue
            number, within = _number(limit), _duration(call.args[1])
            if number is None or within is None or op not in _RANK_SHIFT:
                return False
            type_ = event_type(call.args[0], "count")
            self.types.add(type_)
            rank = number + _RANK_SHIFT[op]
            if rank > 0:
                self.ranks.add((type_, within, rank))
            return True
        return False

    def _call(self, node: Call) -> None:
        name = node.name
        if name == IN_SEGMENT:
            for ref, _ in referenced(node):
                self.merge(self.known.get(ref, EVERYTHING))
            return
        if name in _PLAIN:
            return
        if name == "sum_items":
            self._items(node)
            return
        if name in ("in_cart", "favorited"):
            read = CART_TYPES if name == "in_cart" else FAVORITE_TYPES
            self.types |= read
            self.otherwise |= read
        elif name in _RANGED or name in _TYPED or name in _CLOCKED:
            self._window(node)
            return
        elif name == "between":
            self.continuous = True
        else:  # a function this analysis does not know: assume the most
            self.merge(EVERYTHING)
        for arg in node.args:
            self.visit(arg)

    def _window(self, node: Call) -> None:
        if not node.args:
            return
        type_ = event_type(node.args[0], node.name)
        self.types.add(type_)
        if node.name not in _SHRINKING or not any(_duration(a) is not None for a in node.args):
            self.otherwise.add(type_)
        if node.name in _CLOCKED:
            self.continuous = True
        for arg in node.args[1:]:
            within = _duration(arg)
            if within is not None and node.name == "exists" and len(node.args) == 2:
                # exists(T, W) changes only when the newest record leaves the window.
                self.thresholds.add((type_, within))
            elif within is not None and node.name in _RANGED:
                self.agings.add((type_, within))
            elif isinstance(arg, Name) and node.name in ("sum", "last", "first"):
                continue  # a FIELD argument
            else:
                self.visit(arg)

    def _items(self, node: Call) -> None:
        """``sum_items(FIELD [, WITHIN or between] [, WHERE])``: a window of purchases
        (read as a sum, not a count: never skipped after a purchase, see Deps.delays)."""
        self.types.add("purchase")
        self.otherwise.add("purchase")
        for arg in node.args[1:]:
            within = _duration(arg)
            if within is not None:
                self.agings.add(("purchase", within))
            else:
                self.visit(arg)


def _number(node: Node) -> int | None:
    """An integer literal (a duration or a whole number), perhaps negated."""
    if isinstance(node, Unary) and node.op == "-":
        inner = _number(node.operand)
        return None if inner is None else -inner
    if isinstance(node, Literal) and type(node.value) is int:
        return node.value
    return None


def _duration(node: Node) -> int | None:
    if isinstance(node, Literal) and node.duration and type(node.value) is int:
        return node.value
    return None


def fingerprint(text: str, uses: Iterable[str], timezone: str) -> str:
    """A short hash of a segment's definition (module rules); ``uses`` are the
    fingerprints of the segments it names."""
    digest = hashlib.sha256()
    for part in (text, timezone, *sorted(uses)):
        digest.update(part.encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    return digest.hexdigest()[:16]
